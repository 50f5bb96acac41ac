import Foundation
import Logging
import NIOConcurrencyHelpers
import SynclineServer
import Testing

/// A real Syncline node on a free port, over its own database in the test cluster, with the demo
/// schema (no generator): HS256 tokens with `TestServer.secret`, and unsigned dev tokens.
struct TestServer: Sendable {
    static let secret = "test-secret-0123456789abcdef-0123456789"

    let app: SynclineApplication
    let port: Int
    let database: TestDatabase
    private let running: Task<Void, any Error>
    /// The configured drain, which every stop waits out first.
    private var drain: Duration = .zero

    var url: String { "ws://127.0.0.1:\(port)/v1/sync" }

    static func start(
        database: TestDatabase? = nil, logger: Logger = TestCluster.logger,
        configure: (inout SynclineApplication.Options) -> Void = { _ in }
    ) async throws -> TestServer {
        let database = if let database { database } else { TestDatabase(url: try await TestCluster.makeDatabase()) }
        var options = SynclineApplication.Options(migrationsDirectory: repositoryRoot + "/migrations")
        options.databaseURL = database.url
        options.demoSchemaPath = repositoryRoot + "/examples/demo/schema.sql"
        options.demoGenerator = false
        options.server.port = 0
        options.server.jwtSecret = secret
        options.server.insecureDevAuth = true
        options.server.eventLoopThreads = 2
        options.server.heartbeatMilliseconds = 2_000
        // Off unless a test is about them: the canary adds a position a second, the drain seconds
        // to every stop (ReadinessTests turns both on).
        options.server.canaryIntervalMilliseconds = 0
        options.server.drainMilliseconds = 0
        configure(&options)
        let app = try await SynclineApplication.prepare(options, logger: logger)
        let running = Task { try await app.run() }
        let port = try await app.port
        var server = TestServer(app: app, port: port, database: database, running: running)
        server.drain = .milliseconds(options.server.drainMilliseconds)
        try await server.waitUntilReady()
        return server
    }

    /// Waits until the change tail is listening.
    func waitUntilReady() async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while !app.hub.isListening {
            guard ContinuousClock.now < deadline else { throw TestFailure("server never became ready") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Shuts down gracefully; a shutdown that hangs is a bug, reported instead of hanging the suite.
    func stop() async {
        await app.shutdown()
        let running = self.running
        let done = NIOLockedValueBox(false)
        Task {
            _ = try? await running.value
            done.withLockedValue { $0 = true }
        }
        let limit = drain + .seconds(20)
        let deadline = ContinuousClock.now + limit
        while !done.withLockedValue({ $0 }) {
            guard ContinuousClock.now < deadline else {
                Issue.record("the server did not shut down within \(limit) (its drain and 20 s)")
                return
            }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Starts a server, runs `body`, and always stops the server.
    static func with<T: Sendable>(
        configure: (inout SynclineApplication.Options) -> Void = { _ in },
        _ body: (TestServer) async throws -> T
    ) async throws -> T {
        let server = try await start(configure: configure)
        do {
            let result = try await body(server)
            await server.stop()
            return result
        } catch {
            await server.stop()
            throw error
        }
    }
}
