import SynclineProtocol

/// The protocol life of one `/v1/sync` connection: hello → (token check) → open → closed.
///
/// Pure value type: it decides, the connection handler performs the returned actions. Messages
/// that arrive while the `hello` token is being verified wait here (bounded) and are replayed in
/// order once the session opens.
public struct SessionStateMachine: Sendable {
    public struct Limits: Sendable {
        /// Subscriptions one connection may hold at once.
        public var maximumSubscriptions: Int
        /// Messages held back while the hello token is verified.
        public var maximumPendingMessages: Int

        public init(maximumSubscriptions: Int = 100, maximumPendingMessages: Int = 64) {
            self.maximumSubscriptions = maximumSubscriptions
            self.maximumPendingMessages = maximumPendingMessages
        }
    }

    public enum State: Sendable, Equatable {
        case awaitingHello
        case authenticating(clientID: String)
        case open(sub: String, clientID: String)
        case closed
    }

    public enum Action: Sendable, Equatable {
        /// Verify the token (the hello's, or the upgrade header's when hello has none).
        case authenticate(token: String?, clientID: String)
        /// The token is good: send `welcome` (the handler knows session id and `last_mid`).
        case sendWelcome(sub: String, clientID: String)
        case send(String)
        case close(CloseCode, reason: String)
        case subscribe(ClientMessage.Subscribe)
        case unsubscribe(id: String)
        case mutate(ClientMessage.Mutate)
        /// Replace the connection's claims with those of this token (same `sub` required).
        case reauthenticate(token: String)
    }

    public private(set) var state: State = .awaitingHello
    public let limits: Limits
    private var pending: [Result<ClientMessage, ClientMessageError>] = []
    /// Subscription ids in use on this connection.
    public private(set) var subscriptionIDs: Set<String> = []

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// A well-formed client message arrived.
    public mutating func received(_ message: ClientMessage) -> [Action] {
        switch state {
        case .closed:
            return []
        case .awaitingHello:
            guard case .hello(let hello) = message else {
                state = .closed
                return [.close(.protocolViolation, reason: "the first message must be hello")]
            }
            state = .authenticating(clientID: hello.clientID)
            return [.authenticate(token: hello.token, clientID: hello.clientID)]
        case .authenticating:
            if case .hello = message {
                state = .closed
                return [.close(.protocolViolation, reason: "hello sent twice")]
            }
            guard pending.count < limits.maximumPendingMessages else {
                state = .closed
                return [.close(.policyViolation, reason: "too many messages before welcome")]
            }
            pending.append(.success(message))
            return []
        case .open:
            return handleOpen(message)
        }
    }

    /// A frame that is not a valid client message arrived.
    public mutating func receivedInvalid(_ error: ClientMessageError) -> [Action] {
        switch state {
        case .closed:
            return []
        case .awaitingHello:
            state = .closed
            return [.close(.protocolViolation, reason: "the first message must be a valid hello: \(error.message)")]
        case .authenticating:
            // Answered after `welcome`, in the order the client sent its messages.
            guard pending.count < limits.maximumPendingMessages else {
                state = .closed
                return [.close(.policyViolation, reason: "too many messages before welcome")]
            }
            pending.append(.failure(error))
            return []
        case .open:
            return [.send(ServerMessage.error(code: error.code, message: error.message, ref: error.ref))]
        }
    }

    /// The hello token was verified for `sub`.
    public mutating func authenticated(sub: String) -> [Action] {
        guard case .authenticating(let clientID) = state else { return [] }
        state = .open(sub: sub, clientID: clientID)
        var actions: [Action] = [.sendWelcome(sub: sub, clientID: clientID)]
        let replay = pending
        pending = []
        for item in replay {
            switch item {
            case .success(let message): actions += handleOpen(message)
            case .failure(let error): actions.append(.send(ServerMessage.error(code: error.code, message: error.message, ref: error.ref)))
            }
            if state == .closed { break }
        }
        return actions
    }

    /// The hello token was refused (`code` 4001 for invalid/expired, 4003 for a client_id of
    /// another user).
    public mutating func authenticationFailed(_ code: CloseCode, reason: String) -> [Action] {
        guard state != .closed else { return [] }
        state = .closed
        pending = []
        return [.close(code, reason: reason)]
    }

    /// A subscription ended without an `unsubscribe` (refused, revoked): its id is free again.
    public mutating func subscriptionEnded(id: String) {
        subscriptionIDs.remove(id)
    }

    /// The connection is closing for any reason: nothing more is acted upon.
    public mutating func closed() {
        state = .closed
        pending = []
    }

    private mutating func handleOpen(_ message: ClientMessage) -> [Action] {
        switch message {
        case .hello:
            state = .closed
            return [.close(.protocolViolation, reason: "hello sent twice")]
        case .subscribe(let request):
            let ref = JSONValue.string(request.id)
            if subscriptionIDs.contains(request.id) {
                return [.send(ServerMessage.error(code: .duplicateID, message: "subscription id '\(request.id)' is already in use on this connection", ref: ref))]
            }
            guard subscriptionIDs.count < limits.maximumSubscriptions else {
                return [.send(ServerMessage.error(code: .rateLimited, message: "at most \(limits.maximumSubscriptions) subscriptions per connection", ref: ref))]
            }
            subscriptionIDs.insert(request.id)
            return [.subscribe(request)]
        case .unsubscribe(let id):
            guard subscriptionIDs.remove(id) != nil else {
                return [.send(ServerMessage.error(code: .notFound, message: "no subscription with id '\(id)'", ref: .string(id)))]
            }
            return [.unsubscribe(id: id)]
        case .mutate(let mutate):
            return [.mutate(mutate)]
        case .auth(let token):
            return [.reauthenticate(token: token)]
        case .ping(let t):
            return [.send(ServerMessage.pong(t: t))]
        }
    }
}
