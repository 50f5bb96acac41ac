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
/// holds the others up at most that long per chunk.
final class SnapshotCoordinator: Sendable {
    private let batcher: NIOLockedValueBox<SnapshotBatcher<SnapshotSharer>>
    private let reader: any FeedReading
    private let epoch: String
    private let window: TimeAmount
    private let stall: TimeAmount
    private let chunkRows: Int
    private let chunkBytes: Int
    private let logger: Logger
    private let readsCounter = Counter(label: "syncline_snapshot_reads_total")
    private let sharersCounter = Counter(label: "syncline_snapshot_sharers_total")
    private let sharersRecorder = Recorder(label: "syncline_snapshot_sharers_per_read")
    private let counts = NIOLockedValueBox(SnapshotReadStats())

    var stats: SnapshotReadStats { counts.withLockedValue { $0 } }

    init(reader: any FeedReading, epoch: String, configuration: ServerConfiguration, logger: Logger) {
        self.reader = reader
        self.epoch = epoch
        let window = max(0, configuration.snapshotShareWindowMilliseconds)
        self.window = .milliseconds(Int64(window))
        self.stall = .milliseconds(Int64(max(1, configuration.snapshotShareStallMilliseconds)))
        self.chunkRows = configuration.snapshotChunkRows
        self.chunkBytes = configuration.snapshotChunkBytes
        self.logger = logger
        self.batcher = NIOLockedValueBox(SnapshotBatcher(concurrency: configuration.snapshotConcurrency, usesWindow: window > 0))
    }

    /// Queues `sharer` for a snapshot of `key`. It hears back on its loop: `sharedSnapshotStarted`
    /// … chunks … `sharedSnapshotDone`, or `sharedSnapshotFailed`.
    func request(_ key: FeedKey, _ sharer: SnapshotSharer) {
        let shareKey = SnapshotShareKey(feed: key, claims: SnapshotShareKey.normalizedClaims(sharer.claims))
        carryOut(batcher.withLockedValue { $0.enqueue(shareKey, sharer) }, timerLoop: sharer.loop)
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
                    await self.read(key, sharers)
                    self.carryOut(self.batcher.withLockedValue { $0.readFinished(id) }, timerLoop: timerLoop)
                }
            }
        }
    }

    /// One read for `sharers`; every one of them hears its outcome on its loop.
    private func read(_ key: SnapshotShareKey, _ sharers: [SnapshotSharer]) async {
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
                    let remaining = await self.deliver(to: kept) { sharer in
                        ByteBuffer(string: ServerMessage.subscribed(id: sharer.id, mode: sharer.mode, cursor: cursor))
                    }
                    sending.withLockedValue { $0 = remaining }
                    return !remaining.isEmpty
                },
                onChunk: { rows, done, position in
                    // Encoded once: every sharer's frame is its prefix plus these bytes.
                    let body = ByteBuffer(string: ServerMessage.snapshotBody(rows: rows, done: done, cursor: Cursor(epoch: epoch, position: position)))
                    let remaining = await self.deliver(to: sending.withLockedValue { $0 }, prefixed: body)
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
    private func deliver(to sharers: [SnapshotSharer], frame: @escaping @Sendable (SnapshotSharer) -> ByteBuffer) async -> [SnapshotSharer] {
        await deliverWrites(to: sharers) { sharer in
            sharer.connection.value.writeSharedSnapshot(prefix: nil, body: frame(sharer), for: sharer)
        }
    }

    private func deliver(to sharers: [SnapshotSharer], prefixed body: ByteBuffer) async -> [SnapshotSharer] {
        await deliverWrites(to: sharers) { sharer in
            sharer.connection.value.writeSharedSnapshot(prefix: sharer.prefix, body: body, for: sharer)
        }
    }

    private func deliverWrites(
        to sharers: [SnapshotSharer], write: @escaping @Sendable (SnapshotSharer) -> EventLoopFuture<Void>
    ) async -> [SnapshotSharer] {
        let stall = self.stall
        let outcomes: [EventLoopFuture<Delivery>] = sharers.map { sharer in
            let loop = sharer.loop
            return loop.flatSubmit {
                let promise = loop.makePromise(of: Delivery.self)
                let settled = NIOLoopBoundBox(false, eventLoop: loop)
                let timeout = loop.scheduleTask(in: stall) {
                    guard !settled.value else { return }
                    settled.value = true
                    promise.succeed(.tooSlow)
                }
                write(sharer).whenComplete { result in
                    guard !settled.value else { return }
                    settled.value = true
                    timeout.cancel()
                    switch result {
                    case .success: promise.succeed(.sent)
                    case .failure: promise.succeed(.gone)
                    }
                }
                return promise.futureResult
            }
        }
        var remaining: [SnapshotSharer] = []
        for (sharer, outcome) in zip(sharers, outcomes) {
            switch (try? await outcome.get()) ?? .gone {
            case .sent: remaining.append(sharer)
            case .gone: break
            case .tooSlow:
                sharer.loop.execute {
                    sharer.connection.value.close(.tooSlow, reason: "snapshot not read in time; subscribe again")
                }
            }
        }
        return remaining
    }
}
