import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import ServiceLifecycle
import SynclinePostgres

/// A whole Syncline node: (optionally) a private Postgres, migrations, the change tail, the fan-out
/// hub, the snapshot pool and the HTTP/WebSocket server, run as one `ServiceGroup`.
public final class SynclineApplication: Sendable {
    public struct Options: Sendable {
        /// Postgres to use; nil starts the private development cluster under `developmentDirectory`.
        public var databaseURL: String?
        public var developmentDirectory = ".syncline"
        /// Extra settings for the private cluster (tests use `fsync=off`).
        public var developmentSettings: [String: String] = [:]
        public var migrationsDirectory: String
        /// Load the demo schema (`demoSchemaPath`) and, with `demoGenerator`, insert a transaction
        /// about every second.
        public var demoSchemaPath: String?
        public var demoGenerator = true
        public var dashboardPath: String?
        public var server = ServerConfiguration()

        public init(migrationsDirectory: String) {
            self.migrationsDirectory = migrationsDirectory
        }
    }

    public let databaseURL: String
    private let cluster: DevelopmentCluster?
    private let group: MultiThreadedEventLoopGroup
    private let serviceGroup: ServiceGroup
    private let server: SynclineServer
    public let hub: Hub
    /// The retention service (nil when `retention` prunes nothing).
    public let retention: RetentionService?
    private let logger: Logger

    /// Shared snapshot reads so far (also the `syncline_snapshot_*` metrics).
    public var snapshotReads: SnapshotReadStats { server.environment.snapshots.stats }

    /// Mutations this node has taken and not yet answered (queued or in a batch).
    public var mutationsPending: Int { (server.environment.mutations as? MutationExecutor)?.pending ?? 0 }

    /// Delivery health: the canary's lag, readiness, the drain.
    public var health: NodeHealth { server.environment.health }

    /// Prepares everything that must exist before serving: the cluster, migrations, the demo
    /// schema, the cursor epoch and the position the tail starts from.
    public static func prepare(_ options: Options, logger: Logger) async throws -> SynclineApplication {
        var cluster: DevelopmentCluster?
        let url: String
        if let databaseURL = options.databaseURL {
            url = databaseURL
        } else {
            let started = try DevelopmentCluster.start(
                .init(directory: options.developmentDirectory, settings: options.developmentSettings), logger: logger)
            cluster = started
            url = started.url
        }
        do {
            return try await prepare(options, url: url, cluster: cluster, logger: logger)
        } catch {
            cluster?.stop(logger: logger)
            throw error
        }
    }

    private static func prepare(_ options: Options, url: String, cluster: DevelopmentCluster?, logger: Logger) async throws -> SynclineApplication {
        // Files first: a bad --static-dir fails before anything is opened.
        let assets = try StaticAssets.load(
            demo: options.server.demo, dashboard: options.dashboardPath,
            staticDirectory: try options.server.staticDirectory.map {
                try StaticDirectory(path: $0, maximumFileBytes: options.server.staticMaximumFileBytes)
            })
        let settings = try PostgresSettings(url: url)
        let setup = try await PostgresConnection.connect(
            configuration: try settings.connectionConfiguration(applicationName: "syncline-setup"), id: 0, logger: logger)
        let epoch: String
        let head: Int64
        // The private cluster and the demo set themselves up; a deployer's database (--database-url)
        // is migrated by `syncline migrate` as its owner, and serve may run as a role without DDL
        // rights, so it only checks that the schema is current.
        let managesSchema = options.databaseURL == nil || options.demoSchemaPath != nil
        do {
            let migrator = Migrator(directory: options.migrationsDirectory)
            if managesSchema {
                try await migrator.migrate(setup, logger: logger)
            } else {
                try await migrator.requireCurrent(setup, logger: logger)
            }
            if let demo = options.demoSchemaPath {
                try await Migrator.runScript(try String(contentsOfFile: demo, encoding: .utf8), on: setup, logger: logger)
                logger.info("demo schema loaded", metadata: ["users": "alice, bob"])
            }
            let privileges = try await LoginPrivileges.read(setup, logger: logger)
            for finding in privileges.findings {
                // Setting itself up takes DDL rights, so the private cluster and the demo need them.
                if managesSchema {
                    logger.notice("login privileges: \(finding)")
                } else {
                    logger.warning("SECURITY WARNING: \(finding)")
                }
            }
            var e = ""
            for try await value in try await setup.query("SELECT value FROM syncline.meta WHERE key = 'epoch'", logger: logger).decode(String.self) {
                e = value
            }
            var h: Int64 = 0
            for try await value in try await setup.query("SELECT syncline.head()", logger: logger).decode(Int64.self) {
                h = value
            }
            epoch = e
            head = h
            try await setup.close()
        } catch {
            try? await setup.close()
            throw error
        }

        var configuration = options.server
        var authenticatorSecret = configuration.jwtSecret
        if configuration.demo && authenticatorSecret == nil && configuration.jwksJSON == nil {
            // The demo mints its own tokens at /demo/token with a secret that lives as long as the process.
            authenticatorSecret = (0..<4).map { _ in UUID().uuidString }.joined()
            logger.info("demo mode: signing demo tokens with an ephemeral HS256 secret")
        }
        configuration.jwtSecret = authenticatorSecret
        if let path = configuration.jwksFilePath, configuration.jwksJSON == nil {
            configuration.jwksJSON = try String(contentsOfFile: path, encoding: .utf8)
        }
        let authenticator = try await Authenticator(
            hmacSecret: authenticatorSecret, jwksJSON: configuration.jwksJSON, allowUnsigned: configuration.insecureDevAuth,
            leeway: configuration.jwtLeewaySeconds, audience: configuration.jwtAudience, issuer: configuration.jwtIssuer)
        guard authenticator.acceptsTokens else {
            throw SynclinePostgresError(.clusterSetup,
                "no way to authenticate: give --jwt-secret or --jwks-file (or --insecure-dev-auth for development)")
        }
        if configuration.insecureDevAuth {
            logger.warning("--insecure-dev-auth: unsigned tokens are accepted; never use this in production")
        }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.eventLoopThreads))
        let main = PostgresClient(configuration: try settings.clientConfiguration(applicationName: "syncline", maximumConnections: 8),
                                  backgroundLogger: logger)
        let snapshots = PostgresClient(
            configuration: try settings.clientConfiguration(applicationName: "syncline-snapshot",
                                                            // one more per parked (stalled) read: SnapshotCoordinator
                                                            maximumConnections: configuration.snapshotConcurrency * 2),
            backgroundLogger: logger)
        let catalog = CollectionCatalog(client: snapshots, logger: logger)
        let reader = FeedReader(client: snapshots, catalog: catalog, logger: logger)
        let hub = Hub(epoch: epoch, head: head, configuration: configuration, group: group, logger: logger)
        hub.usePolicyReader(FeedReader(client: main, catalog: catalog, logger: logger))
        let mutations = MutationExecutor(
            connection: try settings.connectionConfiguration(applicationName: "syncline-mutations"),
            configuration: configuration.mutations, logger: logger)
        let environment = SyncEnvironment(
            configuration: configuration, hub: hub, reader: reader, clients: ClientRegistry(client: main, logger: logger),
            mutations: mutations, authenticator: authenticator, logger: logger)
        let tail = ChangeTail(
            connection: try settings.connectionConfiguration(applicationName: "syncline-tail"), startAfter: head, logger: logger
        ) { [health = environment.health] event in
            let through = await hub.handle(event)
            health.observe(event)  // after delivery: the canary times commit → delivered
            return through
        }
        let server = SynclineServer(environment: environment, group: group, assets: assets)
        var services: [any Service] = [
            main, snapshots, tail, mutations,
            HeartbeatService(hub: hub, group: group, period: .milliseconds(configuration.heartbeatMilliseconds)),
            CanaryService(health: environment.health, hub: hub, group: group, client: main, configuration: configuration, logger: logger),
            server,
        ]
        if let path = configuration.jwksFilePath {
            services.append(JWKSReloader(path: path, authenticator: authenticator, logger: logger))
        }
        let retention = configuration.retention.isEnabled ? RetentionService(
            client: main, policy: configuration.retention,
            node: "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier):\(configuration.port)",
            logger: logger) : nil
        if let retention { services.append(retention) }
        if options.demoSchemaPath != nil && options.demoGenerator {
            services.append(DemoGenerator(client: main, logger: logger))
        }
        let serviceGroup = ServiceGroup(configuration: .init(
            services: services.map { .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup,
                                           failureTerminationBehavior: .gracefullyShutdownGroup) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        return SynclineApplication(databaseURL: url, cluster: cluster, group: group, serviceGroup: serviceGroup,
                                   server: server, hub: hub, retention: retention, logger: logger)
    }

    private init(databaseURL: String, cluster: DevelopmentCluster?, group: MultiThreadedEventLoopGroup,
                 serviceGroup: ServiceGroup, server: SynclineServer, hub: Hub, retention: RetentionService?, logger: Logger) {
        self.databaseURL = databaseURL
        self.cluster = cluster
        self.group = group
        self.serviceGroup = serviceGroup
        self.server = server
        self.hub = hub
        self.retention = retention
        self.logger = logger
    }

    /// Serves until SIGINT/SIGTERM or `shutdown()`, then stops the private cluster if it started one.
    public func run() async throws {
        defer {
            cluster?.stop(logger: logger)
        }
        do {
            try await serviceGroup.run()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try? await group.shutdownGracefully()
    }

    /// Starts a graceful shutdown (WebSockets close with 1001).
    public func shutdown() async {
        await serviceGroup.triggerGracefulShutdown()
    }

    /// The port the server bound (waits until it has).
    public var port: Int {
        get async throws { try await server.port }
    }
}

/// Timers, one per event loop rather than one per connection: every 2 s, advances the cursor of
/// live feeds that got nothing for a while (protocol §2: at least every 10 s); every heartbeat
/// period, pings every connection and closes those silent for two periods.
struct HeartbeatService: Service {
    let hub: Hub
    let group: any EventLoopGroup
    let period: TimeAmount

    func run() async throws {
        var sincePing = TimeAmount.zero
        let tick = TimeAmount.milliseconds(min(2_000, max(period.nanoseconds / 1_000_000, 1)))
        // The protocol promises every live feed a cursor advance at least every 10 s. Checked every
        // tick, a feed silent for 10 s − tick (less a margin for the sleep's drift) is advanced by
        // the 10 s mark; a shorter threshold only sends more empty frames, one write per idle feed
        // (with 10,000 feeds, advances at the former 5 s took 27 % of the server's CPU in one
        // 6-second perf window of the many-feeds benchmark).
        let idleAdvance = TimeAmount.seconds(10) - tick - .milliseconds(500)  // sleep drift
        while !Task.isShuttingDownGracefully {
            try? await Task.sleep(for: .milliseconds(tick.nanoseconds / 1_000_000))
            sincePing = sincePing + tick
            let ping = sincePing >= period
            if ping { sincePing = .zero }
            for loop in group.makeIterator() {
                let hub = self.hub
                let period = self.period
                loop.execute {
                    let fanout = hub.fanout(on: loop)
                    fanout.advanceIdle(olderThan: idleAdvance)
                    if ping { fanout.heartbeat(period: period) }
                }
            }
        }
    }
}

/// The demo's generator: one small random transaction about every second.
struct DemoGenerator: Service {
    let client: PostgresClient
    let logger: Logger

    func run() async throws {
        while !Task.isShuttingDownGracefully {
            try? await Task.sleep(for: .milliseconds(Int.random(in: 600...1400)))
            do {
                try await client.query("SELECT demo.generate()", logger: logger)
            } catch {
                logger.debug("demo generator: \(error)")
            }
        }
    }
}

extension SynclineApplication {
    /// `syncline migrate`: applies the migrations (to the private cluster when no URL is given,
    /// which is started and stopped for it).
    ///
    /// `grantRuntime` names login roles to grant what `serve` needs (`syncline.grant_runtime`,
    /// docs/security.md), after migrating.
    public static func migrate(databaseURL: String?, developmentDirectory: String, migrationsDirectory: String,
                               grantRuntime: [String] = [], logger: Logger) async throws -> [String] {
        var cluster: DevelopmentCluster?
        let url: String
        if let databaseURL {
            url = databaseURL
        } else {
            let started = try DevelopmentCluster.start(.init(directory: developmentDirectory), logger: logger)
            cluster = started
            url = started.url
        }
        defer { cluster?.stop(logger: logger) }
        let settings = try PostgresSettings(url: url)
        let connection = try await PostgresConnection.connect(
            configuration: try settings.connectionConfiguration(applicationName: "syncline-migrate"), id: 0, logger: logger)
        do {
            let applied = try await Migrator(directory: migrationsDirectory).migrate(connection, logger: logger)
            for role in grantRuntime {
                try await connection.query("SELECT syncline.grant_runtime(\(role))", logger: logger)
                logger.info("runtime privileges granted", metadata: ["role": "\(role)"])
            }
            try await connection.close()
            return applied
        } catch {
            try? await connection.close()
            throw error
        }
    }
}
