import Logging
import NIOCore
import NIOEmbedded
import PostgresNIO
import SynclineCore
import SynclinePostgres
import SynclineProtocol
import SynclineWebSocket

/// The fan-out's cost without sockets, PostgreSQL or timing: a fixed sequence of one-row commits
/// goes through the real `Hub.dispatch` (match + encode once) and `LoopFanout.deliver` (prefix +
/// shared body per subscriber, through `SyncConnection` and `WebSocketProtocolHandler`, which
/// encodes the frames and writes them, coalesced, once per connection and batch) into
/// `EmbeddedChannel`s on one `EmbeddedEventLoop`. Everything is deterministic
/// (with `SWIFT_DETERMINISTIC_HASHING=1`), so an instruction count under callgrind, toggled on
/// `push` (both, per batch), is a stable cost-per-delivery figure (bench/README.md, "Fan-out cost").
///
/// The database clients in the environment are made but never run: nothing here reads Postgres.
public enum FanoutCostHarness {
    public struct Options: Sendable {
        /// Subscriber connections, one subscription each.
        public var subscribers = 1_000
        /// Feeds the subscribers are spread over round-robin (1: all on one feed, as `fanout-*`).
        public var feeds = 1
        /// One-row commits, each its own batch (the low-rate case: one frame per delivery).
        public var commits = 200
        /// Rows per commit (each on the next feed round-robin).
        public var rowsPerCommit = 1
        public init() {}
    }

    public struct Report: Sendable {
        public var deliveries: Int
        /// Bytes the WebSocket layer wrote (headers and payloads).
        public var bytes: Int
        /// WebSocket frames in those bytes.
        public var frames: Int
        /// Channel writes (buffers) that carried them.
        public var buffers: Int
    }

    /// Runs the sequence on the calling thread (the embedded loop is not thread-safe). No Swift
    /// concurrency: valgrind 3.19 crashes in its thread pool.
    public static func run(_ options: Options) throws -> Report {
        var logger = Logger(label: "syncline.fanout-cost")
        logger.logLevel = .critical
        let authenticator = Authenticator(unsignedOnly: ())
        let loop = EmbeddedEventLoop()
        var configuration = ServerConfiguration()
        configuration.maximumOutboundBytes = 1 << 30
        let hub = Hub(epoch: "cost", head: 0, configuration: configuration, group: loop, logger: logger)
        let postgres = PostgresClient.Configuration(host: "127.0.0.1", port: 1, username: "none", password: nil, database: nil, tls: .disable)
        let client = PostgresClient(configuration: postgres, backgroundLogger: logger)
        let connection = PostgresConnection.Configuration(host: "127.0.0.1", port: 1, username: "none", password: nil, database: nil, tls: .disable)
        let environment = SyncEnvironment(
            configuration: configuration, hub: hub,
            reader: FeedReader(client: client, catalog: CollectionCatalog(client: client, logger: logger), logger: logger),
            clients: ClientRegistry(client: client, logger: logger),
            mutations: MutationExecutor(connection: connection, logger: logger),
            authenticator: authenticator, logger: logger)

        let feeds = max(1, options.feeds)
        func key(_ feed: Int) -> FeedKey { .collection("transactions", filter: ["account_id": .string("cost-\(feed)")]) }
        var channels: [EmbeddedChannel] = []
        for n in 0..<options.subscribers {
            let channel = EmbeddedChannel(loop: loop)
            channel.isWritable = true
            let webSocket = WebSocketProtocolHandler(options: .init(configuration), deflate: nil)
            let sync = SyncConnection(environment: environment, headerIdentity: nil, webSocket: webSocket)
            try channel.pipeline.syncOperations.addHandlers([webSocket, sync])
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            sync.attachLiveForHarness(id: "s\(n)", key: key(n % feeds))
            channels.append(channel)
        }

        // An empty batch first: subscribers of a feed newer than the loop's last batch are young
        // until a batch of their generation, and would get the first commit encoded for each.
        guard hub.dispatch([], after: 0, through: 0) != nil else { throw HarnessError(message: "the hub refused the first batch") }
        loop.run()

        var position: Int64 = 0
        var row = 0
        var bytes = 0
        var frames = 0
        var buffers = 0
        for commit in 0..<options.commits {
            var records: [ChangeRecord] = []
            let after = position
            for _ in 0..<max(1, options.rowsPerCommit) {
                position += 1
                let account = "cost-\(row % feeds)"
                let id = "00000000-0000-0000-0000-\(String(100_000_000_000 + row))"
                records.append(ChangeRecord(
                    position: position, transaction: UInt64(commit + 1), operation: .insert, collection: "transactions",
                    topic: nil, key: #"{"id":"\#(id)"}"#, oldKey: nil,
                    row: #"{"id":"\#(id)","account_id":"\#(account)","amount":"1.00","memo":"bench","created_at":"2026-12-01T12:00:00.000000+00:00"}"#,
                    newMatch: ["account_id": .string(account)], oldMatch: nil))
                row += 1
            }
            guard push(records, after: after, through: position, hub: hub, loop: loop) else {
                throw HarnessError(message: "the hub refused batch \(commit)")
            }
            for channel in channels {
                while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
                    bytes += buffer.readableBytes
                    buffers += 1
                    frames += Self.countFrames(buffer)
                }
            }
        }
        for channel in channels { _ = try? channel.finish() }
        // One delivery = one subscriber sent one row: every row matches exactly one feed.
        let deliveries = options.commits * max(1, options.rowsPerCommit) * options.subscribers / feeds
        return Report(deliveries: deliveries, bytes: bytes, frames: frames, buffers: buffers)
    }

    /// Frames in a buffer of whole server frames (unmasked; RFC 6455 §5.2).
    static func countFrames(_ buffer: ByteBuffer) -> Int {
        var buffer = buffer
        var frames = 0
        while let _ = buffer.readInteger(as: UInt8.self), let second = buffer.readInteger(as: UInt8.self) {
            var length = Int(second & 0x7F)
            if length == 126 { length = Int(buffer.readInteger(as: UInt16.self) ?? 0) }
            if length == 127 { length = Int(buffer.readInteger(as: UInt64.self) ?? 0) }
            buffer.moveReaderIndex(forwardBy: min(length, buffer.readableBytes))
            frames += 1
        }
        return frames
    }

    /// One batch through the fan-out: `Hub.dispatch` (match, encode, hand to the loop) and the
    /// loop's `LoopFanout.deliver` (every subscriber's frame, one flush per connection). The one
    /// function callgrind toggles on (`--toggle-collect='*17FanoutCostHarnessO4push*'`): toggles
    /// on nested functions would switch counting off again inside.
    @inline(never)
    static func push(_ records: [ChangeRecord], after: Int64, through: Int64, hub: Hub, loop: EmbeddedEventLoop) -> Bool {
        guard hub.dispatch(records, after: after, through: through) != nil else { return false }
        loop.run()
        return true
    }

    struct HarnessError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }
}
