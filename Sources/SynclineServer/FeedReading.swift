import SynclineCore
import SynclinePostgres
import SynclineProtocol

/// What a connection and the log scan read for subscriptions: filter canonicalisation, the log's
/// head, authorization, snapshots and change-log pages. `FeedReader` reads them from PostgreSQL;
/// `SyncConnection`'s unit tests read them from memory.
///
/// A seam, not a hot path: it is called once per `subscribe` (and per catch-up page), never by
/// the fan-out's delivery.
protocol FeedReading: Sendable {
    /// The feed key of a collection subscription, with its `where` values in canonical form;
    /// throws `SynclinePostgresError` for an unknown collection, column or value.
    func feedKey(collection: String, filter: [String: JSONValue]) async throws -> FeedKey

    /// The newest visible position and the prune horizon.
    func head() async throws -> (head: Int64, prunedThrough: Int64)

    /// Whether the claims (JSON text) may read the feed.
    func authorize(_ key: FeedKey, claims: String) async throws -> Bool

    /// Re-checks many `(key, claims)` pairs in one round trip (policy re-checks); `result[i]` for
    /// `checks[i]`.
    func authorizeEach(_ checks: [(key: FeedKey, claims: String)]) async throws -> [Bool]

    /// Streams one snapshot read at one position P for several subscribers (a shared snapshot,
    /// ADR 0008): `onAuthorized(allowed, P)` with each of `claims` checked, before the first chunk;
    /// then `onChunk(rows, done, P)` (the last with `done`) unless nobody may read it. Either
    /// returning false stops the read. Returns P.
    func sharedSnapshot(
        _ key: FeedKey, claims: [String], chunkRows: Int, chunkBytes: Int,
        onAuthorized: @Sendable ([Bool], Int64) async throws -> Bool,
        onChunk: @Sendable ([String], Bool, Int64) async throws -> Bool
    ) async throws -> Int64

    /// Change-log records in (`after`, `through`] within `scope`: `limit` of them, or more when the
    /// last one's transaction goes on (a page never ends inside a transaction), or fewer at the
    /// end; with the prune horizon read at the same time.
    func changeLogPage(after: Int64, through: Int64, limit: Int, scope: ChangeLogReader.Scope) async throws -> ChangeLogReader.Page
}

extension FeedReading {
    /// One `authorize` per pair: for readers without a batch statement (the in-memory one).
    func authorizeEach(_ checks: [(key: FeedKey, claims: String)]) async throws -> [Bool] {
        var out: [Bool] = []
        for check in checks { out.append(try await authorize(check.key, claims: check.claims)) }
        return out
    }
}

extension FeedReader: FeedReading {}
