import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SynclineCore
import SynclinePostgres
import SynclineProtocol

/// One `/v1/sync` WebSocket connection: frames in, the session state machine, subscriptions, and
/// frames out. An event-loop-bound channel handler; background work (token checks, snapshots,
/// catch-ups) runs in tasks that hop back to the loop through `NIOLoopBound`.
///
/// This file holds its state, the channel events and the session; each concept lives in its own
/// file: `+Authentication` (hello, auth, expiry), `+Subscriptions`, `+Mutations`, `+Output`,
/// `+Closing`, and `ConnectionErrors` (what a client may see of a failure).
final class SyncConnection: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let environment: SyncEnvironment
    let headerIdentity: Identity?
    var context: ChannelHandlerContext!
    var eventLoop: (any EventLoop)!
    var session: SessionStateMachine
    var assembler: WebSocketMessageAssembler
    var identity: Identity?
    /// Highest decided `mid` of this `sub` + `client_id`, for `welcome`.
    var lastMID: Int64 = 0
    var clientID = ""
    let sessionID = UUID().uuidString.lowercased()
    var subscribers: [String: Subscriber] = [:]
    /// Mutations sent on this connection and not yet answered.
    var mutations: MutationPipeline
    /// Whether the loop's fan-out calls `releaseOutcomes` after each batch.
    var awaitingDelivery = false
    /// Subscriptions being resolved (before their Subscriber exists), by id → attempt number.
    var resolving: [String: UInt64] = [:]
    var attempts: UInt64 = 0
    var closing = false
    var tornDown = false
    var needsFlush = false
    var queuedForFlush = false
    var lastReceived = NIODeadline.now()
    var expiry: Scheduled<Void>?
    var tokens: Double
    var lastRefill = NIODeadline.now()
    var refusedInARow = 0
    /// The connection's logger: the shared one with this session's metadata, built only when a
    /// line is logged (a per-connection metadata dictionary would cost every idle connection).
    var logger: Logger {
        var logger = environment.logger
        logger[metadataKey: "session"] = "\(sessionID.prefix(8))"
        if let sub = identity?.sub { logger[metadataKey: "sub"] = "\(sub)" }
        return logger
    }

    init(environment: SyncEnvironment, headerIdentity: Identity?) {
        self.environment = environment
        self.headerIdentity = headerIdentity
        self.session = SessionStateMachine(limits: .init(
            maximumSubscriptions: environment.configuration.maximumSubscriptionsPerConnection))
        self.mutations = MutationPipeline(limit: max(1, environment.configuration.maximumMutationsInFlight))
        self.assembler = WebSocketMessageAssembler(maximumBytes: environment.configuration.maximumMessageBytes)
        self.tokens = Double(environment.configuration.maximumMessagesPerSecond) * 2
    }

    var fanout: LoopFanout { environment.hub.fanout(on: context.eventLoop) }
    var bound: NIOLoopBound<SyncConnection> { NIOLoopBound(self, eventLoop: context.eventLoop) }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.eventLoop = context.eventLoop
        fanout.register(self)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        tearDown()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        tearDown()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOWebSocketError {
            logger.debug("websocket protocol error", metadata: ["error": "\(error)"])
            close(error == .invalidFrameLength ? .messageTooBig : .protocolError, reason: "invalid frame")
        } else {
            logger.debug("connection error", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastReceived = .now()
        switch frame.opcode {
        case .ping:
            guard frame.fin else { return close(.protocolError, reason: "fragmented control frame") }
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .pong:
            break
        case .connectionClose:
            receivedClose(frame)
        case .text, .binary, .continuation:
            guard !closing else { return }
            switch assembler.receive(frame) {
            case .none: break
            case .fail(let code, let reason): close(code, reason: reason)
            case .binary: close(.unsupportedData, reason: "syncline.v1 uses text frames")
            case .text(let buffer): receivedMessage(buffer)
            }
        default:
            close(.protocolError, reason: "unknown opcode")
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushIfNeeded()
        context.fireChannelReadComplete()
    }

    // MARK: Session

    func receivedMessage(_ buffer: ByteBuffer) {
        guard admitMessage() else { return }
        let decoded: Result<ClientMessage, ClientMessageError> = buffer.withUnsafeReadableBytes { raw in
            do throws(ClientMessageError) {
                return .success(try ClientMessage.decode(raw.assumingMemoryBound(to: UInt8.self)))
            } catch {
                return .failure(error)
            }
        }
        switch decoded {
        case .success(let message): perform(session.received(message))
        case .failure(let error):
            environment.errorsCounter.increment()
            perform(session.receivedInvalid(error))
        }
    }

    /// Token bucket: `maximumMessagesPerSecond`, burst twice that. Refused messages get
    /// `rate_limited`; a client that keeps flooding is closed with 1008.
    func admitMessage() -> Bool {
        let rate = Double(environment.configuration.maximumMessagesPerSecond)
        let now = NIODeadline.now()
        tokens = min(rate * 2, tokens + Double((now - lastRefill).nanoseconds) / 1e9 * rate)
        lastRefill = now
        if tokens >= 1 {
            tokens -= 1
            refusedInARow = 0
            return true
        }
        refusedInARow += 1
        if refusedInARow > Int(rate) {
            close(.policyViolation, reason: "message rate limit exceeded")
        } else {
            sendText(ServerMessage.error(code: .rateLimited, message: "too many messages; slow down",
                                         ref: nil, retryAfterMS: Int(1000 / max(rate, 1)) + 1))
        }
        return false
    }

    func perform(_ actions: [SessionStateMachine.Action]) {
        for action in actions {
            guard !closing else { return }
            switch action {
            case .authenticate(let token, let clientID):
                self.clientID = clientID
                authenticate(token: token, clientID: clientID)
            case .sendWelcome:
                sendText(ServerMessage.welcome(session: sessionID, server: SynclineServer.serverName,
                                               heartbeatMS: Int(environment.configuration.heartbeatMilliseconds),
                                               lastMID: lastMID))
            case .send(let text):
                sendText(text)
            case .close(let code, let reason):
                close(code, reason: reason)
            case .subscribe(let request):
                startSubscription(request)
            case .unsubscribe(let id):
                unsubscribe(id)
            case .mutate(let mutation):
                mutate(mutation)
            case .reauthenticate(let token):
                reauthenticate(token)
            }
        }
    }


    /// Releases everything this connection holds in the hub and on the loop. Idempotent.
    func tearDown() {
        guard !tornDown else { return }
        tornDown = true
        closing = true
        expiry?.cancel()
        resolving = [:]
        if context != nil {
            for subscriber in subscribers.values { carryOut(subscriber.machine.closed(), for: subscriber) }
            fanout.unregister(self)
            if awaitingDelivery { fanout.awaitDelivery(self, false) }
        }
        subscribers = [:]
        environment.releaseConnection()
    }
}
