import ArgumentParser
import Foundation
import Logging
import Metrics
import Prometheus
import SynclineServer
import SynclineWebSocket

@main
struct Syncline: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "syncline",
        abstract: "A real-time sync server: Postgres change feeds over WebSocket.",
        subcommands: [Serve.self, Migrate.self, Tail.self],
        defaultSubcommand: Serve.self)
}

/// Where the project's SQL lives: next to the working directory, else next to the sources this
/// binary was built from (so `swift run` works from any folder of the checkout).
enum ProjectPaths {
    static var root: String {
        let cwd = FileManager.default.currentDirectoryPath
        if FileManager.default.fileExists(atPath: cwd + "/migrations") { return cwd }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }
}

struct DatabaseOptions: ParsableArguments {
    @Option(name: .customLong("database-url"), help: "Postgres URL (env DATABASE_URL). Without it a private cluster is started under --dev-data-dir.")
    var databaseURL: String? = ProcessInfo.processInfo.environment["DATABASE_URL"]

    @Option(name: .customLong("dev-data-dir"), help: "Folder of the private development cluster.")
    var devDataDir = ".syncline"

    @Option(name: .customLong("migrations-dir"), help: "Folder of the migration files.")
    var migrationsDir = ProjectPaths.root + "/migrations"

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical (env SYNCLINE_LOG_LEVEL).")
    var logLevel = ProcessInfo.processInfo.environment["SYNCLINE_LOG_LEVEL"] ?? "info"

    @Option(name: .customLong("log-format"), help: "text, or json: one JSON object per line (env SYNCLINE_LOG_FORMAT).")
    var logFormat = ProcessInfo.processInfo.environment["SYNCLINE_LOG_FORMAT"] ?? "text"

    func validate() throws {
        guard ["text", "json"].contains(logFormat) else { throw ValidationError("--log-format must be text or json") }
    }

    func logger() -> Logger {
        // Once per process (each command calls this once): every logger, the libraries' too.
        if logFormat == "json" {
            LoggingSystem.bootstrap({ label, provider in JSONLogHandler(label: label, metadataProvider: provider) }, metadataProvider: nil)
        }
        var logger = Logger(label: "syncline")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        return logger
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve /v1/sync and the HTTP routes.",
        discussion: "With --database-url, serve runs no DDL: run `syncline migrate` first (as the schema owner). "
            + "The private development cluster and --demo set themselves up.")

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Address to listen on (env SYNCLINE_HOST).")
    var host = ProcessInfo.processInfo.environment["SYNCLINE_HOST"] ?? "127.0.0.1"

    @Option(help: "Port to listen on; 0 picks a free one (env SYNCLINE_PORT).")
    var port = Int(ProcessInfo.processInfo.environment["SYNCLINE_PORT"] ?? "") ?? 8080

    @Option(name: .customLong("jwt-secret"), help: "HS256 secret, at least 32 bytes (env SYNCLINE_JWT_SECRET).")
    var jwtSecret: String? = ProcessInfo.processInfo.environment["SYNCLINE_JWT_SECRET"]

    @Option(name: .customLong("jwks-file"), help: "JWKS file with RS256/ES256 public keys, re-read on SIGHUP (env SYNCLINE_JWKS_FILE).")
    var jwksFile: String? = ProcessInfo.processInfo.environment["SYNCLINE_JWKS_FILE"]

    @Option(name: .customLong("jwt-leeway-seconds"), help: "Clock skew tolerated on a token's exp and nbf (0–3600).")
    var jwtLeewaySeconds: Double = 60

    @Option(name: .customLong("jwt-audience"), help: "Refuse tokens whose aud does not include this (env SYNCLINE_JWT_AUDIENCE).")
    var jwtAudience: String?

    @Option(name: .customLong("jwt-issuer"), help: "Refuse tokens whose iss is not this (env SYNCLINE_JWT_ISSUER).")
    var jwtIssuer: String?

    @Flag(name: .customLong("insecure-dev-auth"), help: "Accept unsigned development tokens. Never in production.")
    var insecureDevAuth = false

    @Flag(help: "Load the demo schema and seed data, run its generator and serve the live dashboard at /.")
    var demo = false

    @Flag(name: .customLong("no-demo-generator"), help: "With --demo: do not insert a transaction every second.")
    var noDemoGenerator = false

    @Option(name: .customLong("static-dir"), help: "Serve the regular files of this folder at /app/<path> (development; no dotfiles, nothing outside it).")
    var staticDir: String?

    @Option(name: .customLong("static-max-file-bytes"), help: "Largest file served from --static-dir.")
    var staticMaxFileBytes = 16 << 20

    @Option(name: .customLong("max-message-bytes"), help: "Largest client message (1009 above).")
    var maxMessageBytes = 1 << 20

    @Option(name: .customLong("max-outbound-bytes"), help: "Outbound queue per connection before closing it with 4008.")
    var maxOutboundBytes = 4 << 20

    @Option(name: .customLong("conflate-after-bytes"),
            help: "Subscriptions with \"conflate\": true merge pending changes by row key once this much is queued on their connection.")
    var conflateAfterBytes = 256 << 10

    @Option(name: .customLong("max-connections"), help: "Concurrent WebSocket connections (HTTP 503 above).")
    var maxConnections = 50_000

    @Option(name: .customLong("max-subscriptions"), help: "Subscriptions per connection.")
    var maxSubscriptions = 100

    @Option(name: .customLong("max-messages-per-second"), help: "Client messages per second per connection.")
    var maxMessagesPerSecond = 200

    @Option(name: .customLong("max-frames-per-pass"), help: "WebSocket frames one connection has handled per event-loop pass; the rest wait for the next (flood isolation).")
    var maxFramesPerPass = 32

    @Option(name: .customLong("heartbeat-ms"), help: "WebSocket ping period; silent for two periods closes.")
    var heartbeatMS: Int64 = 15_000

    @Option(name: .customLong("snapshot-concurrency"), help: "Concurrent snapshot and catch-up reads.")
    var snapshotConcurrency = 4

    @Option(name: .customLong("snapshot-share-window-ms"),
            help: "Subscribes to one feed (same claims) arriving within this window share one snapshot read (0: no wait).")
    var snapshotShareWindowMS = 10

    @Option(name: .customLong("snapshot-share-stall-ms"),
            help: "A shared snapshot's reader whose chunk has not reached its socket after this long is closed with 4008.")
    var snapshotShareStallMS = 10_000

    @Option(name: .customLong("snapshot-stall-timeout"),
            help: "Seconds a snapshot subscriber's socket may keep its read waiting in all (each chunk's wait past 200 ms) before it is closed with 4008 and the read ends.")
    var snapshotStallTimeout: Double = 30

    @Option(name: .customLong("ring-capacity"), help: "Recent changes kept in memory for catch-ups.")
    var ringCapacity = 20_000

    @Option(name: .customLong("catch-up-page-records"),
            help: "Change-log records per page when cursors older than the ring catch up.")
    var catchUpPageRecords = 1_000

    @Option(name: .customLong("event-loop-threads"), help: "Event loop threads (default: cores).")
    var eventLoopThreads = ProcessInfo.processInfo.activeProcessorCount

    @Option(name: .customLong("max-mutations-in-flight"), help: "Mutations in flight per connection (rate_limited above).")
    var maxMutationsInFlight = 256

    @Option(name: .customLong("mutation-batch-size"), help: "Mutations per group commit, 1–63; 1 turns batching off.")
    var mutationBatchSize = 50

    @Option(name: .customLong("mutation-batch-wait-us"), help: "How long a batch that is not full waits for more mutations (0: run at once with what queued during the previous commit).")
    var mutationBatchWaitMicroseconds = 0

    @Option(name: .customLong("mutation-lanes"), help: "Group-commit lanes (Postgres connections running batches).")
    var mutationLanes = 2

    @Option(name: .customLong("mutation-timeout-ms"), help: "Time limit of one mutation (reject timeout above).")
    var mutationTimeoutMS = 2_000

    @Option(name: .customLong("mutation-batch-timeout-ms"), help: "Time limit of one batch; past it members re-run one by one.")
    var mutationBatchTimeoutMS = 5_000

    @Option(name: .customLong("max-queued-mutations"), help: "Mutations queued on this node (unavailable above).")
    var maxQueuedMutations = 10_000

    @Option(name: .customLong("mutation-role"), help: "Postgres role mutators run as, so row-level security applies; empty = the login role.")
    var mutationRole = "syncline_writer"
    @Option(name: .customLong("tls-cert"), help: "PEM certificate chain: serve https/wss (with --tls-key).")
    var tlsCert: String?

    @Option(name: .customLong("tls-key"), help: "PEM private key of --tls-cert.")
    var tlsKey: String?

    @Option(name: .customLong("websocket-compression"), help: "permessage-deflate: off, shared or context-takeover.")
    var websocketCompression = WebSocketCompression.Mode.shared.rawValue

    // Limits per address, user and connection (docs/security.md "Limits").
    @Option(name: .customLong("trusted-proxies"),
            help: "Comma-separated CIDRs of proxies whose PROXY v2 header and X-Forwarded-For give the client address (default: none; env SYNCLINE_TRUSTED_PROXIES).")
    var trustedProxies: String? = ProcessInfo.processInfo.environment["SYNCLINE_TRUSTED_PROXIES"]

    @Option(name: .customLong("allowed-origins"),
            help: "Comma-separated Origins (scheme://host[:port]) browsers may upgrade from; others get 403 (default: any; requests without Origin are accepted; env SYNCLINE_ALLOWED_ORIGINS).")
    var allowedOrigins: String? = ProcessInfo.processInfo.environment["SYNCLINE_ALLOWED_ORIGINS"]

    @Option(name: .customLong("max-connections-per-address"), help: "Open WebSocket connections per client address, IPv6 per /64 (HTTP 429 above; 0: no limit).")
    var maxConnectionsPerAddress = 1_000

    @Option(name: .customLong("upgrades-per-second-per-address"), help: "WebSocket upgrades per second per client address (HTTP 429 with Retry-After above; 0: no limit).")
    var upgradesPerSecondPerAddress: Double = 20

    @Option(name: .customLong("upgrade-burst-per-address"), help: "Upgrades a client address may make at once before the per-second rate applies.")
    var upgradeBurstPerAddress = 100

    @Option(name: .customLong("max-connections-per-user"), help: "Sessions per token sub; the next is closed with 1013 after hello (0: no limit).")
    var maxConnectionsPerUser = 100

    @Option(name: .customLong("max-inbound-bytes-per-second"), help: "Bytes per second read from one connection; above it the server stops reading it until the budget refills (0: no limit).")
    var maxInboundBytesPerSecond = 512 << 10

    @Option(name: .customLong("inbound-burst-bytes"), help: "Bytes a connection may send at once before --max-inbound-bytes-per-second applies.")
    var inboundBurstBytes = 2 << 20

    @Option(name: .customLong("max-where-bytes"), help: "Largest subscribe 'where' (column names + JSON values; error bad_request above; 0: no limit).")
    var maxWhereBytes = 4_096

    @Option(name: .customLong("max-where-terms"), help: "Most columns in a subscribe 'where' (at most 16, the protocol's cap).")
    var maxWhereTerms = 16

    @Option(name: .customLong("max-tracked-addresses"), help: "Client addresses the per-address limits track at once (new ones get HTTP 429 above).")
    var maxTrackedAddresses = 100_000

    /// The limit flags into `server`, validated.
    func applyLimits(to server: inout ServerConfiguration) throws {
        if let trustedProxies, !trustedProxies.trimmingCharacters(in: .whitespaces).isEmpty {
            server.trustedProxies = try trustedProxies.split(separator: ",").map { entry in
                guard let network = IPNetwork(entry.trimmingCharacters(in: .whitespaces)) else {
                    throw ValidationError("--trusted-proxies: '\(entry)' is not an address or CIDR (e.g. 10.0.0.0/8, ::1)")
                }
                return network
            }
        }
        if let allowedOrigins {
            let origins = allowedOrigins.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            for origin in origins where origin != "*" && origin != "null" && !(origin.contains("://")) {
                throw ValidationError("--allowed-origins: '\(origin)' is not an origin (scheme://host[:port])")
            }
            server.allowedOrigins = origins.isEmpty ? nil : origins
        }
        let counts = [("--max-connections-per-address", maxConnectionsPerAddress), ("--upgrade-burst-per-address", upgradeBurstPerAddress),
                      ("--max-connections-per-user", maxConnectionsPerUser), ("--max-inbound-bytes-per-second", maxInboundBytesPerSecond),
                      ("--inbound-burst-bytes", inboundBurstBytes), ("--max-where-bytes", maxWhereBytes), ("--max-tracked-addresses", maxTrackedAddresses)]
        for (flag, value) in counts where value < 0 { throw ValidationError("\(flag) must not be negative") }
        guard upgradesPerSecondPerAddress >= 0, upgradesPerSecondPerAddress.isFinite else {
            throw ValidationError("--upgrades-per-second-per-address must not be negative")
        }
        guard (1...16).contains(maxWhereTerms) else { throw ValidationError("--max-where-terms must be 1–16") }
        server.maximumConnectionsPerAddress = maxConnectionsPerAddress
        server.upgradesPerSecondPerAddress = upgradesPerSecondPerAddress
        server.upgradeBurstPerAddress = max(1, upgradeBurstPerAddress)
        server.maximumConnectionsPerUser = maxConnectionsPerUser
        server.inboundBytesPerSecond = maxInboundBytesPerSecond
        server.inboundBurstBytes = max(1, inboundBurstBytes)
        server.maximumWhereBytes = maxWhereBytes
        server.maximumWhereTerms = maxWhereTerms
        server.maximumTrackedAddresses = maxTrackedAddresses
    }

    @Option(name: .customLong("node-id"), help: "This node's name in syncline.nodes and its canaries (default: hostname:pid; env SYNCLINE_NODE_ID).")
    var nodeID = ProcessInfo.processInfo.environment["SYNCLINE_NODE_ID"]

    @Option(name: .customLong("canary-interval-ms"),
            help: "Publish a canary through the change log this often and time the tail seeing it (0: off; readiness then follows the tail's connection only).")
    var canaryIntervalMS: Int64 = 1_000

    @Option(name: .customLong("canary-late-ms"),
            help: "Canary lag beyond which /readyz fails; the node also closes its sockets with 1001 when another node is healthy (lag under half of this).")
    var canaryLateMS: Int64 = 5_000

    @Option(name: .customLong("drain-seconds"),
            help: "On SIGTERM, fail /readyz this long while still serving (two load-balancer health-check intervals), then close with 1001.")
    var drainSeconds: Double = 4

    @Option(name: .customLong("retain-changes"),
            help: "Prune the change log: a duration (30d, 12h, 15m), a count of newest changes to keep, or off. Resumes from before the pruned range get reset.")
    var retainChanges = "30d"

    @Option(name: .customLong("retain-outcomes"),
            help: "Prune mutation outcomes older than this (a duration, or off); resending a pruned mid gets outcome_expired.")
    var retainOutcomes = "30d"

    @Option(name: .customLong("retention-interval"), help: "How often nodes prune (a duration); one node prunes per interval.")
    var retentionInterval = "5m"

    func run() async throws {
        let logger = database.logger()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: SynclineMetrics.registry))
        var options = SynclineApplication.Options(migrationsDirectory: database.migrationsDir)
        options.databaseURL = database.databaseURL
        options.developmentDirectory = database.devDataDir
        if demo {
            options.demoSchemaPath = ProjectPaths.root + "/examples/demo/schema.sql"
            options.demoGenerator = !noDemoGenerator
        }
        var server = ServerConfiguration()
        server.host = host
        server.port = port
        server.jwtSecret = jwtSecret
        server.jwksFilePath = jwksFile  // read at start and on SIGHUP
        guard (0...3600).contains(jwtLeewaySeconds) else { throw ValidationError("--jwt-leeway-seconds must be 0–3600") }
        server.jwtLeewaySeconds = jwtLeewaySeconds
        server.jwtAudience = jwtAudience ?? ProcessInfo.processInfo.environment["SYNCLINE_JWT_AUDIENCE"]
        server.jwtIssuer = jwtIssuer ?? ProcessInfo.processInfo.environment["SYNCLINE_JWT_ISSUER"]
        server.insecureDevAuth = insecureDevAuth
        server.demo = demo
        server.staticDirectory = staticDir
        guard staticMaxFileBytes >= 0 else { throw ValidationError("--static-max-file-bytes must not be negative") }
        server.staticMaximumFileBytes = staticMaxFileBytes
        server.maximumMessageBytes = maxMessageBytes
        server.maximumOutboundBytes = maxOutboundBytes
        guard conflateAfterBytes >= 0 else { throw ValidationError("--conflate-after-bytes must not be negative") }
        server.conflateAfterBytes = conflateAfterBytes
        server.maximumConnections = maxConnections
        server.maximumSubscriptionsPerConnection = maxSubscriptions
        server.maximumMessagesPerSecond = maxMessagesPerSecond
        guard maxFramesPerPass >= 1 else { throw ValidationError("--max-frames-per-pass must be at least 1") }
        server.maximumFramesPerPass = maxFramesPerPass
        guard snapshotStallTimeout > 0, snapshotStallTimeout <= 86_400 else { throw ValidationError("--snapshot-stall-timeout must be in (0, 86400] seconds") }
        server.snapshotStallTimeoutMilliseconds = Int(snapshotStallTimeout * 1000)
        server.heartbeatMilliseconds = heartbeatMS
        guard snapshotConcurrency >= 1 else { throw ValidationError("--snapshot-concurrency must be at least 1") }
        server.snapshotConcurrency = snapshotConcurrency
        guard (0...10_000).contains(snapshotShareWindowMS) else {
            throw ValidationError("--snapshot-share-window-ms must be 0 ... 10000")
        }
        server.snapshotShareWindowMilliseconds = snapshotShareWindowMS
        guard snapshotShareStallMS >= 1 else { throw ValidationError("--snapshot-share-stall-ms must be at least 1") }
        server.snapshotShareStallMilliseconds = snapshotShareStallMS
        server.ringCapacity = ringCapacity
        guard catchUpPageRecords >= 1 else { throw ValidationError("--catch-up-page-records must be at least 1") }
        server.catchUpPageRecords = catchUpPageRecords
        server.eventLoopThreads = eventLoopThreads
        server.maximumMutationsInFlight = maxMutationsInFlight
        server.mutations.maximumBatchSize = mutationBatchSize
        server.mutations.lanes = mutationLanes
        server.mutations.batchWait = .microseconds(max(0, mutationBatchWaitMicroseconds))
        server.mutations.mutationTimeout = .milliseconds(mutationTimeoutMS)
        server.mutations.batchTimeout = .milliseconds(mutationBatchTimeoutMS)
        server.mutations.maximumQueued = maxQueuedMutations
        server.mutations.role = mutationRole.isEmpty ? nil : mutationRole
        server.tlsCertificatePath = tlsCert
        server.tlsKeyPath = tlsKey
        guard let compressionMode = WebSocketCompression.Mode(rawValue: websocketCompression) else {
            throw ValidationError("--websocket-compression must be off, shared or context-takeover")
        }
        server.webSocketCompression.mode = compressionMode
        try applyLimits(to: &server)
        if let nodeID {
            guard (1...200).contains(nodeID.utf8.count) else { throw ValidationError("--node-id must be 1–200 bytes") }
            server.nodeID = nodeID
        }
        guard (0...3_600_000).contains(canaryIntervalMS) else { throw ValidationError("--canary-interval-ms must be 0 (off) … 3600000") }
        server.canaryIntervalMilliseconds = canaryIntervalMS
        guard (1...3_600_000).contains(canaryLateMS) else { throw ValidationError("--canary-late-ms must be 1 … 3600000") }
        server.canaryLateMilliseconds = canaryLateMS
        guard drainSeconds.isFinite, (0...600).contains(drainSeconds) else { throw ValidationError("--drain-seconds must be 0 … 600") }
        server.drainMilliseconds = Int64((drainSeconds * 1_000).rounded())
        guard let changes = RetentionPolicy.changes(retainChanges) else {
            throw ValidationError("--retain-changes must be a duration (30d, 12h, 15m, 90s), a count of at least 1, or off")
        }
        guard let outcomes = RetentionPolicy.outcomes(retainOutcomes) else {
            throw ValidationError("--retain-outcomes must be a duration (30d, 12h, 15m, 90s) or off")
        }
        guard let interval = RetentionPolicy.duration(retentionInterval), interval >= .seconds(1) else {
            throw ValidationError("--retention-interval must be a duration of at least 1s")
        }
        server.retention.changes = changes
        server.retention.outcomesAge = outcomes
        server.retention.interval = interval
        options.server = server
        let app: SynclineApplication
        do {
            app = try await SynclineApplication.prepare(options, logger: logger)
        } catch {
            logger.critical("could not start: \(String(reflecting: error))")
            throw ExitCode.failure
        }
        try await app.run()
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply migrations/*.sql in order, once each.")

    @OptionGroup var database: DatabaseOptions

    @Option(name: .customLong("grant-runtime"),
            help: "After migrating, grant this existing login role what `serve` needs and no DDL rights (repeatable; docs/security.md).")
    var grantRuntime: [String] = []

    func run() async throws {
        let logger = database.logger()
        let applied = try await SynclineApplication.migrate(
            databaseURL: database.databaseURL, developmentDirectory: database.devDataDir,
            migrationsDirectory: database.migrationsDir, grantRuntime: grantRuntime, logger: logger)
        print(applied.isEmpty ? "up to date" : "applied: " + applied.joined(separator: ", "))
    }
}
