import Foundation
import Logging
import SQLiteNIO
import SynclineProtocol

/// The durable store: one SQLite file in WAL mode with `synchronous=FULL`, so every ``write(_:)``
/// is one transaction whose commit is fsync'd before it returns (docs/adr/0006-client-store.md).
///
/// One process at a time should open a file: the client id, `mid` counter and queue belong to one
/// running client.
public final class SQLiteClientStore: ClientStore {
    private let connection: SQLiteConnection
    /// The file's path.
    public let path: String

    /// Opens (creating if needed) the store at `path`.
    public init(path: String) async throws {
        self.path = path
        var logger = Logger(label: "syncline-client-store")
        logger.logLevel = .warning
        connection = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        for statement in [
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS mutations (mid INTEGER PRIMARY KEY, name TEXT NOT NULL, args TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS feeds (feed TEXT PRIMARY KEY, spec TEXT NOT NULL, key_columns TEXT NOT NULL, cursor TEXT)",
            "CREATE TABLE IF NOT EXISTS rows (feed TEXT NOT NULL, key TEXT NOT NULL, row TEXT NOT NULL, PRIMARY KEY (feed, key)) WITHOUT ROWID",
        ] {
            _ = try await connection.query(statement, [])
        }
        let mode = try await connection.query("PRAGMA synchronous", []).first?.column("synchronous")?.integer
        guard mode == 2 else { throw StoreError("SQLite refused synchronous=FULL (got \(String(describing: mode)))") }
    }

    /// Closes the file.
    public func close() async throws {
        try await connection.close()
    }

    /// Everything stored.
    public func load() async throws -> StoredState {
        var state = StoredState()
        for row in try await connection.query("SELECT name, value FROM meta", []) {
            let value = row.column("value")?.string
            switch row.column("name")?.string {
            case "client_id": state.clientID = value
            case "next_mid": state.nextMID = value.flatMap { Int64($0) } ?? 1
            default: break
            }
        }
        for row in try await connection.query("SELECT mid, name, args FROM mutations ORDER BY mid", []) {
            guard let mid = row.column("mid")?.integer, let name = row.column("name")?.string,
                  let args = row.column("args")?.string.flatMap({ try? JSONParser.parse($0) })
            else { throw StoreError("unreadable mutation row in \(path)") }
            state.mutations.append(StoredMutation(mid: Int64(mid), name: name, args: args))
        }
        var feeds: [String: StoredFeed] = [:]
        var order: [String] = []
        for row in try await connection.query("SELECT feed, spec, key_columns, cursor FROM feeds ORDER BY feed", []) {
            guard let feed = row.column("feed")?.string,
                  let spec = row.column("spec")?.string.flatMap({ try? JSONParser.parse($0) }).flatMap(FeedSpec.init(json:)),
                  let keyColumns = row.column("key_columns")?.string.flatMap({ try? JSONParser.parse($0) })?.array
            else { throw StoreError("unreadable feed row in \(path)") }
            let cursor = row.column("cursor")?.string
            feeds[feed] = StoredFeed(spec: spec, keyColumns: keyColumns.compactMap(\.stringValue), cursor: cursor, rows: [])
            order.append(feed)
        }
        for row in try await connection.query("SELECT feed, key, row FROM rows ORDER BY feed, key", []) {
            guard let feed = row.column("feed")?.string,
                  let key = row.column("key")?.string.flatMap({ try? JSONParser.parse($0) }),
                  let value = row.column("row")?.string.flatMap({ try? JSONParser.parse($0) })
            else { throw StoreError("unreadable row in \(path)") }
            feeds[feed]?.rows.append(StoredRow(key: key, row: value))
        }
        state.feeds = order.compactMap { feeds[$0] }
        return state
    }

    /// Applies `batch` in one transaction, committed (and fsync'd) before returning.
    public func write(_ batch: StoreBatch) async throws {
        guard !batch.isEmpty else { return }
        _ = try await connection.query("BEGIN IMMEDIATE", [])
        do {
            try await apply(batch)
            _ = try await connection.query("COMMIT", [])
        } catch {
            _ = try? await connection.query("ROLLBACK", [])
            throw error
        }
    }

    /// Applies `batches` in order in one transaction: one fsync for many steps.
    public func write(all batches: [StoreBatch]) async throws {
        let batches = batches.filter { !$0.isEmpty }
        guard !batches.isEmpty else { return }
        _ = try await connection.query("BEGIN IMMEDIATE", [])
        do {
            for batch in batches { try await apply(batch) }
            _ = try await connection.query("COMMIT", [])
        } catch {
            _ = try? await connection.query("ROLLBACK", [])
            throw error
        }
    }

    private func apply(_ batch: StoreBatch) async throws {
        if let clientID = batch.clientID {
            _ = try await connection.query("INSERT OR REPLACE INTO meta (name, value) VALUES ('client_id', ?)", [.text(clientID)])
        }
        if let nextMID = batch.nextMID {
            _ = try await connection.query("INSERT OR REPLACE INTO meta (name, value) VALUES ('next_mid', ?)", [.text(String(nextMID))])
        }
        for mid in batch.deleteMutations {
            _ = try await connection.query("DELETE FROM mutations WHERE mid = ?", [.integer(Int(mid))])
        }
        for mutation in batch.insertMutations {
            _ = try await connection.query(
                "INSERT OR REPLACE INTO mutations (mid, name, args) VALUES (?, ?, ?)",
                [.integer(Int(mutation.mid)), .text(mutation.name), .text(mutation.args.jsonText)])
        }
        for write in batch.feeds {
            switch write {
            case .replace(let spec, let keyColumns, let cursor, let rows):
                let feed = spec.storageKey
                _ = try await connection.query("DELETE FROM rows WHERE feed = ?", [.text(feed)])
                try await upsertFeed(feed, spec: spec, keyColumns: keyColumns, cursor: cursor)
                try await upsertRows(feed, rows)
            case .apply(let spec, let keyColumns, let cursor, let upserts, let deletes):
                let feed = spec.storageKey
                try await upsertFeed(feed, spec: spec, keyColumns: keyColumns, cursor: cursor)
                for key in deletes {
                    _ = try await connection.query("DELETE FROM rows WHERE feed = ? AND key = ?", [.text(feed), .text(key.keyString)])
                }
                try await upsertRows(feed, upserts)
            case .remove(let spec):
                let feed = spec.storageKey
                _ = try await connection.query("DELETE FROM rows WHERE feed = ?", [.text(feed)])
                _ = try await connection.query("DELETE FROM feeds WHERE feed = ?", [.text(feed)])
            }
        }
    }

    private func upsertFeed(_ feed: String, spec: FeedSpec, keyColumns: [String], cursor: String?) async throws {
        _ = try await connection.query(
            "INSERT OR REPLACE INTO feeds (feed, spec, key_columns, cursor) VALUES (?, ?, ?, ?)",
            [.text(feed), .text(spec.json.jsonText), .text(JSONValue.array(keyColumns.map { .string($0) }).jsonText),
             cursor.map { .text($0) } ?? .null])
    }

    /// Many rows per statement: one thread-pool hop per statement is what a snapshot's write costs.
    private func upsertRows(_ feed: String, _ rows: [StoredRow]) async throws {
        var start = 0
        while start < rows.count {
            let chunk = rows[start..<min(start + 200, rows.count)]
            start += chunk.count
            var sql = "INSERT OR REPLACE INTO rows (feed, key, row) VALUES "
            var binds: [SQLiteData] = []
            binds.reserveCapacity(chunk.count * 3)
            for (i, row) in chunk.enumerated() {
                sql += i == 0 ? "(?, ?, ?)" : ", (?, ?, ?)"
                binds.append(.text(feed))
                binds.append(.text(row.key.keyString))
                binds.append(.text(row.row.jsonText))
            }
            _ = try await connection.query(sql, binds)
        }
    }
}

/// A store that cannot be read or written as expected.
public struct StoreError: Error, CustomStringConvertible, Sendable {
    /// What went wrong.
    public var description: String
    init(_ description: String) { self.description = description }
}
