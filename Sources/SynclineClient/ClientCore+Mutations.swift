import SynclineProtocol

extension ClientCore {
    struct Mutation: Sendable {
        enum State: Sendable, Equatable {
            case queued
            case sent
            /// Sent, and an error for an earlier `mid` says this one's answer will be an error too.
            case erroring
            /// Committed; kept (with its overlay) until the changes that carry its effect are published.
            case acked(result: JSONValue, cursor: String)
        }

        var local: Int
        var stored: StoredMutation
        var earlier: Bool
        var state: State
        /// Sent at least once (or by an earlier process): its effect may already be in the feeds.
        var mayHaveCommitted: Bool

        var mid: Int64 { stored.mid }
        var isAcked: Bool {
            if case .acked = state { return true }
            return false
        }
    }

    /// Registers the optimistic effect of mutator `name`.
    mutating func register(_ name: String, effect: @escaping MutatorEffect) -> [Action] {
        out = []
        mutators[name] = effect
        refreshViews()
        return finish()
    }

    /// Queues a mutation. The `persist` action comes first: the shell stores it before the `send`.
    mutating func enqueue(name: String, args: JSONValue, now: Duration) -> (local: Int, mid: Int64, actions: [Action]) {
        self.now = now
        out = []
        locals += 1
        let mid = nextMID
        nextMID += 1
        let stored = StoredMutation(mid: mid, name: name, args: args)
        mutations.append(Mutation(local: locals, stored: stored, earlier: false, state: .queued, mayHaveCommitted: false))
        var batch = StoreBatch()
        batch.insertMutations = [stored]
        batch.nextMID = nextMID
        out.append(.persist(batch))
        refreshViews()
        sendQueuedMutations()
        return (locals, mid, finish())
    }

    /// Sends every queued mutation in `mid` order, unless a retry is pending or no session is open.
    mutating func sendQueuedMutations() {
        guard case .ready(let id) = link, !mutationHold else { return }
        for i in mutations.indices where mutations[i].state == .queued {
            let m = mutations[i].stored
            mutations[i].state = .sent
            mutations[i].mayHaveCommitted = true
            let text = JSONValue.object([("type", "mutate"), ("mid", .number(String(m.mid))), ("name", .string(m.name)), ("args", m.args)]).jsonText
            out.append(.send(id, text, mid: m.mid))
        }
    }

    /// Applies the client rules for `welcome.last_mid`; false when the client must stop.
    mutating func reconcileMIDs(lastMID: Int64) -> Bool {
        let highestAssigned = nextMID - 1
        if lastMID > highestAssigned {
            stop(.clientIDInUse(lastMID: lastMID, highestAssigned: highestAssigned))
            return false
        }
        var batch = StoreBatch()
        if let first = mutations.first, first.mid > lastMID + 1 {
            // The server forgot mids we had sent (its database was restored): the undecided ones
            // were never applied there, so they take the numbers it expects next.
            for i in mutations.indices {
                batch.deleteMutations.append(mutations[i].mid)
                mutations[i].stored.mid = lastMID + 1 + Int64(i)
                batch.insertMutations.append(mutations[i].stored)
            }
            nextMID = lastMID + 1 + Int64(mutations.count)
            batch.nextMID = nextMID
        } else if mutations.isEmpty, highestAssigned > lastMID {
            nextMID = lastMID + 1
            batch.nextMID = nextMID
        }
        if !batch.isEmpty {
            out.append(.persist(batch))
            refreshViews()
        }
        return true
    }

    mutating func mutationAcked(_ message: JSONValue) {
        guard let mid = message["mid"]?.int64, let i = mutations.firstIndex(where: { $0.mid == mid }) else { return }
        mutations[i].state = .acked(result: message["result"] ?? .null, cursor: message["cursor"]?.stringValue ?? "")
        retryAttempt = 0
        flush()
        maybeScheduleRetry()
    }

    mutating func mutationRejected(_ message: JSONValue) {
        guard let mid = message["mid"]?.int64 else { return }
        let rejection = MutationRejected(
            code: message["code"]?.stringValue ?? "rejected", message: message["message"]?.stringValue ?? "",
            details: message["details"])
        decide(mid: mid, .rejected(rejection))
    }

    /// A decision that leaves no effect to wait for (reject, expired, refused): the mutation and
    /// its overlay go at once.
    mutating func decide(mid: Int64, _ decision: MutationDecision) {
        guard let i = mutations.firstIndex(where: { $0.mid == mid }) else { return }
        let m = mutations.remove(at: i)
        var batch = StoreBatch()
        batch.deleteMutations = [mid]
        flush(batch: batch, decided: [(m, decision)])
        maybeScheduleRetry()
    }

    /// Once every mutation in flight behind an errored one has its answer, resend after the delay.
    mutating func maybeScheduleRetry() {
        guard mutationHold, !retryScheduled, !mutations.contains(where: { $0.state == .erroring }) else { return }
        retryScheduled = true
        schedule(.mutationRetry, after: retryDelay ?? .zero)
    }

    /// An `error` answering a `mutate`.
    mutating func mutationError(mid: Int64, code: String, message: String, retryAfterMS: Int64?) {
        guard let i = mutations.firstIndex(where: { $0.mid == mid }) else { return }
        switch code {
        case "outcome_expired":
            decide(mid: mid, .expired(MutationOutcomeExpired(mid: mid, message: message)))
            return
        case "conflict", "bad_request", "forbidden", "not_found", "invalid":
            // The server will never apply this mid as sent: a client bug or a refused request.
            decide(mid: mid, .rejected(MutationRejected(code: code, message: message)))
            return
        default:
            break
        }
        let firstUndecided = mutations.firstIndex { !$0.isAcked }
        if code == "out_of_order", firstUndecided == i, case .ready(let id) = link {
            // The server expects another mid than our first undecided one: learn its last_mid anew.
            out.append(.close(id, code: 1000))
            disconnected()
            scheduleReconnect(immediately: true)
            return
        }
        // unavailable, rate_limited, out_of_order, internal and unknown codes: not decided. Every
        // later mid in flight gets an error too; once those are in, resend from this one in order.
        mutations[i].state = .queued
        for j in mutations.indices where mutations[j].mid > mid && mutations[j].state == .sent {
            mutations[j].state = .erroring
        }
        if let retryAfterMS {
            retryDelay = max(retryDelay ?? .zero, .milliseconds(retryAfterMS))
        } else if retryDelay == nil {
            retryDelay = configuration.backoff.delay(attempt: retryAttempt, random: &random)
            retryAttempt += 1
        }
        mutationHold = true
        maybeScheduleRetry()
    }

    /// Whether an undecided mutation may have committed: then the feeds' changes may already carry
    /// its effect, and publishing them beside its overlay would count it twice.
    var holdsChanges: Bool {
        mutations.contains { $0.mayHaveCommitted && !$0.isAcked }
    }
}
