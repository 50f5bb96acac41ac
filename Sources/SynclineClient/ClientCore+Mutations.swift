import SynclineProtocol

extension ClientCore {
    struct Mutation: Sendable {
        enum State: Sendable, Equatable {
            case queued
            case sent
            /// Sent, and an error for an earlier `mid` says this one's answer will be an error too.
            case erroring
            /// Answered (`ack`, or `outcome_expired`): kept, with its overlay, until the changes that
            /// may carry its effect are published.
            case answered
        }

        var local: Int
        var stored: StoredMutation
        var earlier: Bool
        var state: State
        /// Sent at least once (or by an earlier process): its effect may already be in the feeds.
        var mayHaveCommitted: Bool
        /// The first answer, reported at once; a resend after a reconnect only waits for it again.
        var decision: MutationDecision?

        var mid: Int64 { stored.mid }
        var isAnswered: Bool { state == .answered }
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

    /// Sends queued mutations in `mid` order (at most `maxInFlight` unanswered), unless a retry is
    /// pending or no session is open.
    mutating func sendQueuedMutations() {
        guard case .ready(let id) = link, !mutationHold else { return }
        var inFlight = mutations.count(where: { $0.state == .sent || $0.state == .erroring })
        for i in mutations.indices where mutations[i].state == .queued {
            guard inFlight < configuration.maxInFlight else { break }
            inFlight += 1
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
            // Answered ones cannot be sent under new numbers (they would apply twice).
            for m in mutations where m.decision != nil { batch.deleteMutations.append(m.mid) }
            mutations.removeAll { $0.decision != nil }
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
        guard mutations[i].state == .sent || mutations[i].state == .erroring else { return }
        answered(i, .acked(result: message["result"] ?? .null, cursor: message["cursor"]?.stringValue ?? ""))
        retryAttempt = 0
        flush()
        maybeScheduleRetry()
        sendQueuedMutations()
    }

    /// Records the first answer and reports it at once; the mutation stays (overlay included)
    /// until the held changes are published (writing-a-client §4).
    mutating func answered(_ i: Int, _ decision: MutationDecision) {
        mutations[i].state = .answered
        if mutations[i].decision == nil {
            mutations[i].decision = decision
            out.append(.decided(local: mutations[i].local, mutations[i].stored, decision, earlier: mutations[i].earlier))
        }
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
    mutating func decide(mid: Int64, _ decision: MutationDecision, renumberLater: Bool = false) {
        guard let i = mutations.firstIndex(where: { $0.mid == mid }),
              mutations[i].state == .sent || mutations[i].state == .erroring
        else { return }
        let m = mutations.remove(at: i)
        var batch = StoreBatch()
        batch.deleteMutations = [mid]
        if renumberLater {
            // Nothing was consumed: the later undecided mids move down into its place.
            for j in mutations.indices where mutations[j].mid > mid {
                batch.deleteMutations.append(mutations[j].mid)
                mutations[j].stored.mid -= 1
                batch.insertMutations.append(mutations[j].stored)
            }
            nextMID -= 1
            batch.nextMID = nextMID
        }
        flush(batch: batch, decided: m.decision == nil ? [(m, decision)] : [])
        maybeScheduleRetry()
        sendQueuedMutations()
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
            // Decided long ago: its effect may be in the held changes, so it goes like an ack.
            guard mutations[i].state == .sent || mutations[i].state == .erroring else { return }
            answered(i, .expired(MutationOutcomeExpired(mid: mid, message: message)))
            flush()
            maybeScheduleRetry()
            return
        case "bad_request":
            decide(mid: mid, .rejected(MutationRejected(code: code, message: message)), renumberLater: true)
            return
        case "conflict", "forbidden", "not_found", "invalid":
            // The server will never apply this mid as sent: a client bug or a refused request.
            decide(mid: mid, .rejected(MutationRejected(code: code, message: message)))
            return
        default:
            break
        }
        guard mutations[i].state == .sent || mutations[i].state == .erroring else { return }  // the rest of a cascade
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
        mutations.contains { $0.mayHaveCommitted && !$0.isAnswered }
    }
}
