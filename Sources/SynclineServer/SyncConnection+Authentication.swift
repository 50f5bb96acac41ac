import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SynclineCore
import SynclinePostgres
import SynclineProtocol

/// `hello` and `auth`: checking tokens off the loop, registering the client id, and closing the
/// session when its token expires.
extension SyncConnection {
    func authenticate(token: String?, clientID: String) {
        let environment = self.environment
        let headerIdentity = self.headerIdentity
        let bound = self.bound
        let loop = context.eventLoop
        let logger = self.logger
        Task {
            let outcome: Result<(Identity, Int64), SessionFailure>
            do {
                let identity: Identity
                if let token {
                    identity = try await environment.authenticator.authenticate(token)
                } else if let headerIdentity {
                    identity = headerIdentity
                } else {
                    throw SessionFailure(.tokenInvalid, "no token: send one in hello or in the Authorization header")
                }
                let (owner, lastMID) = try await environment.clients.register(clientID: clientID, sub: identity.sub)
                guard owner == identity.sub else {
                    throw SessionFailure(.forbidden, "client_id belongs to another user")
                }
                outcome = .success((identity, lastMID))
            } catch let error as AuthenticationError {
                outcome = .failure(SessionFailure(.tokenInvalid, error.message))
            } catch let error as SessionFailure {
                outcome = .failure(error)
            } catch {
                logger.error("hello failed", metadata: ["error": "\(String(reflecting: error))"])
                outcome = .failure(SessionFailure(.overloaded, "the server cannot open sessions right now; retry later"))
            }
            loop.execute {
                let connection = bound.value
                switch outcome {
                case .success(let (identity, lastMID)): connection.opened(identity, lastMID: lastMID)
                case .failure(let failure): connection.perform(connection.session.authenticationFailed(failure.code, reason: failure.message))
                }
                connection.flushIfNeeded()
            }
        }
    }

    func opened(_ identity: Identity, lastMID: Int64) {
        guard !closing else { return }
        guard environment.limits.admitUser(identity.sub, channel: context.channel) else {
            return close(.overloaded, reason: "too many connections for this user; retry later")
        }
        self.identity = identity
        self.lastMID = lastMID
        scheduleExpiry(identity)
        logger.debug("session opened", metadata: ["last_mid": "\(lastMID)"])
        perform(session.authenticated(sub: identity.sub))
    }

    func reauthenticate(_ token: String) {
        let environment = self.environment
        let bound = self.bound
        let loop = context.eventLoop
        Task {
            let result: Result<Identity, AuthenticationError>
            do throws(AuthenticationError) { result = .success(try await environment.authenticator.authenticate(token)) } catch { result = .failure(error) }
            loop.execute {
                let connection = bound.value
                switch result {
                case .success(let identity):
                    guard identity.sub == connection.identity?.sub else {
                        return connection.close(.forbidden, reason: "auth token is for another user")
                    }
                    connection.identity = identity
                    connection.scheduleExpiry(identity)
                    // Feeds are re-authorized with the new claims (protocol §3.1 `auth`).
                    connection.recheckAll(claims: identity.claims)
                case .failure(let error):
                    connection.close(.tokenInvalid, reason: error.message)
                }
            }
        }
    }

    func scheduleExpiry(_ identity: Identity) {
        expiry?.cancel()
        expiry = nil
        guard let expiresAt = identity.expiresAt else { return }
        let delay = expiresAt.timeIntervalSinceNow + environment.authenticator.leeway
        expiry = context.eventLoop.scheduleTask(in: .milliseconds(Int64(max(delay, 0) * 1000))) { [weak self] in
            self?.close(.tokenInvalid, reason: "token expired")
        }
    }
}
