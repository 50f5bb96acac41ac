import Logging
import NIOConcurrencyHelpers
import PostgresNIO
import SynclineCore

/// A collection as registered with `syncline.track`.
public struct CollectionInfo: Sendable, Hashable {
    public var name: String
    public var keyColumns: [String]
    public var filterable: Set<String>
    public var published: [String]
}

/// The registered collections, cached. Reloaded when a client names one not in the cache (at most
/// once a second, so unknown names cannot flood Postgres) and on demand.
public final class CollectionCatalog: Sendable {
    private struct State {
        var collections: [String: CollectionInfo] = [:]
        var loadedAt: ContinuousClock.Instant?
    }

    private let state = NIOLockedValueBox(State())
    private let client: PostgresClient
    private let logger: Logger

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    public func reload() async throws {
        var loaded: [String: CollectionInfo] = [:]
        let rows = try await client.query(
            "SELECT name, key_columns, filterable, published FROM syncline.collections", logger: logger)
        for try await (name, key, filterable, published) in rows.decode((String, [String], [String], [String]).self) {
            loaded[name] = CollectionInfo(name: name, keyColumns: key, filterable: Set(filterable), published: published)
        }
        let now = ContinuousClock.now
        state.withLockedValue {
            $0.collections = loaded
            $0.loadedAt = now
        }
    }

    public func lookup(_ name: String) async throws -> CollectionInfo? {
        if let found = state.withLockedValue({ $0.collections[name] }) { return found }
        let stale = state.withLockedValue { s -> Bool in
            guard let at = s.loadedAt else { return true }
            return ContinuousClock.now - at > .seconds(1)
        }
        guard stale else { return nil }
        try await reload()
        return state.withLockedValue { $0.collections[name] }
    }
}
