import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SynclineCore
import SynclinePostgres
import SynclineProtocol

extension SyncConnection {
    /// Maps an error to what the client may see: protocol code, a message without Postgres text,
    /// and a retry hint for transient failures.
    static func describe(_ error: any Error, logger: Logger) -> (ErrorCode, String, Int?) {
        if let error = error as? ClientFacingError { return (error.code, error.message, nil) }
        if let error = error as? SynclinePostgresError {
            switch error.code {
            case .unknownCollection: return (.notFound, error.message, nil)
            case .unknownColumn, .invalidValue: return (.badRequest, error.message, nil)
            case .forbidden: return (.forbidden, error.message, nil)
            default: break
            }
        }
        logger.error("subscription failed", metadata: ["error": "\(String(reflecting: error))"])
        return (.unavailable, "the server could not read this feed right now; retry", 1000)
    }

    /// A write or snapshot step for a subscription that ended meanwhile.
    struct Abandoned: Error {}
}

/// An error whose message is meant for the client.
struct ClientFacingError: Error {
    var code: ErrorCode
    var message: String
    init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// Why a session could not open: the close code and reason.
struct SessionFailure: Error {
    var code: CloseCode
    var message: String
    init(_ code: CloseCode, _ message: String) {
        self.code = code
        self.message = message
    }
}
