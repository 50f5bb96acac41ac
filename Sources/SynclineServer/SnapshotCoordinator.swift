import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import SynclineCore
import SynclinePostgres
import SynclineProtocol
import Tracing

/// One subscriber waiting for, or in, a shared snapshot read: which connection and subscription
/// (on their loop), the machine's run the read is for, and the claims its policy is checked with.
struct SnapshotSharer: Sendable {
    let connection: NIOLoopBound<SyncConnection>
    let subscriber: NIOLoopBound<Subscriber>
    let loop: any EventLoop
    let run: UInt32
    let mode: ServerMessage.SubscribeMode
    let id: String
    let claims: String
    /// Whose read it is (the token's `sub`): one user has at most one read in flight.
    let user: String
    /// Time this sharer's chunks have waited for its socket, past `parkAfter` each (the stall
    /// timeout's budget).
    var stalled: TimeAmount = .zero
    /// `{"type":"snapshot","sub":"<id>",`: the only per-subscriber bytes of a snapshot chunk.
    let prefix: ByteBuffer
}

/// Snapshot reads since start, and the subscribers they served (sharers / reads = sharers per read).
public struct SnapshotReadStats: Sendable, Hashable {
    public var reads = 0
    public var sharers = 0
    public init(reads: Int = 0, sharers: Int = 0) {
        self.reads = reads
        self.sharers = sharers
    }
}

/// Shared snapshots (ADR 0008): subscribes to one feed under the same claims (but for
/// `exp`/`iat`/`nbf`/`jti`) that arrive within `window` share one snapshot read at one position,
/// whose chunks are encoded once and written to each sharer. Every sharer's policy is checked with
/// its own claims in the read's transaction; refused ones end with `forbidden`. Reads run at most
/// `concurrency` at once (`SnapshotBatcher` decides; this class carries its actions out).
///
/// A read is paced by its sharers' sockets, chunk by chunk; a sharer whose chunk has not reached
/// its socket within `stall` is closed with 4008 (as the outbound limit does), so one slow reader
/// holds the others up at most that long per chunk. Snapshots cannot be held hostage
/// (docs/security.md, "Snapshot stalls"): a chunk still waiting after `parkAfter` parks its read
/// (it stops counting against the concurrency, see `SnapshotBatcher.readStalled`; the pool has a
/// connection for every parked read), the waits past `parkAfter` add up per sharer, and a sharer
/// past `stallTimeout` in all is closed with 4008 (it resubscribes or resumes later), which ends
/// the read and frees its transaction once nobody is left. One user has one read in flight.
final class SnapshotCoordinator: Sendable {
    private let batcher: NIOLockedValueBox<SnapshotBatcher<SnapshotSharer>>
    private let reader: any FeedReading
    private let epoch: String
    private let window: TimeAmount
    private let stall: TimeAmount
    private let stallTimeout: TimeAmount
    /// How long a chunk may wait for its sockets before its read parks and the wait counts
    /// towards `stallTimeout`.
    static let parkAfter: TimeAmount = .milliseconds(200)
    private let chunkRows: Int
    private let chunkBytes: Int
    private let logger: Logger
    private let readsCounter = Counter(label: "syncline_snapshot_reads_total")
    private let sharersCounter = Counter(label: "syncline_snapshot_sharers_total")
    private let sharersRecorder = Recorder(label: "syncline_snapshot_sharers_per_read")
    private let parkedCounter = Counter(label: "syncline_snapshot_reads_parked_total")
    private let stallClosesCounter = Counter(label: "syncline_snapshot_stall_closes_total")
    private let counts = NIOLockedValueBox(SnapshotReadStats())

    var stats: SnapshotReadStats { counts.withLockedValue { $0 } }

    init(reader: any FeedReading, epoch: String, configuration: ServerConfiguration, logger: Logger) {
        self.reader = reader
        self.epoch = epoch
        let window = max(0, configuration.snapshotShareWindowMilliseconds)
        self.window = .milliseconds(Int64(window))
        self.stall = .milliseconds(Int64(max(1, configuration.snapshotShareStallMilliseconds)))
        self.stallTimeout = .milliseconds(Int64(max(1, configuration.snapshotStallTimeoutMilliseconds)))
        self.chunkRows = configuration.snapshotChunkRows
        self.chunkBytes = configuration.snapshotChunkBytes
        self.logger = logger
        self.batcher = NIOLockedValueBox(SnapshotBatcher(
            concurrency: configuration.snapshotConcurrency, usesWindow: window > 0,
            readsPerUser: 1, maximumStalledReads: configuration.snapshotConcurrency))
    }

    /// Queues `sharer` for a snapshot of `key`. It hears back on its loop: `sharedSnapshotStarted`
    /// … chunks … `sharedSnapshotDone`, or `sharedSnapshotFailed`.
    func request(_ key: FeedKey, _ sharer: SnapshotSharer) {
        let shareKey = SnapshotShareKey(feed: key, claims: SnapshotShareKey.normalizedClaims(sharer.claims))
        carryOut(batcher.withLockedValue { $0.enqueue(shareKey, sharer, user: sharer.user) }, timerLoop: sharer.loop)
    }

    private func carryOut(_ actions: [SnapshotBatcher<SnapshotSharer>.Action], timerLoop: any EventLoop) {
        for action in actions {
            switch action {
            case .openWindow(let key):
                timerLoop.scheduleTask(in: window) {
                    self.carryOut(self.batcher.withLockedValue { $0.windowClosed(key) }, timerLoop: timerLoop)
                }
            case .startRead(let id, let key, let sharers):
                Task {
                    await self.read(id, key, sharers, timerLoop: timerLoop)
                    self.carryOut(self.batcher.withLockedValue { $0.readFinished(id) }, timerLoop: timerLoop)
                }
            }
        }
    }

    /// One read for `sharers`; every one of them hears its outcome on its loop.
    private func read(_ id: SnapshotBatcher<SnapshotSharer>.ReadID, _ key: SnapshotShareKey, _ sharers: [SnapshotSharer],
                      timerLoop: any EventLoop) async {
        let parking = Parking(id: id, coordinator: self, timerLoop: timerLoop)
        readsCounter.increment()
        sharersCounter.increment(by: sharers.count)
        sharersRecorder.record(sharers.count)
        counts.withLockedValue {
            $0.reads += 1
            $0.sharers += sharers.count
        }
        // Those still sent to: refused, gone or too slow ones leave.
        let sending = NIOLockedValueBox(sharers)
        let epoch = self.epoch
        let span = startSpan(RequestSpans.snapshot, ofKind: .internal)
        if span.isRecording {
            span.attributes["syncline.feed"] = key.feed.description
            span.attributes["syncline.sharers"] = sharers.count
            span.attributes["syncline.subscriptions"] = sharers.map(\.id)
        }
        do {
            let position = try await reader.sharedSnapshot(
                key.feed, claims: sharers.map(\.claims), chunkRows: chunkRows, chunkBytes: chunkBytes,
                onAuthorized: { allowed, position in
                    var kept: [SnapshotSharer] = []
                    for (sharer, ok) in zip(sharers, allowed) {
                        if ok {
                            kept.append(sharer)
                        } else {
                            sharer.loop.execute { sharer.connection.value.sharedSnapshotDone(sharer, position: nil) }
                        }
                    }
                    let cursor = Cursor(epoch: epoch, position: position)
                    let remaining = await self.deliver(to: kept, parking: parking) { sharer in
                        ByteBuffer(string: ServerMessage.subscribed(id: sharer.id, mode: sharer.mode, cursor: cursor))
                    }
                    sending.withLockedValue { $0 = remaining }
                    return !remaining.isEmpty
                },
                onChunk: { rows, done, position in
                    // Encoded once: every sharer's frame is its prefix plus these bytes.
                    let body = ByteBuffer(string: ServerMessage.snapshotBody(rows: rows, done: done, cursor: Cursor(epoch: epoch, position: position)))
                    let remaining = await self.deliver(to: sending.withLockedValue { $0 }, prefixed: body, parking: parking)
                    sending.withLockedValue { $0 = remaining }
                    return !remaining.isEmpty
                })
            for sharer in sending.withLockedValue({ $0 }) {
                sharer.loop.execute { sharer.connection.value.sharedSnapshotDone(sharer, position: position) }
            }
            if span.isRecording { span.attributes["syncline.position"] = Int(truncatingIfNeeded: position) }
            RequestSpans.end(span, outcome: "done")
        } catch {
            let (code, message, retry) = SyncConnection.describe(error, logger: logger)
            RequestSpans.end(span, outcome: "error", failure: code.rawValue)
            for sharer in sending.withLockedValue({ $0 }) {
                sharer.loop.execute {
                    sharer.connection.value.sharedSnapshotFailed(sharer, code: code, message: message, retryAfterMS: retry)
                }
            }
        }
    }

    private enum Delivery {
        case sent
        /// Unsubscribed, restarted or closed meanwhile: nothing more for it.
        case gone
        case tooSlow
    }

    /// Writes each sharer's own frame and waits until every one reached its socket (or left, or
    /// stalled past `stall`). Returns those still sent to.
    private func deliver(to sharers: [SnapshotSharer], parking: Parking,
                         frame: @escaping @Sendable (SnapshotSharer) -> ByteBuffer) async -> [SnapshotSharer] {
        await deliverWrites(to: sharers, parking: parking) { sharer in
            sharer.connection.value.writeSharedSnapshot(prefix: nil, body: frame(sharer), for: sharer)
        }
    }

    private func deliver(to sharers: [SnapshotSharer], prefixed body: ByteBuffer, parking: Parking) async -> [SnapshotSharer] {
        await deliverWrites(to: sharers, parking: parking) { sharer in
            sharer.connection.value.writeSharedSnapshot(prefix: sharer.prefix, body: body, for: sharer)
        }
    }

    /// A read's side of parking: while one of its chunks waits past `parkAfter`, the batcher
    /// may let another read start.
    private final class Parking: Sendable {
        let id: SnapshotBatcher<SnapshotSharer>.ReadID
        let coordinator: SnapshotCoordinator
        let timerLoop: any EventLoop
        let parked = NIOLockedValueBox(false)

        init(id: SnapshotBatcher<SnapshotSharer>.ReadID, coordinator: SnapshotCoordinator, timerLoop: any EventLoop) {
            self.id = id
            self.coordinator = coordinator
            self.timerLoop = timerLoop
        }

        func park() {
            let (didPark, actions) = coordinator.batcher.withLockedValue { $0.readStalled(id) }
            guard didPark else { return }
            parked.withLockedValue { $0 = true }
            coordinator.parkedCounter.increment()
            coordinator.carryOut(actions, timerLoop: timerLoop)
        }

        func unpark() {
            guard parked.withLockedValue({ let was = $0; $0 = false; return was }) else { return }
            coordinator.batcher.withLockedValue { $0.readResumed(id) }
        }
    }

    private func deliverWrites(
        to sharers: [SnapshotSharer], parking: Parking, write: @escaping @Sendable (SnapshotSharer) -> EventLoopFuture<Void>
    ) async -> [SnapshotSharer] {
        let stall = self.stall
        let stallTimeout = self.stallTimeout
        let parkAfter = Self.parkAfter
        let outcomes: [EventLoopFuture<(Delivery, TimeAmount)>] = sharers.map { sharer in
            let loop = sharer.loop
            // This chunk may wait up to the per-chunk limit, and past `parkAfter` only as long as
            // the sharer's stall budget lasts.
            let budget = stallTimeout - sharer.stalled
            let limit = budget <= .zero ? parkAfter : min(stall, parkAfter + budget)
            return loop.flatSubmit {
                let promise = loop.makePromise(of: (Delivery, TimeAmount).self)
                let settled = NIOLoopBoundBox(false, eventLoop: loop)
                let started = NIODeadline.now()
                let timeout = loop.scheduleTask(in: limit) {
                    guard !settled.value else { return }
                    settled.value = true
                    promise.succeed((.tooSlow, limit))
                }
                write(sharer).whenComplete { result in
                    guard !settled.value else { return }
                    settled.value = true
                    timeout.cancel()
                    switch result {
                    case .success: promise.succeed((.sent, NIODeadline.now() - started))
                    case .failure: promise.succeed((.gone, .zero))
                    }
                }
                return promise.futureResult
            }
        }
        let parkTimer = parking.timerLoop.scheduleTask(in: parkAfter) { parking.park() }
        var remaining: [SnapshotSharer] = []
        for (sharer, outcome) in zip(sharers, outcomes) {
            switch (try? await outcome.get()) ?? (.gone, .zero) {
            case (.sent, let waited):
                var sharer = sharer
                if waited > parkAfter { sharer.stalled = sharer.stalled + (waited - parkAfter) }
                remaining.append(sharer)
            case (.gone, _): break
            case (.tooSlow, _):
                stallClosesCounter.increment()
                sharer.loop.execute {
                    sharer.connection.value.close(.tooSlow, reason: "snapshot not read in time; subscribe again")
                }
            }
        }
        parkTimer.cancel()
        parking.unpark()
        return remaining
    }
}
