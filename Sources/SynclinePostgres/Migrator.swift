import Foundation
import Logging
import PostgresNIO

/// Applies `migrations/*.sql` in file-name order, each once, recorded in
/// `syncline.schema_migrations`. Concurrent migrators (several nodes starting at once) serialize on
/// an advisory lock.
public struct Migrator: Sendable {
    public var directory: String

    public init(directory: String) {
        self.directory = directory
    }

    /// The migration files, sorted.
    public func files() throws -> [String] {
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        return names.filter { $0.hasSuffix(".sql") }.sorted()
    }

    /// Applies what is missing; returns the names applied now.
    @discardableResult
    public func migrate(_ connection: PostgresConnection, logger: Logger) async throws -> [String] {
        let files = try files()
        guard !files.isEmpty else {
            throw SynclinePostgresError(.migration, "no .sql files in \(directory)")
        }
        try await connection.query("SELECT pg_advisory_lock(7331533712)", logger: logger)
        do {
            let applied = try await apply(files, on: connection, logger: logger)
            try await connection.query("SELECT pg_advisory_unlock(7331533712)", logger: logger)
            return applied
        } catch {
            try? await connection.query("SELECT pg_advisory_unlock(7331533712)", logger: logger)
            throw error
        }
    }

    /// The migration files not yet applied to the database, read without DDL (a runtime role
    /// may run this): an empty list means the schema is current.
    public func pending(_ connection: PostgresConnection, logger: Logger) async throws -> [String] {
        let files = try files()
        var recorded = false
        for try await exists in try await connection.query(
            "SELECT to_regclass('syncline.schema_migrations') IS NOT NULL", logger: logger).decode(Bool.self) {
            recorded = exists
        }
        guard recorded else { return files }
        var done = Set<String>()
        for try await name in try await connection.query("SELECT name FROM syncline.schema_migrations", logger: logger).decode(String.self) {
            done.insert(name)
        }
        return files.filter { !done.contains($0) }
    }

    /// Throws, saying to run `syncline migrate`, when the schema is behind these files.
    public func requireCurrent(_ connection: PostgresConnection, logger: Logger) async throws {
        let missing = try await pending(connection, logger: logger)
        guard missing.isEmpty else {
            throw SynclinePostgresError(.notMigrated,
                "the database schema is behind this server: \(missing.count) migration(s) not applied "
                + "(\(missing.joined(separator: ", "))). Run `syncline migrate --database-url …` as the schema owner, "
                + "then start serve again (with --database-url, serve runs no DDL)")
        }
    }

    private func apply(_ files: [String], on connection: PostgresConnection, logger: Logger) async throws -> [String] {
        try await connection.query("""
            CREATE SCHEMA IF NOT EXISTS syncline;
            """, logger: logger)
        try await connection.query("""
            CREATE TABLE IF NOT EXISTS syncline.schema_migrations (
                name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())
            """, logger: logger)
        // Files hold many statements; the extended protocol takes one, so a temporary function
        // runs each file through EXECUTE (which accepts several) inside one transaction.
        try await connection.query("""
            CREATE OR REPLACE FUNCTION pg_temp.syncline_execute(sql text) RETURNS void
            LANGUAGE plpgsql AS $$ BEGIN EXECUTE sql; END $$
            """, logger: logger)
        var done = Set<String>()
        for try await name in try await connection.query("SELECT name FROM syncline.schema_migrations", logger: logger).decode(String.self) {
            done.insert(name)
        }
        var applied: [String] = []
        for file in files where !done.contains(file) {
            let sql = try String(contentsOfFile: directory + "/" + file, encoding: .utf8)
            do {
                try await connection.query("BEGIN", logger: logger)
                try await connection.query("SELECT pg_temp.syncline_execute(\(sql))", logger: logger)
                try await connection.query("INSERT INTO syncline.schema_migrations (name) VALUES (\(file))", logger: logger)
                try await connection.query("COMMIT", logger: logger)
            } catch {
                try? await connection.query("ROLLBACK", logger: logger)
                throw SynclinePostgresError(.migration, "\(file) failed: \(String(reflecting: error))")
            }
            logger.info("migration applied", metadata: ["file": "\(file)"])
            applied.append(file)
        }
        return applied
    }

    /// Runs a SQL file of several statements (the demo schema) in one transaction.
    public static func runScript(_ sql: String, on connection: PostgresConnection, logger: Logger) async throws {
        try await connection.query("""
            CREATE OR REPLACE FUNCTION pg_temp.syncline_execute(sql text) RETURNS void
            LANGUAGE plpgsql AS $$ BEGIN EXECUTE sql; END $$
            """, logger: logger)
        try await connection.query("BEGIN", logger: logger)
        do {
            try await connection.query("SELECT pg_temp.syncline_execute(\(sql))", logger: logger)
            try await connection.query("COMMIT", logger: logger)
        } catch {
            try? await connection.query("ROLLBACK", logger: logger)
            throw error
        }
    }
}
