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

    /// Streams a snapshot at one position P: `onStart(P)` before the first chunk, then
    /// `onChunk(rows, done, P)` (the last with `done`); returns P, or nil when the claims may not
    /// read the feed (then nothing was streamed).
    func snapshot(
        _ key: FeedKey, claims: String, chunkRows: Int, chunkBytes: Int,
        onStart: @Sendable (Int64) async throws -> Void,
        onChunk: @Sendable ([String], Bool, Int64) async throws -> Void
    ) async throws -> Int64?

    /// Change-log records in (`after`, `through`] within `scope`, at most `limit`, with the prune
    /// horizon read at the same time.
    func changeLogPage(after: Int64, through: Int64, limit: Int, scope: ChangeLogReader.Scope) async throws -> ChangeLogReader.Page
}

extension FeedReader: FeedReading {}
