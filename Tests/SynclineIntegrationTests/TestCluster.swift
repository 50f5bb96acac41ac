import Foundation
import Logging
import NIOConcurrencyHelpers
import PostgresNIO
import SynclinePostgres

/// One throwaway PostgreSQL cluster per test process, started with the same code as
/// `syncline serve`'s private cluster (fsync off: it is thrown away). Each test gets its own
/// database in it, so pruning or killing backends in one test cannot disturb another.
enum TestCluster {
    private static let started = NIOLockedValueBox<DevelopmentCluster?>(nil)
    nonisolated(unsafe) private static var stopCommand: String = ""

    static let logger: Logger = {
        var logger = Logger(label: "syncline-test")
        logger.logLevel = ProcessInfo.processInfo.environment["SYNCLINE_TEST_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? .warning
        return logger
    }()

    static var cluster: DevelopmentCluster {
        get throws {
            try started.withLockedValue { box in
                if let cluster = box { return cluster }
                let directory = NSTemporaryDirectory() + "syncline-test-\(getpid())"
                let cluster = try DevelopmentCluster.start(
                    .init(directory: directory, settings: ["fsync": "off", "full_page_writes": "off"], database: "postgres"),
                    logger: logger)
                box = cluster
                stopCommand = "\(geteuid() == 0 ? "runuser -u postgres -- " : "")\(try binDirectory())/pg_ctl -D \(cluster.dataDirectory) -m immediate stop >/dev/null 2>&1; rm -rf \(directory)"
                atexit {
                    _ = system(TestCluster.stopCommand)
                }
                return cluster
            }
        }
    }

    static func binDirectory() throws -> String {
        if let dir = ProcessInfo.processInfo.environment["SYNCLINE_PG_BINDIR"], !dir.isEmpty { return dir }
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        guard let newest = versions.last else { throw TestFailure("PostgreSQL binaries not found") }
        return "\(root)/\(newest)/bin"
    }

    private static let counter = NIOLockedValueBox(0)

    /// A fresh, empty database; returns its URL. Made (and the cluster started, the first time)
    /// on a thread of its own: `createdb` and `initdb` are child processes waited for, which
    /// would otherwise hold Swift concurrency's two cooperative threads while other tests run.
    static func makeDatabase() async throws -> String {
        try await Thread.run { try makeDatabaseWaiting() }
    }

    private static func makeDatabaseWaiting() throws -> String {
        let cluster = try cluster
        let n = counter.withLockedValue { n -> Int in
            n += 1
            return n
        }
        let name = "t\(getpid())_\(n)"
        try cluster.createDatabase(name, logger: logger)
        return "postgres://\(cluster.username)@\(cluster.host):\(cluster.port)/\(name)"
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The repository root (for migrations and the demo schema).
let repositoryRoot: String = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// A direct Postgres connection for a test to write with, like any application would.
struct TestDatabase: Sendable {
    let url: String

    func withConnection<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        let settings = try PostgresSettings(url: url)
        let connection = try await PostgresConnection.connect(
            configuration: try settings.connectionConfiguration(applicationName: "syncline-test-writer"), id: 1,
            logger: TestCluster.logger)
        do {
            let result = try await body(connection)
            try await connection.close()
            return result
        } catch {
            try? await connection.close()
            throw error
        }
    }

    /// Runs statements (each its own transaction) on a new connection.
    func execute(_ queries: PostgresQuery...) async throws {
        try await withConnection { connection in
            for query in queries { try await connection.query(query, logger: TestCluster.logger) }
        }
    }

    /// Runs SQL through the real `psql` client, as an operator or another application would.
    /// The client process is waited for on a thread of its own, not on Swift concurrency's
    /// cooperative pool (two threads here): tests in parallel polling with psql would otherwise
    /// starve every in-process server's tasks and time each other out on a loaded machine.
    func psql(_ sql: String) async throws -> String {
        try await Thread.run { try self.psqlWaiting(sql) }
    }

    /// `psql` for synchronous callers (outside tests' async code).
    func psqlWaiting(_ sql: String) throws -> String {
        let settings = try PostgresSettings(url: url)
        do {
            return try DevelopmentCluster.run(try TestCluster.binDirectory() + "/psql", [
                "-h", settings.host, "-p", "\(settings.port)", "-U", settings.username, "-d", settings.database,
                "-v", "ON_ERROR_STOP=1", "-qAtc", sql,
            ], logger: TestCluster.logger)
        } catch {
            throw TestFailure("psql failed: \(error)")
        }
    }
}
