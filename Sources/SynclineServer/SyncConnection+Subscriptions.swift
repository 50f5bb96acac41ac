import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SynclineCore
import SynclinePostgres
import SynclineProtocol

/// `subscribe` and `unsubscribe`: resolving a request to a feed, running snapshots, and carrying
/// out what each subscription's state machine decides.
extension SyncConnection {
    func startSubscription(_ request: ClientMessage.Subscribe) {
        guard let identity else { return }
        attempts += 1
        let attempt = attempts
        resolving[request.id] = attempt
        let environment = self.environment
        let bound = self.bound
        let loop = context.eventLoop
        // A policy hold that starts while this resolves may concern the feed: a resume authorized
        // before it is authorized again (subscriptionResolved).
        let policyEpoch = environment.hub.policy.epoch
        let span = startRequestSpan(RequestSpans.subscribe)
        if span.isRecording { span.attributes["syncline.subscription"] = request.id }
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
                    if span.isRecording { span.attributes["syncline.feed"] = resolution.key.description }
                    RequestSpans.end(span, outcome: resolution.mode.rawValue)
                    connection.subscriptionResolved(request, attempt: attempt, resolution: resolution, policyEpoch: policyEpoch)
                case .failure(let error):
                    let (code, message, retry) = SyncConnection.describe(error, logger: connection.subscriptionLogger(request.id))
                    RequestSpans.end(span, outcome: "error", failure: code.rawValue)
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
    static func resolve(_ request: ClientMessage.Subscribe, claims: String, environment: SyncEnvironment) async throws -> Resolution {
        let key: FeedKey
        switch request.target {
        case .collection(let name, let filter):
            try FilterLimit.check(filter, configuration: environment.configuration)
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


    func subscriptionResolved(_ request: ClientMessage.Subscribe, attempt: UInt64, resolution: Resolution, policyEpoch: UInt64? = nil) {
        guard !closing, resolving[request.id] == attempt else { return }
        // Authorized before a policy change the hold did not see it for (it did not exist yet):
        // its catch-up could carry that very commit, so authorize again. (A snapshot is
        // authorized in its own read, after this.)
        if resolution.resumeAfter != nil, let policyEpoch, policyEpoch != environment.hub.policy.epoch {
            return startSubscription(request)
        }
        resolving[request.id] = nil
        let key = resolution.key, mode = resolution.mode, resumeAfter = resolution.resumeAfter
        let (feedID, generation) = environment.hub.retain(key)
        let subscriber = Subscriber(id: request.id, key: key, feedID: feedID, generation: generation, connection: self)
        if request.conflate { subscriber.conflation = ConflatingDelivery(key: key) }
        subscribers[request.id] = subscriber
        let start: SubscriptionStateMachine.Start = resumeAfter.map { .resume(after: $0) } ?? .snapshot(reset: mode == .reset)
        subscriptionLogger(request.id).debug("subscribed", metadata: ["mode": "\(mode.rawValue)", "feed": "\(key)"])
        carryOut(subscriber.machine.resolved(start, loop: fanout.position), for: subscriber)
    }

    func subscriptionFailed(_ id: String, attempt: UInt64, code: ErrorCode, message: String, retryAfterMS: Int?) {
        guard !closing, resolving[id] == attempt else { return }
        resolving[id] = nil
        session.subscriptionEnded(id: id)
        sendText(ServerMessage.error(code: code, message: message, ref: .string(id), retryAfterMS: retryAfterMS))
        flushIfNeeded()
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
                requestSnapshot(subscriber, mode: reset ? .reset : .snapshot, run: run)
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
                subscriptionLogger(subscriber.id).info("restarting feed", metadata: ["reason": "\(reason.message)"])
                fanout.remove(subscriber)
                requestSnapshot(subscriber, mode: .reset, run: run)
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
    func goLive(_ subscriber: Subscriber, body: FeedBody, through: Int64, young: Bool) {
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
        let (code, message, retry) = SyncConnection.describe(error, logger: subscriptionLogger(subscriber.id))
        endSubscription(subscriber, code: code, message: message, retryAfterMS: retry)
    }

    func unsubscribe(_ id: String) {
        resolving[id] = nil
        if let subscriber = subscribers.removeValue(forKey: id) {
            carryOut(subscriber.machine.unsubscribe(), for: subscriber)
        }
        sendText(ServerMessage.unsubscribed(id: id))
    }

    /// Ends a subscription from the server side with an `error` (`ref` = its id).
    func endSubscription(_ subscriber: Subscriber, code: ErrorCode, message: String, retryAfterMS: Int? = nil) {
        guard subscribers[subscriber.id] === subscriber else { return }
        subscribers[subscriber.id] = nil
        carryOut(subscriber.machine.failed(), for: subscriber)
        session.subscriptionEnded(id: subscriber.id)
        sendText(ServerMessage.error(code: code, message: message, ref: .string(subscriber.id), retryAfterMS: retryAfterMS))
        flushIfNeeded()
    }

    /// The machine's `end`: out of the fan-out, the feed released (a shared read drops the sharer on its next write).
    func drop(_ subscriber: Subscriber) {
        fanout.remove(subscriber)
        environment.hub.release(subscriber.feedID)
        if awaitingDelivery { releaseOutcomes() }
    }
}
