import SynclineProtocol

/// The connection's state and the number of mutations not yet decided.
public struct ClientStatus: Sendable, Hashable, CustomStringConvertible {
    /// Where the client stands.
    public enum State: String, Sendable, Hashable {
        /// Opening a connection (socket, `hello`, `welcome`).
        case connecting
        /// Connected, and every feed has caught up (its live marker arrived).
        case live
        /// Not connected; a reconnect is scheduled. Rows and writes keep working locally.
        case offline
        /// Connected, with at least one feed loading its snapshot or catching up.
        case resyncing
        /// Stopped for good: closed by the app, or a problem retrying cannot fix (see ``SynclineClient/errors``).
        case stopped
    }

    /// Where the client stands.
    public var state: State
    /// Mutations enqueued and not yet decided (also those from earlier processes).
    public var pending: Int

    /// A status value.
    public init(state: State, pending: Int) {
        self.state = state
        self.pending = pending
    }

    /// E.g. `live (2 pending)`.
    public var description: String { "\(state.rawValue) (\(pending) pending)" }
}

/// One row change as a live query shows it (confirmed rows plus optimistic effects).
public struct RowChange: Sendable, Hashable {
    /// What happened to the row in the query.
    public enum Op: String, Sendable, Hashable {
        /// The row entered the query.
        case insert
        /// The row changed and still matches.
        case update
        /// The row left the query (deleted, or no longer matching its filter).
        case delete
    }

    /// What happened.
    public var op: Op
    /// The row's key columns.
    public var key: JSONValue
    /// The row now; nil for `delete`.
    public var row: JSONValue?
    /// Whether the row shown carries an optimistic effect not yet confirmed.
    public var pending: Bool

    /// A change record.
    public init(op: Op, key: JSONValue, row: JSONValue?, pending: Bool) {
        self.op = op
        self.key = key
        self.row = row
        self.pending = pending
    }
}

/// What a ``LiveQuery``'s event sequence yields. `snapshot`, `reset` and `resynced` carry all of the
/// query's rows (replace what you show); `changes` carry row changes to apply.
public enum LiveQueryEvent: Sendable, Hashable {
    /// The query's rows when the sequence started (from the store, or empty until the first snapshot),
    /// and again when its first snapshot arrives.
    case snapshot([JSONValue])
    /// Rows that entered, changed or left the query, in order.
    case changes([RowChange])
    /// The feed was restarted by the server (history pruned, another epoch, TRUNCATE): these rows
    /// replace all of the old ones.
    case reset([JSONValue])
    /// The feed has caught up: what follows is live.
    case live
    /// The rows shown are confirmed up to this cursor (after the events of one publish). Save it to
    /// resume elsewhere (e.g. `syncline tail --after`).
    case cursor(String)
    /// The consumer fell behind its bound: events were dropped, and these are the current rows.
    case resynced([JSONValue])
    /// The feed ended (e.g. `forbidden`, `revoked`, `not_found`); nothing more follows until resubscribed.
    case ended(code: String, message: String)
}

/// A message published on a topic.
public struct TopicMessage: Sendable, Hashable {
    /// The topic.
    public var topic: String
    /// What was published.
    public var payload: JSONValue
    /// The message's position in the log.
    public var cursor: String

    /// A message record.
    public init(topic: String, payload: JSONValue, cursor: String) {
        self.topic = topic
        self.payload = payload
        self.cursor = cursor
    }
}

/// What a ``TopicSubscription``'s sequence yields.
public enum TopicEvent: Sendable, Hashable {
    /// A published message.
    case message(TopicMessage)
    /// Caught up: what follows is live.
    case live
    /// The feed's cursor advanced with no message (an idle advance, or the live marker).
    case cursor(String)
    /// The history after the saved cursor was pruned: messages in between are lost.
    case reset
    /// The consumer fell behind its bound and this many messages were dropped.
    case dropped(Int)
    /// The feed ended (e.g. `forbidden`).
    case ended(code: String, message: String)
}

/// A mutation the server decided and rolled back (`reject`), or refused for good.
public struct MutationRejected: Error, Sendable, Hashable, CustomStringConvertible {
    /// E.g. `insufficient_funds`, `forbidden`, `invalid`, `conflict`, `not_found`, `timeout`.
    public var code: String
    /// For people; match on ``code``.
    public var message: String
    /// Mutator-defined details (e.g. `{"balance": 12.00}`), when given.
    public var details: JSONValue?

    /// A rejection.
    public init(code: String, message: String, details: JSONValue? = nil) {
        self.code = code
        self.message = message
        self.details = details
    }

    /// E.g. `insufficient_funds: alice-checking has insufficient funds`.
    public var description: String { "\(code): \(message)" }
}

/// The server no longer knows the outcome of this `mid` (`error outcome_expired`): it was decided
/// long ago and its stored outcome pruned. It was not applied again; whether it had committed is
/// visible in the feeds.
public struct MutationOutcomeExpired: Error, Sendable, Hashable, CustomStringConvertible {
    /// The mutation's `mid`.
    public var mid: Int64
    /// The server's text.
    public var message: String

    /// An expired outcome.
    public init(mid: Int64, message: String) {
        self.mid = mid
        self.message = message
    }

    /// E.g. `outcome of mid 7 expired: …`.
    public var description: String { "outcome of mid \(mid) expired: \(message)" }
}

/// How a mutation was decided.
public enum MutationDecision: Sendable, Hashable {
    /// Committed: the mutator's result and the commit's cursor.
    case acked(result: JSONValue, cursor: String)
    /// Rolled back.
    case rejected(MutationRejected)
    /// Decided long ago; the outcome was pruned.
    case expired(MutationOutcomeExpired)
}

/// The outcome of a mutation enqueued by an earlier process (``SynclineClient/outcomes``).
public struct MutationOutcome: Sendable, Hashable {
    /// The mutation's `mid`.
    public var mid: Int64
    /// The mutator's name.
    public var name: String
    /// Its arguments.
    public var args: JSONValue
    /// How it was decided.
    public var decision: MutationDecision

    /// An outcome record.
    public init(mid: Int64, name: String, args: JSONValue, decision: MutationDecision) {
        self.mid = mid
        self.name = name
        self.args = args
        self.decision = decision
    }
}

/// Problems the client reports on ``SynclineClient/errors``. Those marked fatal stop the client.
public enum SynclineClientError: Error, Sendable, Hashable, CustomStringConvertible {
    /// `welcome.last_mid` is above every `mid` this store assigned: another device or install uses
    /// this client id. Fatal: the queue is kept, nothing is sent.
    case clientIDInUse(lastMID: Int64, highestAssigned: Int64)
    /// Close 4003: the client id belongs to another user, or `auth` changed the user. Fatal.
    case forbidden(String)
    /// The server closed with a code that means the client is at fault (1008, 1009, 4400); it backs off and retries.
    case protocolViolation(code: UInt16, reason: String)
    /// An `error` the client could not attribute to a request.
    case server(code: String, message: String)
    /// The token provider failed; retried with backoff.
    case tokenUnavailable(String)
    /// The store could not be written. Fatal: what is not durable must not be sent.
    case store(String)

    /// A short code, as syncline.js reports the same problems (`client_id_in_use`, `forbidden`, …).
    public var code: String {
        switch self {
        case .clientIDInUse: return "client_id_in_use"
        case .forbidden: return "forbidden"
        case .protocolViolation(let code, _): return "closed_\(code)"
        case .server(let code, _): return code
        case .tokenUnavailable: return "token_unavailable"
        case .store: return "store"
        }
    }

    /// Whether the client stopped because of it.
    public var isFatal: Bool {
        switch self {
        case .clientIDInUse, .forbidden, .store: return true
        case .protocolViolation, .server, .tokenUnavailable: return false
        }
    }

    /// A one-line explanation.
    public var description: String {
        switch self {
        case .clientIDInUse(let lastMID, let highest):
            return "client id in use elsewhere: the server decided mid \(lastMID) but this store assigned only up to \(highest)"
        case .forbidden(let reason): return "forbidden (4003): \(reason)"
        case .protocolViolation(let code, let reason): return "closed with \(code): \(reason)"
        case .server(let code, let message): return "server error \(code): \(message)"
        case .tokenUnavailable(let reason): return "token provider failed: \(reason)"
        case .store(let reason): return "store write failed: \(reason)"
        }
    }
}
