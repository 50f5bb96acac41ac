import NIOCore
import SynclinePostgres
import SynclineWebSocket

/// Everything a running server is told: where to listen, how to authenticate, and every limit.
/// Each limit has a safe default and a flag (see `syncline serve --help`).
public struct ServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// HS256 secret; `jwksJSON` adds RS256/ES256 public keys.
    public var jwtSecret: String?
    public var jwksJSON: String?
    /// The JWKS file: read at start when `jwksJSON` is nil, and again on every SIGHUP (a file that
    /// does not load keeps the previous keys).
    public var jwksFilePath: String?
    /// Clock skew tolerated on `exp`/`nbf`, in seconds; a session also stays open this long past
    /// its token's `exp`.
    public var jwtLeewaySeconds: Double = 60
    /// When set, tokens must name this audience in `aud` (a string or an array).
    public var jwtAudience: String?
    /// When set, tokens must carry this `iss`.
    public var jwtIssuer: String?
    /// Accept unsigned (`alg: none`) tokens. Development only; never implied.
    public var insecureDevAuth = false
    /// Serve the dashboard at `/` (its service worker at `/sw.js`) and mint demo tokens at
    /// `/demo/token`.
    public var demo = false
    /// A folder whose regular files are served at `/app/<path>` (development and tests).
    public var staticDirectory: String?
    /// Largest file served from `staticDirectory`.
    public var staticMaximumFileBytes = 16 << 20

    /// Largest client message after reassembly (bytes); bigger closes with 1009.
    public var maximumMessageBytes = 1 << 20
    /// Outbound bytes queued on one connection before it is closed with 4008 (it resumes).
    public var maximumOutboundBytes = 4 << 20
    /// Open WebSocket connections; more are refused with HTTP 503.
    public var maximumConnections = 50_000
    /// Subscriptions per connection.
    public var maximumSubscriptionsPerConnection = 100
    /// Client messages per second per connection (token bucket, burst = 2×).
    public var maximumMessagesPerSecond = 200
    /// Server ping period; a connection silent for two periods is closed.
    public var heartbeatMilliseconds: Int64 = 15_000
    /// Snapshot chunking.
    public var snapshotChunkRows = 500
    public var snapshotChunkBytes = 256 << 10
    /// Concurrent snapshot/catch-up reads (the size of their connection pool); also the number of
    /// shared snapshot reads in flight at once.
    public var snapshotConcurrency = 4
    /// Shared snapshots: subscribes to one feed under the same claims (but for `exp`/`iat`/`nbf`/
    /// `jti`) that arrive within this window share one snapshot read (0: no wait; subscribes that
    /// queue behind busy reads still share).
    public var snapshotShareWindowMilliseconds = 10
    /// A sharer whose snapshot chunk has not reached its socket after this long is closed with
    /// 4008, so that one slow reader cannot hold up the others of its read.
    public var snapshotShareStallMilliseconds = 10_000
    /// Recent changes kept in memory to serve catch-ups without reading Postgres.
    public var ringCapacity = 20_000
    /// Change-log records read per page when cursors older than the ring catch up (one scan per
    /// event loop serves all of them).
    public var catchUpPageRecords = 1_000
    /// A feed's share of one batch above this restarts the feed (protocol §2).
    public var maximumFeedBatchBytes = 8 << 20
    /// Mutations one connection may have in flight (sent, not yet answered); more get
    /// `error rate_limited`.
    public var maximumMutationsInFlight = 256
    /// The group-commit executor: batch size and bytes, lanes, time limits, queue bound, role.
    public var mutations = MutationExecutor.Configuration()
    /// How long shutdown waits for connections to close after sending 1001.
    public var shutdownGrace: TimeAmount = .seconds(5)
    /// Event loop threads (default: one per core).
    public var eventLoopThreads = System.coreCount
    /// permessage-deflate (RFC 7692): off, shared (default) or context-takeover.
    public var webSocketCompression = WebSocketCompression()
    /// PEM certificate chain and private key: serve HTTPS/WSS instead of plain HTTP/WS.
    public var tlsCertificatePath: String?
    public var tlsKeyPath: String?

    public init() {}
}
