import Logging
import NIOConcurrencyHelpers
import SynclineCore

/// The metadata a connection's log lines carry, so one client's story can be followed through a
/// log (`--log-format json`): `connection` (a number unique in this process), `session` (the id
/// the client got in `welcome`), `client_id` and `sub` once `hello` named them. Lines about one
/// request add `subscription` (a subscribe's id) or `mid`.
enum ConnectionLogging {
    private static let counter = NIOLockedValueBox<UInt64>(0)

    static func nextConnectionNumber() -> UInt64 {
        counter.withLockedValue {
            $0 += 1
            return $0
        }
    }

    /// Built only when a line is logged: a metadata dictionary per connection would cost every
    /// idle connection memory.
    static func logger(_ base: Logger, connection: UInt64, session: String, clientID: String, sub: String?) -> Logger {
        var logger = base
        logger[metadataKey: "connection"] = "\(connection)"
        logger[metadataKey: "session"] = "\(session)"
        if !clientID.isEmpty { logger[metadataKey: "client_id"] = "\(clientID)" }
        if let sub { logger[metadataKey: "sub"] = "\(sub)" }
        return logger
    }
}

extension SyncConnection {
    /// The connection's logger for lines about one subscription.
    func subscriptionLogger(_ id: String) -> Logger {
        var logger = self.logger
        logger[metadataKey: "subscription"] = "\(id)"
        return logger
    }

    /// The connection's logger for lines about one mutation.
    func mutationLogger(_ mid: Int64) -> Logger {
        var logger = self.logger
        logger[metadataKey: "mid"] = "\(mid)"
        return logger
    }
}

extension MutationOutcome {
    /// `ack`, `reject` or `error`: the answer's type, for logs and spans.
    var kind: String {
        switch self {
        case .ack: "ack"
        case .reject: "reject"
        case .error: "error"
        }
    }
}
