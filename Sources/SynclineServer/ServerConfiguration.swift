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
    /// Conflating subscriptions (`"conflate": true`): past this many bytes queued on their
    /// connection, their pending changes to one row key merge before they are written.
    public var conflateAfterBytes = 256 << 10
    /// Open WebSocket connections; more are refused with HTTP 503.
    public var maximumConnections = 50_000
    /// Subscriptions per connection.
    public var maximumSubscriptionsPerConnection = 100
    /// Client messages per second per connection (token bucket, burst = 2×).
    public var maximumMessagesPerSecond = 200
    /// WebSocket frames one connection may have decoded and handled per event-loop pass (each
    /// pass is also at most one socket read); the rest wait for the next pass, so a flooding
    /// connection cannot stall the others on its loop (docs/security.md, "Flood isolation").
    public var maximumFramesPerPass = 32
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
    /// A snapshot subscriber whose chunks have waited for its socket this long in all (counting
    /// each chunk's wait past 200 ms) is closed with 4008 and its read ends, freeing the
    /// transaction and pool connection; it resubscribes later (docs/security.md, "Snapshot stalls").
    public var snapshotStallTimeoutMilliseconds = 30_000
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
    /// On SIGTERM, how long `/readyz` fails while the node keeps serving, before the 1001 closes
    /// (two health-check intervals of the balancer, so it stops routing here first; 0: none).
    public var drainMilliseconds: Int64 = 4_000
    /// This node's name in `syncline.nodes` and in its canaries (nil: hostname:pid).
    public var nodeID: String?
    /// Canary period: each node publishes one through its own change log and times its own tail
    /// seeing it (0: no canary; readiness then follows the tail's connection alone).
    public var canaryIntervalMilliseconds: Int64 = 1_000
    /// Canary lag beyond which the node is late: `/readyz` fails, and the node closes its sockets
    /// with 1001 when another node is healthy (docs/metrics.md, docs/operations.md).
    public var canaryLateMilliseconds: Int64 = 5_000
    /// Event loop threads (default: one per core).
    public var eventLoopThreads = System.coreCount
    /// permessage-deflate (RFC 7692): off, shared (default) or context-takeover.
    public var webSocketCompression = WebSocketCompression()
    /// PEM certificate chain and private key: serve HTTPS/WSS instead of plain HTTP/WS.
    public var tlsCertificatePath: String?
    public var tlsKeyPath: String?
    /// What the node prunes and how often (`RetentionPolicy`; one node at a time across a deployment).
    public var retention = RetentionPolicy()

    // Limits per source address, per user and per connection (docs/security.md "Limits").
    /// Peers whose PROXY protocol v2 header and `X-Forwarded-For` name the client's address;
    /// nobody else's are believed. Empty: the TCP peer is the client.
    public var trustedProxies: [IPNetwork] = []
    /// `Origin`s a browser may upgrade from (exact `scheme://host[:port]`); another gets HTTP 403.
    /// nil accepts every origin. Requests without `Origin` (non-browser clients) are accepted.
    public var allowedOrigins: [String]?
    /// Open WebSocket connections per source address (IPv6: per /64); HTTP 429 above. 0: no limit.
    public var maximumConnectionsPerAddress = 1_000
    /// WebSocket upgrades per second per source address (token bucket of `upgradeBurstPerAddress`);
    /// HTTP 429 with `Retry-After` above. 0: no limit.
    public var upgradesPerSecondPerAddress: Double = 20
    public var upgradeBurstPerAddress = 100
    /// Authenticated sessions per `sub`; the next is closed with 1013 after `hello`. 0: no limit.
    public var maximumConnectionsPerUser = 100
    /// Inbound bytes per second per connection (token bucket of `inboundBurstBytes`); above it the
    /// server stops reading that socket until the bucket refills. 0: no limit.
    public var inboundBytesPerSecond = 512 << 10
    public var inboundBurstBytes = 2 << 20
    /// Largest `where` of a subscribe: its column names and JSON values, in bytes, and its terms
    /// (columns; the protocol allows at most 16). Above: `error bad_request`, the connection stays.
    public var maximumWhereBytes = 4_096
    public var maximumWhereTerms = 16
    /// Source addresses tracked at once (open connections or a bucket still refilling); past it new
    /// addresses get HTTP 429 until idle entries expire.
    public var maximumTrackedAddresses = 100_000

    public init() {}
}
