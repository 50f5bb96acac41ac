import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import SynclineCore
import SynclineProtocol
import SynclinePostgres

/// The fan-out: turns the tail's batches into frames for every subscriber.
///
/// Each batch is matched once through the subscription index and each matched feed's body is
/// encoded once (under the hub's lock, which also orders it against new feeds). Then one task per
/// event loop delivers it: every subscriber's frame is its cached prefix plus the shared body, and
/// each touched connection is flushed once per batch. No per-subscriber encoding, task or actor hop.
public final class Hub: Sendable {
    struct State: Sendable {
        var index = SubscriptionIndex()
        /// Bumped on every retain; a batch carries the generation it was encoded with.
        var generation: UInt64 = 0
        var ring: ChangeRing
        var head: Int64
    }

    /// The cursor epoch of the database this node serves.
    public let epoch: String
    let encoder: FeedBatchEncoder
    private let state: NIOLockedValueBox<State>
    private let fanouts: [ObjectIdentifier: NIOLoopBoundBox<LoopFanout>]
    private let listeningBox = NIOLockedValueBox(false)
    let logger: Logger
    private let batchesCounter = Counter(label: "syncline_batches_total")
    private let changesCounter = Counter(label: "syncline_changes_total")
    private let feedsGauge = Gauge(label: "syncline_feeds")
    /// Policy re-checks: holds, their reader, counters (PolicyRecheck.swift).
    let policy = PolicyRecheck()

    init(epoch: String, head: Int64, configuration: ServerConfiguration, group: any EventLoopGroup, logger: Logger) {
        self.epoch = epoch
        self.encoder = FeedBatchEncoder(epoch: epoch, maximumFeedBytes: configuration.maximumFeedBatchBytes)
        self.state = NIOLockedValueBox(State(ring: ChangeRing(position: head, capacity: configuration.ringCapacity), head: head))
        self.logger = logger
        var fanouts: [ObjectIdentifier: NIOLoopBoundBox<LoopFanout>] = [:]
        for loop in group.makeIterator() {
            fanouts[ObjectIdentifier(loop)] = NIOLoopBoundBox.makeBoxSendingValue(LoopFanout(eventLoop: loop, head: head, encoder: encoder), eventLoop: loop)
        }
        self.fanouts = fanouts
    }

    /// The fan-out of `loop`; call only on that loop.
    func fanout(on loop: any EventLoop) -> LoopFanout {
        fanouts[ObjectIdentifier(loop)]!.value
    }

    /// Every event loop with a fan-out, in a fixed order.
    var loops: [any EventLoop] { fanouts.values.map(\.eventLoop) }

    /// Policy re-checks run on `reader` (the server's main pool) rather than the snapshot pool.
    public func usePolicyReader(_ reader: FeedReader) { policy.use(reader) }

    /// Whether the tail's LISTEN connection is up (readiness).
    public var isListening: Bool { listeningBox.withLockedValue { $0 } }

    /// The newest position dispatched to the loops.
    public var head: Int64 { state.withLockedValue { $0.head } }

    /// Adds a subscriber's reference to the feed for `key`.
    func retain(_ key: FeedKey) -> (FeedID, UInt64) {
        let (id, generation, feeds) = state.withLockedValue { s -> (FeedID, UInt64, Int) in
            let id = s.index.retain(key).id
            s.generation += 1
            return (id, s.generation, s.index.feedCount)
        }
        feedsGauge.record(feeds)
        return (id, generation)
    }

    func release(_ id: FeedID) {
        let feeds = state.withLockedValue { s -> Int in
            s.index.release(id)
            return s.index.feedCount
        }
        feedsGauge.record(feeds)
    }

    /// The ring's batches covering (`max(after, complete)`, `through`] without copying records
    /// (the lock is held only to take references), with `complete`: the position from which the
    /// ring holds everything. Nil when the ring does not reach `through`.
    func recentBatches(after: Int64, through: Int64) -> (after: Int64, batches: [[ChangeRecord]])? {
        state.withLockedValue { $0.ring.batches(after: after, through: through) }
    }

    /// The ring holds every position after this one (through the head).
    var ringStart: Int64 { state.withLockedValue { $0.ring.after } }

    /// Encodes a batch once and hands it to every loop's fan-out, under the lock so that loops
    /// receive batches in position order; nil when it does not continue the hub's position.
    /// Kept out of line: the in-process cost harness (`FanoutCostHarness`) counts its instructions.
    @inline(never)
    func dispatch(_ records: [ChangeRecord], after: Int64, through: Int64) -> [EventLoopFuture<Void>]? {
        state.withLockedValue { s -> [EventLoopFuture<Void>]? in
            guard s.head == after else { return nil }
            s.ring.append(records, through: through)
            s.head = through
            let batch = encoder.encode(records, after: after, through: through, index: s.index)
            let generation = s.generation
            return fanouts.values.map { fanout in
                fanout.eventLoop.submit { fanout.value.deliver(batch, generation: generation) }
            }
        }
    }

    /// The tail's sink: called in order on the tail's task; returns when every event loop has
    /// delivered (and flushed) the batch.
    @discardableResult
    func handle(_ event: ChangeTailEvent) async -> Int64 {
        switch event {
        case .listening(let up):
            listeningBox.withLockedValue { $0 = up }
            return head
        case .changes(let records, let after, let through):
            // A commit that changed what a feed policy reads: the feeds it maps are held on every
            // loop before the batch goes out, and released (or revoked) once re-checked, while
            // everyone else gets this batch and the next at once (PolicyRecheck.swift).
            let policyChanges = PolicyChange.all(in: records)
            if !policyChanges.isEmpty, head == after {
                await holdForPolicy(policyChanges)
            }
            // Accept a batch only where the previous one ended (a reader abandoned with a dead
            // connection can never deliver twice or out of order), and hand it to the loops under
            // the same lock so they receive batches in position order.
            guard let delivered = dispatch(records, after: after, through: through) else {
                logger.debug("ignoring a batch that does not continue the hub's position", metadata: ["after": "\(after)"])
                return head
            }
            batchesCounter.increment()
            changesCounter.increment(by: records.count)
            if let first = delivered.first {
                try? await EventLoopFuture.andAllComplete(delivered, on: first.eventLoop).get()
            }
            return through
        case .gap(_, let prunedThrough):
            state.withLockedValue { s in
                s.ring.reset(to: prunedThrough)
                s.head = prunedThrough
            }
            for fanout in fanouts.values {
                fanout.eventLoop.execute { fanout.value.restartAll(head: prunedThrough) }
            }
            return prunedThrough
        }
    }
}
