import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SynclineCore
import SynclinePostgres
import SynclineProtocol
import SynclineWebSocket

/// One `/v1/sync` WebSocket connection: messages in, the session state machine, subscriptions, and
/// messages out. An event-loop-bound channel handler after `WebSocketProtocolHandler`, which owns
/// every frame, ping and close: the connection receives whole validated messages (and pongs) and
/// sends through the handler's API (`webSocket`), so its output keeps one order. Background work
/// (token checks, snapshots, catch-ups) runs in tasks that hop back to the loop through `NIOLoopBound`.
///
/// This file holds its state, the channel events and the session; each concept lives in its own
/// file: `+Authentication` (hello, auth, expiry), `+Subscriptions`, `+Mutations`, `+Output`,
/// `+Closing`, and `ConnectionErrors` (what a client may see of a failure).
final class SyncConnection: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame

    let environment: SyncEnvironment
    /// The connection's WebSocket layer: everything it sends goes through it.
    let webSocket: WebSocketProtocolHandler
    let headerIdentity: Identity?
    var context: ChannelHandlerContext!
    var eventLoop: (any EventLoop)!
    var session: SessionStateMachine
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
    var queuedForFlush = false
    var lastReceived = NIODeadline.now()
    var expiry: Scheduled<Void>?
    var tokens: Double
    var lastRefill = NIODeadline.now()
    /// Messages refused in the current refusal window (one second from the first refusal).
    var refusedInWindow = 0
    var refusalWindowStart = NIODeadline.distantPast
    /// The connection's logger: the shared one with this session's metadata, built only when a
    /// line is logged (a per-connection metadata dictionary would cost every idle connection).
    /// Connection, session, client_id and sub are on every line (`ConnectionLogging.swift`).
    var logger: Logger { ConnectionLogging.logger(environment.logger, connection: connectionNumber, session: sessionID,
                                                  clientID: clientID, sub: identity?.sub) }
    let connectionNumber = ConnectionLogging.nextConnectionNumber()

    init(environment: SyncEnvironment, headerIdentity: Identity?, webSocket: WebSocketProtocolHandler) {
        self.environment = environment
        self.webSocket = webSocket
        self.headerIdentity = headerIdentity
        self.session = SessionStateMachine(limits: .init(
            maximumSubscriptions: environment.configuration.maximumSubscriptionsPerConnection))
        self.mutations = MutationPipeline(limit: max(1, environment.configuration.maximumMutationsInFlight))
        self.tokens = Double(environment.configuration.maximumMessagesPerSecond) * 2
    }

    /// This loop's fan-out, looked up once when the handler is added (not per delivery).
    private(set) var fanout: LoopFanout!
    var bound: NIOLoopBound<SyncConnection> { NIOLoopBound(self, eventLoop: context.eventLoop) }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.eventLoop = context.eventLoop
        fanout = environment.hub.fanout(on: context.eventLoop)
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
        // WebSocket protocol errors were answered by the WebSocket layer; this is the transport's.
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// Whole messages and pongs from the WebSocket layer; anything read proves the client alive.
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastReceived = .now()
        switch frame.opcode {
        case .text:
            guard !closing else { return }
            receivedMessage(frame.data)
        case .binary:
            close(.unsupportedData, reason: "syncline.v1 uses text frames")
        default:
            break  // a pong
        }
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
    /// `rate_limited`; more than a second's worth refused within one second closes with 1008.
    /// Refusals are counted per window, not in a row: a flooder whose reads the loop paces
    /// (`WebSocketFrameReader`) earns a token now and then, and a count in a row would restart
    /// at each one and never close it.
    func admitMessage() -> Bool {
        let rate = Double(environment.configuration.maximumMessagesPerSecond)
        let now = NIODeadline.now()
        tokens = min(rate * 2, tokens + Double((now - lastRefill).nanoseconds) / 1e9 * rate)
        lastRefill = now
        if tokens >= 1 {
            tokens -= 1
            return true
        }
        if now - refusalWindowStart > .seconds(1) {
            refusalWindowStart = now
            refusedInWindow = 0
        }
        refusedInWindow += 1
        SynclineLimitMetrics.refused(.messageRate)
        if refusedInWindow > Int(rate) {
            environment.rateLimitClosesCounter.increment()
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
        logger.debug("connection closed")
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
