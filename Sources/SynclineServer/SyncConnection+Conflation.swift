import Metrics
import NIOCore
import SynclineCore
import SynclineProtocol

/// One conflating subscriber's held changes (`"conflate": true`, protocol §3.8) and what it
/// needs to merge them: the feed's own subscription index (to see what a batch's records mean
/// for this feed, as the encoder did) and the timer that writes them once the queue drains.
/// Loop-bound, like its subscriber.
final class ConflatingDelivery {
    var pending = Conflation()
    /// Position of the oldest change held: an `ack` at or past it waits for the merged message.
    private(set) var oldest: Int64?
    private var index = SubscriptionIndex()
    private let feed: FeedID
    var drain: Scheduled<Void>?

    /// Changes that were merged away (not written), process-wide.
    static let conflatedChanges = Counter(label: "syncline_conflated_changes_total")
    /// How often a holding subscriber looks at its connection's queue when no batch comes.
    static let drainInterval: TimeAmount = .milliseconds(10)

    init(key: FeedKey) {
        feed = index.retain(key).id
    }

    var isHolding: Bool { pending.isHolding }

    /// Takes this feed's share of `records` (a batch, or nothing for an idle advance) and its
    /// cursor. False when the share cannot merge (a TRUNCATE): the caller restarts the feed.
    func take(_ records: [ChangeRecord], through: Int64) -> Bool {
        var mergeable = true
        for record in records {
            index.match(record) { id, effect in
                guard id == feed, mergeable else { return }
                if pending.add(record, effect) {
                    oldest = min(oldest ?? record.position, record.position)
                } else {
                    mergeable = false
                }
            }
        }
        pending.advance(through: through)
        return mergeable
    }

    /// Whether an `ack` at `position` must wait for the held changes.
    func holds(until position: Int64) -> Bool {
        oldest.map { $0 <= position } ?? false
    }

    /// Drops what is held (the feed restarts or ends) and stops the timer.
    func discard() {
        pending = Conflation()
        oldest = nil
        drain?.cancel()
        drain = nil
    }

    /// The merged message to write now; empties the held set.
    func takeMessage(epoch: String) -> (body: FeedBody, through: Int64)? {
        guard let taken = pending.take() else { return nil }
        oldest = nil
        let saved = taken.taken - taken.changes.count
        if saved > 0 { Self.conflatedChanges.increment(by: saved) }
        var body = FeedBody()
        body.changes = Conflation.body(taken.changes, epoch: epoch, through: taken.through)
        return (body, taken.through)
    }
}

/// Delivery to conflating subscribers. The exact path (`send`) is untouched: a subscriber whose
/// connection's outbound queue is under `conflateAfterBytes` and holds nothing gets the feed's
/// shared body as everyone else. Over it, the fan-out's deliveries are merged by key instead of
/// written, and go out as one `changes` (cursor: the newest merged batch's) when the queue is
/// back under the threshold: at the next batch or the next drain check.
extension SyncConnection {
    /// Bytes waiting to leave: the WebSocket layer's pending frames and the channel's queue.
    var outboundQueuedBytes: Int {
        guard let context else { return 0 }
        let channel = (try? context.channel.syncOptions?.getOption(.bufferedWritableBytes)) ?? 0
        return webSocket.pendingBytes + channel
    }

    /// The fan-out's delivery of a batch (`records`, or none for an idle advance) to a live
    /// conflating subscriber: written as is while nothing is held and the queue is short, merged
    /// otherwise.
    func deliverConflating(_ body: FeedBody, records: [ChangeRecord], to subscriber: Subscriber,
                           conflation: ConflatingDelivery, through: Int64) {
        guard !closing else { return }
        let threshold = environment.configuration.conflateAfterBytes
        if !conflation.isHolding && outboundQueuedBytes < threshold {
            return send(body, to: subscriber, through: through)
        }
        guard conflation.take(records, through: through) else {
            // A TRUNCATE (the fan-out restarts a feed whose body says so before it gets here):
            // never merged; the feed starts over from a snapshot.
            return carryOut(subscriber.machine.restart(.truncated), for: subscriber)
        }
        // What is held counts against the outbound limit as if it were queued: a client too slow
        // for its merged feed is closed with 4008 like any other.
        if conflation.pending.bytes + outboundQueuedBytes > environment.configuration.maximumOutboundBytes {
            conflation.discard()
            return close(.tooSlow, reason: "outbound queue full; resume from your cursor")
        }
        releaseConflated(subscriber, conflation)
    }

    /// Writes the held changes as one message when the queue is under the threshold; otherwise
    /// looks again after `drainInterval` (the fan-out's next batch may come first).
    func releaseConflated(_ subscriber: Subscriber, _ conflation: ConflatingDelivery) {
        guard !closing, owns(subscriber), subscriber.listed == .live, conflation.isHolding else {
            return conflation.discard()
        }
        guard outboundQueuedBytes < environment.configuration.conflateAfterBytes else {
            if conflation.drain == nil {
                let bound = NIOLoopBound((self, subscriber, conflation), eventLoop: eventLoop)
                conflation.drain = eventLoop.scheduleTask(in: ConflatingDelivery.drainInterval) {
                    let (connection, subscriber, conflation) = bound.value
                    conflation.drain = nil
                    connection.releaseConflated(subscriber, conflation)
                    connection.fanout.flush()
                }
            }
            return
        }
        conflation.drain?.cancel()
        conflation.drain = nil
        guard let (body, through) = conflation.takeMessage(epoch: fanout.encoder.epoch) else { return }
        send(body, to: subscriber, through: through)
        if awaitingDelivery { releaseOutcomes() }
    }
}
