import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO

/// Parses `postgres://user[:password]@host[:port]/database[?host=/unix/socket/dir]`.
func postgresConfiguration(url: String) throws -> PostgresConnection.Configuration {
    guard let c = URLComponents(string: url), c.scheme == "postgres" || c.scheme == "postgresql" else {
        throw BenchError("database URL must look like postgres://user@host:port/database, got \(url)")
    }
    let user = c.user?.removingPercentEncoding ?? "postgres"
    let password = c.password?.removingPercentEncoding
    var database = c.path
    if database.hasPrefix("/") { database.removeFirst() }
    let db: String? = database.isEmpty ? nil : database
    if let socketDir = c.queryItems?.first(where: { $0.name == "host" })?.value, socketDir.hasPrefix("/") {
        let port = c.port ?? 5432
        return PostgresConnection.Configuration(
            unixSocketPath: "\(socketDir)/.s.PGSQL.\(port)", username: user, password: password, database: db)
    }
    guard let host = c.host, !host.isEmpty else { throw BenchError("database URL has no host: \(url)") }
    return PostgresConnection.Configuration(
        host: host, port: c.port ?? 5432, username: user, password: password, database: db, tls: .disable)
}

/// The single writer of the fan-out scenario: one PostgresNIO connection on its own thread.
final class ChangeWriter: Sendable {
    let connection: PostgresConnection
    let logger: Logger

    static func connect(url: String, on loop: any EventLoop) async throws -> ChangeWriter {
        var logger = Logger(label: "syncline-bench.writer")
        logger.logLevel = .warning
        let configuration = try postgresConfiguration(url: url)
        let connection = try await PostgresConnection.connect(
            on: loop, configuration: configuration, id: 1, logger: logger)
        return ChangeWriter(connection: connection, logger: logger)
    }

    private init(connection: PostgresConnection, logger: Logger) {
        self.connection = connection
        self.logger = logger
    }

    /// Deletes the rows earlier runs inserted for `account`, so that snapshots stay small.
    func deletePreviousRows(account: String) async throws -> Int {
        let rows = try await self.connection.query(
            "WITH d AS (DELETE FROM transactions WHERE account_id = \(account) AND memo = 'bench' RETURNING 1) SELECT count(*)::int8 FROM d",
            logger: self.logger)
        for try await n in rows.decode(Int64.self) { return Int(n) }
        return 0
    }

    struct Outcome: Sendable {
        var commits: Int
        var startMicros: Int64
        var seconds: Double
        var error: String?
    }

    /// Commits `count` single-row transactions, at `rate` per second (0: as fast as possible),
    /// stopping early at `deadline` (monotonic seconds).
    func run(count: Int, rate: Double, account: String, deadline: Double) async -> Outcome {
        let start = monotonicSeconds()
        let startMicros = wallMicros()
        var commits = 0
        var failure: String?
        for i in 0..<count {
            if rate > 0 {
                let due = start + Double(i) / rate
                let wait = due - monotonicSeconds()
                if wait > 0 { try? await Task.sleep(nanoseconds: UInt64(wait * 1e9)) }
            }
            if monotonicSeconds() > deadline {
                failure = "writer stopped at the timeout after \(commits) commits"
                break
            }
            do {
                // Autocommit: one single-row transaction; created_at is taken inside it, before commit.
                try await self.connection.query(
                    "INSERT INTO transactions(id, account_id, amount, memo, created_at) VALUES (gen_random_uuid(), \(account), 1, 'bench', clock_timestamp())",
                    logger: self.logger)
                commits += 1
            } catch {
                failure = "insert failed after \(commits) commits: \(String(reflecting: error))"
                break
            }
        }
        return Outcome(commits: commits, startMicros: startMicros, seconds: monotonicSeconds() - start, error: failure)
    }

    /// Many feeds: commits `rows` rows over accounts `<prefix>1` … `<prefix><accounts>`, round
    /// robin, `rowsPerCommit` rows (consecutive accounts) per transaction, at `rate` transactions per
    /// second (0: flat out). Every row's `created_at` is its own `clock_timestamp()`, inside the
    /// transaction. `Outcome.commits` counts rows, so that missing deliveries are counted per row.
    func runSpread(
        rows: Int, rowsPerCommit: Int, accounts: Int, prefix: String, rate: Double, deadline: Double
    ) async -> Outcome {
        let start = monotonicSeconds()
        let startMicros = wallMicros()
        var written = 0
        var failure: String?
        let transactions = rows / rowsPerCommit
        for t in 0..<transactions {
            if rate > 0 {
                let wait = start + Double(t) / rate - monotonicSeconds()
                if wait > 0 { try? await Task.sleep(nanoseconds: UInt64(wait * 1e9)) }
            }
            if monotonicSeconds() > deadline {
                failure = "writer stopped at the timeout after \(written) rows"
                break
            }
            let first = t * rowsPerCommit
            do {
                try await self.connection.query(
                    """
                    INSERT INTO transactions(id, account_id, amount, memo, created_at)
                    SELECT gen_random_uuid(), \(prefix) || ((\(first) + g) % \(accounts) + 1)::text, 1, 'bench', clock_timestamp()
                    FROM generate_series(0, \(rowsPerCommit - 1)) AS g
                    """,
                    logger: self.logger)
                written += rowsPerCommit
            } catch {
                failure = "insert failed after \(written) rows: \(String(reflecting: error))"
                break
            }
        }
        return Outcome(commits: written, startMicros: startMicros, seconds: monotonicSeconds() - start, error: failure)
    }

    /// Resume storm: for k = 1 … `perAccount`, one row with memo `seq:<k>` for each account
    /// `<prefix>1` … `<prefix><accounts>`, `rowsPerCommit` rows per transaction. Each account's rows
    /// commit in sequence order, so a client that receives them all, in commit order, sees 1, 2, ….
    func writeSequenced(accounts: Int, perAccount: Int, rowsPerCommit: Int, prefix: String) async throws -> Double {
        let start = monotonicSeconds()
        for k in 1...perAccount {
            var from = 1
            while from <= accounts {
                let to = min(accounts, from + rowsPerCommit - 1)
                try await self.connection.query(
                    """
                    INSERT INTO transactions(id, account_id, amount, memo, created_at)
                    SELECT gen_random_uuid(), \(prefix) || g::text, 1, 'seq:' || \(k)::text, clock_timestamp()
                    FROM generate_series(\(from), \(to)) AS g
                    """,
                    logger: self.logger)
                from = to + 1
            }
        }
        return monotonicSeconds() - start
    }

    /// Deletes the rows the many-feeds and resume scenarios inserted for `<prefix>…` accounts, so
    /// that snapshots stay small and sequence numbers start afresh.
    func deletePreviousRows(accountPrefix prefix: String) async throws -> Int {
        let pattern = prefix + "%"
        let rows = try await self.connection.query(
            "WITH d AS (DELETE FROM transactions WHERE account_id LIKE \(pattern) AND (memo = 'bench' OR memo LIKE 'seq:%') RETURNING 1) SELECT count(*)::int8 FROM d",
            logger: self.logger)
        for try await n in rows.decode(Int64.self) { return Int(n) }
        return 0
    }

    func close() async {
        try? await self.connection.close()
    }
}
