import NIOCore
import SynclineCore
import SynclineProtocol

/// The connection's side of shared snapshots (`SnapshotCoordinator`): it queues a subscription
/// for a read, writes what the read sends it, and reports the outcome to the subscription's
/// machine, which stays the only writer of the subscription's state.
extension SyncConnection {
    /// The machine's `startSnapshot` or `restart` for run `run`: queue for a (shared) read.
    func requestSnapshot(_ subscriber: Subscriber, mode: ServerMessage.SubscribeMode, run: UInt32) {
        guard let identity, !closing else { return }
        let loop = context.eventLoop
        let sharer = SnapshotSharer(
            connection: bound, subscriber: NIOLoopBound(subscriber, eventLoop: loop), loop: loop, run: run, mode: mode,
            id: subscriber.id, claims: identity.claims, user: identity.sub,
            prefix: ByteBuffer(string: ServerMessage.snapshotPrefix(sub: subscriber.id)))
        environment.snapshots.request(subscriber.key, sharer)
    }

    /// Writes one frame of a shared read (`prefix` + `body`; `body` is shared by every sharer) and
    /// flushes it; the future completes when it reached the socket, pacing the read. Fails when
    /// the subscription has ended or restarted meanwhile: after `unsubscribed`, nothing more is
    /// sent for it.
    func writeSharedSnapshot(prefix: ByteBuffer?, body: ByteBuffer, for sharer: SnapshotSharer) -> EventLoopFuture<Void> {
        let subscriber = sharer.subscriber.value
        guard !closing, context != nil, subscribers[subscriber.id] === subscriber,
              subscriber.machine.state == .snapshotting, subscriber.machine.run == sharer.run else {
            return eventLoop.makeFailedFuture(Abandoned())
        }
        let promise = eventLoop.makePromise(of: Void.self)
        webSocket.sendText(prefix: prefix ?? ByteBuffer(), body: body, promise: promise)
        webSocket.flush()
        return promise.futureResult
    }

    /// The read has sent everything through `position` (nil: this sharer's policy refused).
    func sharedSnapshotDone(_ sharer: SnapshotSharer, position: Int64?) {
        let subscriber = sharer.subscriber.value
        guard owns(subscriber) else { return }
        carryOut(subscriber.machine.snapshotDone(run: sharer.run, position: position, loop: fanout.position), for: subscriber)
        flushIfNeeded()  // the live marker, when the feed went live at once
    }

    /// The read failed: the subscription ends with the error (the client may subscribe again).
    func sharedSnapshotFailed(_ sharer: SnapshotSharer, code: ErrorCode, message: String, retryAfterMS: Int?) {
        let subscriber = sharer.subscriber.value
        guard owns(subscriber), subscriber.machine.state == .snapshotting, subscriber.machine.run == sharer.run else { return }
        endSubscription(subscriber, code: code, message: message, retryAfterMS: retryAfterMS)
    }
}
