import Logging
import NIOConcurrencyHelpers
import PostgresNIO
import SynclineCore
import SynclineProtocol

/// Reads for subscriptions, on their own small connection pool so that snapshots and catch-ups
/// can neither starve nor be starved by other work: filter canonicalisation, authorization,
/// snapshots (rows at P in one REPEATABLE READ transaction) and catch-up pages.
public final class FeedReader: Sendable {
    public let client: PostgresClient
    public let catalog: CollectionCatalog
    private let logger: Logger
    /// Canonical feed keys by collection and `where` as the client wrote it: a storm of
    /// subscribes to one feed costs one canonicalisation round trip, not one each. The rendering
    /// depends only on the columns' types; cleared when full.
    private let canonicalKeys = NIOLockedValueBox<[String: FeedKey]>([:])
    /// Entries of `canonicalKeys` at most.
    public static let canonicalKeysLimit = 10_000

    public init(client: PostgresClient, catalog: CollectionCatalog, logger: Logger) {
        self.client = client
        self.catalog = catalog
        self.logger = logger
    }

    /// The cursor epoch written at migrate time.
    public func epoch() async throws -> String {
        let rows = try await client.query("SELECT value FROM syncline.meta WHERE key = 'epoch'", logger: logger)
        for try await epoch in rows.decode(String.self) { return epoch }
        throw SynclinePostgresError(.notMigrated, "syncline.meta has no epoch: run `syncline migrate`")
    }

    /// The newest visible position and the prune horizon.
    public func head() async throws -> (head: Int64, prunedThrough: Int64) {
        let rows = try await client.query(
            "SELECT syncline.head(), (SELECT pruned_through FROM syncline.retention)", logger: logger)
        for try await (head, pruned) in rows.decode((Int64, Int64).self) { return (head, pruned) }
        return (0, 0)
    }

    /// Checks a subscription's collection and columns against the catalog and turns its `where`
    /// values into Postgres's canonical rendering through each column's type.
    public func feedKey(collection: String, filter: [String: JSONValue]) async throws -> FeedKey {
        guard let info = try await catalog.lookup(collection) else {
            throw SynclinePostgresError(.unknownCollection, "no collection named '\(collection)'")
        }
        for column in filter.keys.sorted() where !info.filterable.contains(column) {
            let allowed = info.filterable.sorted().joined(separator: ", ")
            throw SynclinePostgresError(.unknownColumn,
                "'\(column)' is not a filterable column of '\(collection)' (filterable: \(allowed.isEmpty ? "none" : allowed))")
        }
        if filter.isEmpty { return .collection(collection, filter: [:]) }
        let cacheKey = collection + "\u{0}" + JSONValue.object(filter.keys.sorted().map { ($0, filter[$0]!) }).jsonText
        if let known = canonicalKeys.withLockedValue({ $0[cacheKey] }) { return known }
        var texts: [String] = []
        var nulls: [Bool] = []
        let columns = filter.keys.sorted()
        for column in columns {
            switch filter[column]! {
            case .null: texts.append(""); nulls.append(true)
            case .string(let s): texts.append(s); nulls.append(false)
            case .number(let n): texts.append(n); nulls.append(false)
            case .bool(let b): texts.append(b ? "true" : "false"); nulls.append(false)
            case .array, .object:
                throw SynclinePostgresError(.invalidValue, "'where.\(column)' must be a scalar")
            }
        }
        var canonical: [String: JSONValue] = [:]
        do {
            let rows = try await client.query("""
                SELECT c, syncline.canonical_value(\(collection), c, CASE WHEN n THEN NULL ELSE v END)
                FROM unnest(\(columns)::text[], \(texts)::text[], \(nulls)::boolean[]) AS u(c, v, n)
                """, logger: logger)
            for try await (column, value) in rows.decode((String, String).self) {
                canonical[column] = try JSONParser.parse(value)
            }
        } catch let error where error.sqlState?.hasPrefix("22") == true {
            throw SynclinePostgresError(.invalidValue, "a 'where' value does not fit its column's type")
        }
        let key = FeedKey.collection(collection, filter: canonical)
        canonicalKeys.withLockedValue {
            if $0.count >= Self.canonicalKeysLimit { $0.removeAll(keepingCapacity: true) }
            $0[cacheKey] = key
        }
        return key
    }

    /// Whether the claims may read the feed (the collection's policy, or the topic policy).
    public func authorize(_ key: FeedKey, claims: String) async throws -> Bool {
        try await client.withTransaction(logger: logger) { connection in
            try await self.authorize(key, claims: claims, on: connection)
        }
    }

    private func authorize(_ key: FeedKey, claims: String, on connection: PostgresConnection) async throws -> Bool {
        try await connection.query("SELECT set_config('request.jwt.claims', \(claims), true)", logger: logger)
        let rows: PostgresRowSequence
        switch key {
        case .collection(let name, _, _):
            rows = try await connection.query("SELECT syncline.authorize_feed(\(name), \(key.filterJSON)::jsonb)", logger: logger)
        case .topic(let topic):
            rows = try await connection.query("SELECT syncline.authorize_topic(\(topic))", logger: logger)
        }
        for try await ok in rows.decode(Bool.self) { return ok }
        return false
    }

    /// Re-checks many subscriptions at once, each `(key, claims)` under its own claims, in one
    /// statement (`syncline.authorize_each`): the policy re-check when the data a policy reads
    /// changed, and on `auth`. `result[i]` is whether `checks[i]` still passes; a check whose
    /// policy raised does not (fails closed).
    public func authorizeEach(_ checks: [(key: FeedKey, claims: String)]) async throws -> [Bool] {
        guard !checks.isEmpty else { return [] }
        var collections: [String] = [], filters: [String] = [], topics: [String] = [], claims: [String] = []
        for check in checks {
            switch check.key {
            case .collection(let name, _, _):
                collections.append(name)
                topics.append("")
            case .topic(let topic):
                collections.append("")
                topics.append(topic)
            }
            filters.append(check.key.filterJSON)
            claims.append(check.claims)
        }
        // One statement, one round trip: outside a transaction block it is its own transaction,
        // so the claims authorize_each sets transaction-locally end with it.
        let rows = try await client.query("""
            SELECT syncline.authorize_each(\(collections)::text[], \(filters)::jsonb[], \(topics)::text[], \(claims)::text[])
            """, logger: logger)
        var allowed: [Bool] = []
        for try await answer in rows.decode([Bool].self) { allowed = answer }
        guard allowed.count == checks.count else {
            throw SynclinePostgresError(.migration, "syncline.authorize_each answered \(allowed.count) of \(checks.count) checks")
        }
        return allowed
    }

    /// Streams one snapshot read for several subscribers of `key` (a shared snapshot; one
    /// subscriber is the case of one): in one REPEATABLE READ transaction it checks every
    /// subscriber's policy with its own `claims` (one statement for all), reads position P and the
    /// matching rows, and hands them over in chunks. The rows are read under `claims[0]`: callers
    /// share a read only among claims equal but for `exp`/`iat`/`nbf`/`jti`.
    ///
    /// `onAuthorized(allowed, P)` runs before the first chunk (`allowed[i]` for `claims[i]`);
    /// `onChunk(rows, done, P)` awaits the sharers' sockets, pacing the read. Either returns false
    /// when nobody is left to send to: the read stops there. Returns P.
    public func sharedSnapshot(
        _ key: FeedKey, claims: [String], chunkRows: Int = 500, chunkBytes: Int = 256 << 10,
        onAuthorized: @Sendable ([Bool], Int64) async throws -> Bool,
        onChunk: @Sendable ([String], Bool, Int64) async throws -> Bool
    ) async throws -> Int64 {
        precondition(!claims.isEmpty, "a snapshot read needs a subscriber")
        return try await client.withConnection { connection in
            try await connection.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", logger: self.logger)
            do {
                let result = try await self.snapshotInTransaction(
                    key, claims: claims, chunkRows: chunkRows, chunkBytes: chunkBytes,
                    on: connection, onAuthorized: onAuthorized, onChunk: onChunk)
                try await connection.query("COMMIT", logger: self.logger)
                return result
            } catch {
                try? await connection.query("ROLLBACK", logger: self.logger)
                throw error
            }
        }
    }

    private func snapshotInTransaction(
        _ key: FeedKey, claims: [String], chunkRows: Int, chunkBytes: Int, on connection: PostgresConnection,
        onAuthorized: @Sendable ([Bool], Int64) async throws -> Bool,
        onChunk: @Sendable ([String], Bool, Int64) async throws -> Bool
    ) async throws -> Int64 {
        // Fixed rendering settings, the same as capture's, so snapshot rows equal live rows; and
        // the claims the rows are read under.
        try await connection.query("""
            SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true),
                   set_config('extra_float_digits', '3', true), set_config('IntervalStyle', 'iso_8601', true),
                   set_config('request.jwt.claims', \(claims[0]), true)
            """, logger: logger)
        // Policies, position and the row query's text in one round trip.
        let checks: PostgresRowSequence
        switch key {
        case .collection(let name, _, _):
            checks = try await connection.query("""
                SELECT syncline.authorize_many(\(name), \(key.filterJSON)::jsonb, NULL, \(claims)::text[]),
                       syncline.head(), syncline.snapshot_query(\(name), \(key.filterJSON)::jsonb)
                """, logger: logger)
        case .topic(let topic):
            checks = try await connection.query("""
                SELECT syncline.authorize_many(NULL, '{}'::jsonb, \(topic), \(claims)::text[]), syncline.head(), NULL::text
                """, logger: logger)
        }
        var allowed: [Bool] = []
        var position: Int64 = 0
        var sql: String?
        for try await (ok, head, query) in checks.decode(([Bool], Int64, String?).self) {
            allowed = ok
            position = head
            sql = query
        }
        guard allowed.count == claims.count else {
            throw SynclinePostgresError(.migration, "syncline.authorize_many answered \(allowed.count) of \(claims.count) checks")
        }
        guard try await onAuthorized(allowed, position), allowed.contains(true) else { return position }
        guard let sql else {
            _ = try await onChunk([], true, position)
            return position
        }
        var bindings = PostgresBindings()
        bindings.append(key.filterJSON)
        // The generated SQL quotes every identifier (format %I) from syncline.collections; the
        // filter travels as a parameter.
        let rows = try await connection.query(PostgresQuery(unsafeSQL: sql + " AND $1::jsonb IS NOT NULL", binds: bindings), logger: logger)
        var chunk: [String] = []
        var bytes = 0
        for try await row in rows.decode(String.self) {
            chunk.append(row)
            bytes += row.utf8.count
            if chunk.count >= chunkRows || bytes >= chunkBytes {
                guard try await onChunk(chunk, false, position) else { return position }
                chunk.removeAll(keepingCapacity: true)
                bytes = 0
            }
        }
        _ = try await onChunk(chunk, true, position)
        return position
    }

    /// One page of the change log for a catch-up: positions in (`after`, `through`] within
    /// `scope`, at most `limit`, with the prune horizon read in the same statement.
    public func changeLogPage(
        after: Int64, through: Int64, limit: Int, scope: ChangeLogReader.Scope
    ) async throws -> ChangeLogReader.Page {
        try await client.withConnection { connection in
            try await ChangeLogReader.readCatchUpPage(
                connection, after: after, through: through, limit: limit, scope: scope, logger: self.logger)
        }
    }
}
