import SynclineProtocol

/// How a mutation was decided, or why it was not.
public enum MutationOutcome: Sendable, Equatable {
    /// Committed; its effects are visible at `position`. `result` is JSON text.
    case ack(position: Int64, result: String, duplicate: Bool)
    /// Decided and rolled back (the `mid` is consumed). `details` is JSON text.
    case reject(code: String, message: String, details: String?, duplicate: Bool)
    /// Not decided: the client sends the same `mid` again.
    case error(ErrorCode, message: String, retryAfterMS: Int?)

    /// The message for the client, for mutation `mid`.
    public func message(mid: Int64, epoch: String) -> String {
        switch self {
        case .ack(let position, let result, let duplicate):
            return ServerMessage.ack(mid: mid, cursor: Cursor(epoch: epoch, position: position), result: result, duplicate: duplicate)
        case .reject(let code, let message, let details, let duplicate):
            return ServerMessage.reject(mid: mid, code: code, message: message, details: details, duplicate: duplicate)
        case .error(let code, let message, let retryAfterMS):
            return ServerMessage.error(code: code, message: message, ref: .number(String(mid)), retryAfterMS: retryAfterMS)
        }
    }
}

/// One connection's mutations between `mutate` and its answer (protocol §4–5).
///
/// At most `limit` are in flight; answers leave in the order the mutations were sent; and an `ack`
/// waits until every feed of the connection has been sent the changes up to its cursor
/// (read-your-writes), so a `reject` or `error` behind it waits too. Ordering of one client's
/// mutations against each other is Postgres's job (the `clients` row lock); this only keeps the
/// answers of one connection in order and bounded. Pure value type: the connection performs I/O.
public struct MutationPipeline: Sendable {
    private struct Entry: Sendable {
        var mid: Int64
        var outcome: MutationOutcome?
    }

    /// Mutations one connection may have in flight; more are refused with `rate_limited`.
    public let limit: Int
    private var entries: [Entry] = []
    private var start = 0

    public init(limit: Int) {
        precondition(limit > 0)
        self.limit = limit
    }

    /// Mutations sent and not yet answered.
    public var count: Int { entries.count - start }
    public var isEmpty: Bool { count == 0 }

    /// A `mutate` arrived. False when `limit` mutations are already in flight: the caller answers
    /// `error rate_limited` (the `mid` is not consumed).
    public mutating func submit(mid: Int64) -> Bool {
        guard count < limit else { return false }
        entries.append(Entry(mid: mid))
        return true
    }

    /// The executor decided (or failed) mutation `mid`. Outcomes for one client arrive in the order
    /// the mutations were submitted, so the earliest undecided entry with this `mid` is the one.
    public mutating func decided(mid: Int64, _ outcome: MutationOutcome) {
        for i in start..<entries.count where entries[i].mid == mid && entries[i].outcome == nil {
            entries[i].outcome = outcome
            return
        }
    }

    /// The position the first waiting `ack` needs before it may leave, if that is what holds the
    /// queue up.
    public var blockingPosition: Int64? {
        guard start < entries.count, case .ack(let position, _, _)? = entries[start].outcome else { return nil }
        return position
    }

    /// Takes the answers that may be sent now, in order: from the front, every decided mutation
    /// until an undecided one or an `ack` whose position `isDelivered` does not yet cover.
    public mutating func release(isDelivered: (Int64) -> Bool) -> [(mid: Int64, outcome: MutationOutcome)] {
        var out: [(mid: Int64, outcome: MutationOutcome)] = []
        while start < entries.count, let outcome = entries[start].outcome {
            if case .ack(let position, _, _) = outcome, !isDelivered(position) { break }
            out.append((entries[start].mid, outcome))
            start += 1
        }
        if start == entries.count {
            entries.removeAll(keepingCapacity: entries.capacity <= 64)
            start = 0
        } else if start > 64 && start * 2 > entries.count {
            entries.removeFirst(start)
            start = 0
        }
        return out
    }
}
