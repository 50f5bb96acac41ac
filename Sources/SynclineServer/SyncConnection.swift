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
final class SyncConnection: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let environment: SyncEnvironment
    private let headerIdentity: Identity?
    private var context: ChannelHandlerContext!
    private var eventLoop: (any EventLoop)!
    private var session: SessionStateMachine
    private var assembler: WebSocketMessageAssembler
    private var identity: Identity?
    /// Highest decided `mid` of this `sub` + `client_id`, for `welcome`.
    private var lastMID: Int64 = 0
    private var clientID = ""
    private let sessionID = UUID().uuidString.lowercased()
    private var subscribers: [String: Subscriber] = [:]
    /// Mutations sent on this connection and not yet answered.
    private var mutations: MutationPipeline
    /// Whether the loop's fan-out calls `releaseOutcomes` after each batch.
    private var awaitingDelivery = false
    /// Subscriptions being resolved (before their Subscriber exists), by id → attempt number.
    private var resolving: [String: UInt64] = [:]
    private var attempts: UInt64 = 0
    private var closing = false
    private var needsFlush = false
    private var queuedForFlush = false
    private var lastReceived = NIODeadline.now()
    private var expiry: Scheduled<Void>?
    private var tokens: Double
    private var lastRefill = NIODeadline.now()
    private var refusedInARow = 0
    /// The connection's logger: the shared one with this session's metadata, built only when a
    /// line is logged (a per-connection metadata dictionary would cost every idle connection).
    private var logger: Logger {
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

    private var fanout: LoopFanout { environment.hub.fanout(on: context.eventLoop) }
    private var bound: NIOLoopBound<SyncConnection> { NIOLoopBound(self, eventLoop: context.eventLoop) }

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

    private func receivedMessage(_ buffer: ByteBuffer) {
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
    private func admitMessage() -> Bool {
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

    private func perform(_ actions: [SessionStateMachine.Action]) {
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

    private func authenticate(token: String?, clientID: String) {
        let environment = self.environment
        let headerIdentity = self.headerIdentity
        let bound = self.bound
        let loop = context.eventLoop
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
                environment.logger.error("hello failed", metadata: ["error": "\(String(reflecting: error))"])
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

    private func opened(_ identity: Identity, lastMID: Int64) {
        guard !closing else { return }
        self.identity = identity
        self.lastMID = lastMID
        scheduleExpiry(identity)
        perform(session.authenticated(sub: identity.sub))
    }

    private func reauthenticate(_ token: String) {
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
                case .failure(let error):
                    connection.close(.tokenInvalid, reason: error.message)
                }
            }
        }
    }

    private func scheduleExpiry(_ identity: Identity) {
        expiry?.cancel()
        expiry = nil
        guard let expiresAt = identity.expiresAt else { return }
        let delay = expiresAt.timeIntervalSinceNow + Authenticator.leeway
        expiry = context.eventLoop.scheduleTask(in: .milliseconds(Int64(max(delay, 0) * 1000))) { [weak self] in
            self?.close(.tokenInvalid, reason: "token expired")
        }
    }

    // MARK: Subscriptions

    private func startSubscription(_ request: ClientMessage.Subscribe) {
        guard let identity else { return }
        attempts += 1
        let attempt = attempts
        resolving[request.id] = attempt
        let environment = self.environment
        let bound = self.bound
        let loop = context.eventLoop
        Task {
            let outcome: Result<Resolution, any Error>
            do {
                outcome = .success(try await SyncConnection.resolve(request, claims: identity.claims, environment: environment))
            } catch {
                outcome = .failure(error)
            }
            loop.execute {
                let connection = bound.value
                switch outcome {
                case .success(let resolution):
                    connection.subscriptionResolved(request, attempt: attempt, resolution: resolution)
                case .failure(let error):
                    let (code, message, retry) = SyncConnection.describe(error, logger: environment.logger)
                    connection.subscriptionFailed(request.id, attempt: attempt, code: code, message: message, retryAfterMS: retry)
                }
                connection.flushIfNeeded()
            }
        }
    }

    struct Resolution: Sendable {
        var key: FeedKey
        var mode: ServerMessage.SubscribeMode
        var resumeAfter: Int64?
    }

    /// Turns a `subscribe` into a feed key and a start: snapshot, resume from `after`, or reset.
    private static func resolve(_ request: ClientMessage.Subscribe, claims: String, environment: SyncEnvironment) async throws -> Resolution {
        let key: FeedKey
        switch request.target {
        case .collection(let name, let filter):
            key = try await environment.reader.feedKey(collection: name, filter: filter)
        case .topic(let topic):
            key = .topic(topic)
        }
        guard let after = request.after else { return Resolution(key: key, mode: .snapshot) }
        guard let cursor = Cursor(parsing: after) else {
            throw ClientFacingError(.badRequest, "'after' is not a cursor this server issued")
        }
        guard cursor.epoch == environment.hub.epoch else {
            // Another database's history (e.g. restored from a backup): start over.
            return Resolution(key: key, mode: .reset)
        }
        let (head, pruned) = try await environment.reader.head()
        if cursor.position > head {
            throw ClientFacingError(.badRequest, "'after' is newer than the newest position")
        }
        if cursor.position < pruned {
            return Resolution(key: key, mode: .reset)
        }
        guard try await environment.reader.authorize(key, claims: claims) else {
            throw ClientFacingError(.forbidden, "not allowed to read this feed")
        }
        return Resolution(key: key, mode: .resume, resumeAfter: cursor.position)
    }

    private struct Abandoned: Error {}

    private func subscriptionResolved(_ request: ClientMessage.Subscribe, attempt: UInt64, resolution: Resolution) {
        guard !closing, resolving[request.id] == attempt else { return }
        resolving[request.id] = nil
        let key = resolution.key, mode = resolution.mode, resumeAfter = resolution.resumeAfter
        let (feedID, generation) = environment.hub.retain(key)
        let subscriber = Subscriber(id: request.id, key: key, feedID: feedID, generation: generation, connection: self)
        subscribers[request.id] = subscriber
        let start: SubscriptionStateMachine.Start = resumeAfter.map { .resume(after: $0) } ?? .snapshot(reset: mode == .reset)
        carryOut(subscriber.machine.resolved(start, loop: fanout.position), for: subscriber)
    }

    private func subscriptionFailed(_ id: String, attempt: UInt64, code: ErrorCode, message: String, retryAfterMS: Int?) {
        guard !closing, resolving[id] == attempt else { return }
        resolving[id] = nil
        session.subscriptionEnded(id: id)
        sendText(ServerMessage.error(code: code, message: message, ref: .string(id), retryAfterMS: retryAfterMS))
        flushIfNeeded()
    }

    /// Streams a snapshot for the machine's run `run`, then reports `snapshotDone`.
    private func runSnapshot(_ subscriber: Subscriber, mode: ServerMessage.SubscribeMode, run: UInt32) {
        guard let identity else { return }
        let environment = self.environment
        let bound = self.bound
        let loop = context.eventLoop
        let id = subscriber.id
        let key = subscriber.key
        let epoch = environment.hub.epoch
        subscriber.task?.cancel()
        let boundSubscriber = NIOLoopBound(subscriber, eventLoop: loop)
        subscriber.task = Task {
            do {
                let position = try await environment.reader.snapshot(
                    key, claims: identity.claims,
                    chunkRows: environment.configuration.snapshotChunkRows,
                    chunkBytes: environment.configuration.snapshotChunkBytes,
                    onStart: { position in
                        try await bound.writeAndFlush(ServerMessage.subscribed(id: id, mode: mode, cursor: Cursor(epoch: epoch, position: position)),
                                                      for: boundSubscriber, run: run, on: loop)
                    },
                    onChunk: { rows, done, position in
                        try await bound.writeAndFlush(ServerMessage.snapshot(sub: id, rows: rows, done: done, cursor: Cursor(epoch: epoch, position: position)),
                                                      for: boundSubscriber, run: run, on: loop)
                    })
                try Task.checkCancellation()
                loop.execute {
                    let connection = bound.value
                    let subscriber = boundSubscriber.value
                    guard connection.owns(subscriber) else { return }
                    connection.carryOut(subscriber.machine.snapshotDone(run: run, position: position, loop: connection.fanout.position),
                                        for: subscriber)
                    connection.flushIfNeeded()  // the live marker, when the feed went live at once
                }
            } catch {
                if Task.isCancelled || error is Abandoned { return }
                let (code, message, retry) = SyncConnection.describe(error, logger: environment.logger)
                loop.execute {
                    let connection = bound.value
                    let subscriber = boundSubscriber.value
                    guard connection.owns(subscriber), subscriber.machine.run == run else { return }
                    connection.endSubscription(subscriber, code: code, message: message, retryAfterMS: retry)
                }
            }
        }
    }

    /// Carries out what a subscription's machine decided. `body` is what the event brought for
    /// this subscriber (a catch-up page or the ring pass's encoding), written by `send` and
    /// `goLive`; `promise` completes when a `send` reached the socket.
    func carryOut(_ actions: [SubscriptionStateMachine.Action], for subscriber: Subscriber, body: FeedBody = FeedBody(),
                  promise: EventLoopPromise<Void>? = nil) {
        var promise = promise
        defer { promise?.succeed() }
        for action in actions {
            switch action {
            case .startSnapshot(let run, let reset):
                runSnapshot(subscriber, mode: reset ? .reset : .snapshot, run: run)
            case .sendResumed(let cursor):
                sendText(ServerMessage.subscribed(id: subscriber.id, mode: .resume, cursor: Cursor(epoch: environment.hub.epoch, position: cursor)))
            case .requestRingCatchUp:
                guard !closing else { return }
                fanout.requestCatchUp(subscriber, environment: environment)
            case .readLogPage:
                guard !closing else { return }
                fanout.logCatchUp.add(subscriber, environment: environment)
            case .send(let through):
                send(body, to: subscriber, through: through, promise: promise)
                promise = nil
            case .goLive(let through, let young):
                goLive(subscriber, body: body, through: through, young: young)
            case .restart(let reason, let run):
                guard !closing else { return }
                logger.info("restarting feed", metadata: ["sub": "\(subscriber.id)", "reason": "\(reason.message)"])
                fanout.remove(subscriber)
                runSnapshot(subscriber, mode: .reset, run: run)
            case .end(let reason):
                drop(subscriber)
                // A snapshot the claims may not read: the subscription ends with `forbidden`.
                if reason == .revoked, subscribers[subscriber.id] === subscriber {
                    subscribers[subscriber.id] = nil
                    session.subscriptionEnded(id: subscriber.id)
                    sendText(ServerMessage.error(code: .forbidden, message: "not allowed to read this feed", ref: .string(subscriber.id), retryAfterMS: nil))
                    flushIfNeeded()
                }
            }
        }
    }

    /// The feed has caught up: its last catch-up `body` goes out as the feed's one `changes` with
    /// `"live": true` (protocol §3.4; an empty one at `through` when the body has no changes), and
    /// the fan-out takes the feed over. The marker is written here, once per start of a feed, so
    /// the fan-out's hot path never looks at it; being written after every catch-up message and
    /// before any `ack` this releases, it cannot overtake either.
    private func goLive(_ subscriber: Subscriber, body: FeedBody, through: Int64, young: Bool) {
        var body = body
        if body.changes == nil {
            body.changes = fanout.encoder.advanceBody(through: through)
        }
        send(body, to: subscriber, through: through, live: true)
        guard !closing else { return }  // the send found the outbound queue full
        fanout.activate(subscriber, young: young)
        if awaitingDelivery { releaseOutcomes() }
    }

    /// Subscribes to `key` as `id` and goes live at the loop's head at once, with no snapshot or
    /// catch-up: only for the in-process cost harness (`FanoutCostHarness`), which has no database.
    func attachLiveForHarness(id: String, key: FeedKey) {
        let (feedID, generation) = environment.hub.retain(key)
        let subscriber = Subscriber(id: id, key: key, feedID: feedID, generation: generation, connection: self)
        subscribers[id] = subscriber
        let position = fanout.position
        _ = subscriber.machine.resolved(.resume(after: position.head), loop: position)
        // Its feed is newer than the loop's last batch: young for one batch, then live.
        fanout.activate(subscriber, young: subscriber.machine.state != .live)
    }

    /// Whether `subscriber` is still this connection's (not unsubscribed, replaced or closed).
    func owns(_ subscriber: Subscriber) -> Bool {
        !closing && subscribers[subscriber.id] === subscriber
    }

    /// The log scan could not read the change log: the subscription ends with the error (the
    /// client may subscribe again from its cursor).
    func catchUpFailed(_ subscriber: Subscriber, error: any Error) {
        guard owns(subscriber) else { return }
        let (code, message, retry) = SyncConnection.describe(error, logger: environment.logger)
        endSubscription(subscriber, code: code, message: message, retryAfterMS: retry)
    }

    private func unsubscribe(_ id: String) {
        resolving[id] = nil
        if let subscriber = subscribers.removeValue(forKey: id) {
            carryOut(subscriber.machine.unsubscribe(), for: subscriber)
        }
        sendText(ServerMessage.unsubscribed(id: id))
    }

    /// Ends a subscription from the server side with an `error` (`ref` = its id).
    private func endSubscription(_ subscriber: Subscriber, code: ErrorCode, message: String, retryAfterMS: Int? = nil) {
        guard subscribers[subscriber.id] === subscriber else { return }
        subscribers[subscriber.id] = nil
        carryOut(subscriber.machine.failed(), for: subscriber)
        session.subscriptionEnded(id: subscriber.id)
        sendText(ServerMessage.error(code: code, message: message, ref: .string(subscriber.id), retryAfterMS: retryAfterMS))
        flushIfNeeded()
    }

    /// The machine's `end`: out of the fan-out, work cancelled, the feed released.
    private func drop(_ subscriber: Subscriber) {
        fanout.remove(subscriber)
        subscriber.task?.cancel()
        subscriber.task = nil
        environment.hub.release(subscriber.feedID)
        if awaitingDelivery { releaseOutcomes() }
    }

    // MARK: Mutations

    /// Hands a `mutate` to the group-commit executor; its answer comes back through
    /// `mutationDecided` on this loop.
    private func mutate(_ mutation: ClientMessage.Mutate) {
        guard let identity else { return }
        let mid = mutation.mid
        guard mutations.submit(mid: mid) else {
            sendText(ServerMessage.error(code: .rateLimited, message: "at most \(mutations.limit) mutations may be in flight on one connection",
                                         ref: .number(String(mid)), retryAfterMS: 100))
            return
        }
        let bound = self.bound
        let loop = context.eventLoop
        let request = MutationExecutor.Request(
            clientID: clientID, sub: identity.sub, mid: mid, name: mutation.name, args: mutation.args.jsonText,
            claims: identity.claims
        ) { outcome in
            loop.execute { bound.value.mutationDecided(mid: mid, outcome) }
        }
        if !environment.mutations.submit(request) {
            mutationDecided(mid: mid, .error(.unavailable, message: "the server cannot take mutations right now; send it again",
                                             retryAfterMS: 1000))
        }
    }

    private func mutationDecided(mid: Int64, _ outcome: MutationOutcome) {
        guard !closing else { return }
        mutations.decided(mid: mid, outcome)
        releaseOutcomes()
    }

    /// Sends every answer that may leave now. An `ack` leaves only once each feed of this
    /// connection has been sent the changes up to its cursor (protocol §5): the loop's fan-out has
    /// delivered through it, and no feed is still loading or catching up below it.
    func releaseOutcomes() {
        guard !closing, context != nil else { return }
        let loopHead = fanout.head
        let released = mutations.release { position in self.feedsDelivered(through: position, loopHead: loopHead) }
        let epoch = environment.hub.epoch
        for (mid, outcome) in released {
            sendText(outcome.message(mid: mid, epoch: epoch))
        }
        let waiting = mutations.blockingPosition != nil
        if waiting != awaitingDelivery {
            awaitingDelivery = waiting
            fanout.awaitDelivery(self, waiting)
        }
        flushIfNeeded()
    }

    private func feedsDelivered(through position: Int64, loopHead: Int64) -> Bool {
        guard !subscribers.isEmpty else { return true }
        guard loopHead >= position else { return false }
        for subscriber in subscribers.values where subscriber.machine.holds(until: position) {
            return false
        }
        return true
    }

    // MARK: Output

    /// Writes a feed body for one subscriber (its prefix plus the shared bytes). The connection is
    /// flushed by the fan-out at the end of the batch. A connection whose outbound queue is over
    /// its limit is closed with 4008: the client resumes from its cursor.
    /// With `live`, the `changes` message is the feed's live marker (`goLive`).
    func send(_ body: FeedBody, to subscriber: Subscriber, through: Int64, promise: EventLoopPromise<Void>? = nil,
              live: Bool = false) {
        guard !closing else {
            promise?.fail(Abandoned())
            return
        }
        guard context.channel.isWritable else {
            promise?.fail(Abandoned())
            return close(.tooSlow, reason: "outbound queue full; resume from your cursor")
        }
        // Called once per subscriber and batch: no per-call allocation (no array of frames).
        if body.changes != nil {
            subscriber.lastSent = .now()
            subscriber.lastSentPosition = through
        }
        let last = body.messages.count - (body.changes == nil ? 1 : 0)
        guard last >= 0 else {
            promise?.succeed()
            return
        }
        for (i, message) in body.messages.enumerated() {
            write(prefix: subscriber.messagePrefix, body: message.body, promise: i == last ? promise : nil)
        }
        if let changes = body.changes {
            write(prefix: live ? subscriber.liveChangesPrefix : subscriber.changesPrefix, body: changes, promise: promise)
        }
    }

    private func write(prefix: ByteBuffer, body: ByteBuffer, promise: EventLoopPromise<Void>? = nil) {
        // The frame's payload is prefix + body; the encoder writes them as separate buffers, so the
        // shared body is never copied per subscriber.
        let frame = WebSocketFrame(fin: true, opcode: .text, data: body, extensionData: prefix)
        context.write(wrapOutboundOut(frame), promise: promise)
        needsFlush = true
        if !queuedForFlush {
            queuedForFlush = true
            fanout.needsFlush(self)
        }
    }

    func sendText(_ text: String) {
        guard !closing, let context else { return }
        let frame = WebSocketFrame(fin: true, opcode: .text, data: context.channel.allocator.buffer(string: text))
        context.write(wrapOutboundOut(frame), promise: nil)
        needsFlush = true
    }

    /// Writes a subscriber's own message (`subscribed`, a snapshot chunk) unless it has ended
    /// meanwhile: after `unsubscribed`, nothing more is sent for it.
    fileprivate func writeTextAndFlush(_ text: String, for subscriber: Subscriber, run: UInt32) -> EventLoopFuture<Void> {
        guard !closing, let context, subscribers[subscriber.id] === subscriber,
              subscriber.machine.state == .snapshotting, subscriber.machine.run == run else {
            return eventLoop.makeFailedFuture(Abandoned())
        }
        let frame = WebSocketFrame(fin: true, opcode: .text, data: context.channel.allocator.buffer(string: text))
        needsFlush = false
        return context.writeAndFlush(wrapOutboundOut(frame))
    }

    /// Called by the fan-out at the end of a batch.
    func fanoutFlush() {
        queuedForFlush = false
        flushIfNeeded()
    }

    func flushIfNeeded() {
        guard needsFlush, let context else { return }
        needsFlush = false
        context.flush()
    }

    // MARK: Closing

    /// Starts the close handshake with `code`; the channel closes when the client answers, or
    /// after a short grace period.
    func close(_ code: CloseCode, reason: String) {
        guard !closing, let context else { return }
        closing = true
        session.closed()
        environment.closesCounter.increment()
        logger.debug("closing", metadata: ["code": "\(code.rawValue)", "reason": "\(reason)"])
        var data = context.channel.allocator.buffer(capacity: 2 + 123)
        data.writeInteger(code.rawValue)
        data.writeString(String(decoding: reason.utf8.prefix(123), as: UTF8.self))
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .seconds(3)) { channel.close(promise: nil) }
        tearDown()
    }

    private func receivedClose(_ frame: WebSocketFrame) {
        if closing {
            context.close(promise: nil)
            return
        }
        closing = true
        session.closed()
        var data = frame.unmaskedData
        var reply = context.channel.allocator.buffer(capacity: 2)
        if data.readableBytes >= 2, let code = data.readInteger(as: UInt16.self) {
            reply.writeInteger(Self.isValidCloseCode(code) ? code : CloseCode.protocolError.rawValue)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: reply))).whenComplete { _ in
            channel.close(promise: nil)
        }
        tearDown()
    }

    private static func isValidCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1011, 3000...4999: return true
        default: return false
        }
    }

    /// Called by the loop's fan-out every heartbeat period (one timer per loop, not per connection).
    func heartbeatTick(period: TimeAmount) {
        guard !closing, let context else { return }
        // A client behind our own backlog answers pings late; the outbound limit (4008) deals with
        // slow readers, so silence only counts while our queue is drained.
        if NIODeadline.now() - lastReceived > period * 2 && context.channel.isWritable {
            logger.debug("closing a connection that stopped answering pings")
            close(.normal, reason: "no answer to pings")
            context.eventLoop.scheduleTask(in: .seconds(1)) { [channel = context.channel] in channel.close(promise: nil) }
            return
        }
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer())), promise: nil)
    }

    private var tornDown = false

    /// Releases everything this connection holds in the hub and on the loop. Idempotent.
    private func tearDown() {
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

    // MARK: Errors

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

extension NIOLoopBound where Value == SyncConnection {
    /// Writes one text frame from a background task and waits until it is flushed to the socket,
    /// so snapshots are paced by the client's reading speed.
    func writeAndFlush(_ text: String, for subscriber: NIOLoopBound<Subscriber>, run: UInt32, on loop: any EventLoop) async throws {
        let bound = self
        try await loop.flatSubmit { bound.value.writeTextAndFlush(text, for: subscriber.value, run: run) }.get()
    }
}
