import SynclineProtocol

/// Where a client keeps what must survive the process: its client id, the next `mid`, the mutations
/// not yet decided, and every live query's rows with its cursor.
///
/// Each ``write(_:)`` is one atomic, durable step: after it returns, a crash keeps all of it; before,
/// none of it. ``SQLiteClientStore`` is the durable implementation; ``MemoryClientStore`` keeps nothing.
public protocol ClientStore: Sendable {
    /// Everything stored, for a client starting up.
    func load() async throws -> StoredState
    /// Applies `batch` atomically and durably.
    func write(_ batch: StoreBatch) async throws
    /// Applies `batches` in order, atomically and durably together (one commit for many steps).
    func write(all batches: [StoreBatch]) async throws
}

extension ClientStore {
    /// One write per batch; stores that can, override this with one transaction.
    public func write(all batches: [StoreBatch]) async throws {
        for batch in batches { try await write(batch) }
    }
}

/// The state a store holds.
public struct StoredState: Sendable, Hashable {
    /// The client id, nil until the first start chose one.
    public var clientID: String?
    /// The next `mid` to assign (1 for a new client).
    public var nextMID: Int64
    /// Undecided mutations in `mid` order.
    public var mutations: [StoredMutation]
    /// Feeds with their rows and cursors.
    public var feeds: [StoredFeed]

    /// A state with nothing in it.
    public init(clientID: String? = nil, nextMID: Int64 = 1, mutations: [StoredMutation] = [], feeds: [StoredFeed] = []) {
        self.clientID = clientID
        self.nextMID = nextMID
        self.mutations = mutations
        self.feeds = feeds
    }
}

/// One undecided mutation.
public struct StoredMutation: Sendable, Hashable {
    /// Its `mid`.
    public var mid: Int64
    /// The mutator's name.
    public var name: String
    /// Its arguments (an object).
    public var args: JSONValue

    /// A mutation record.
    public init(mid: Int64, name: String, args: JSONValue) {
        self.mid = mid
        self.name = name
        self.args = args
    }
}

/// A row with its key.
public struct StoredRow: Sendable, Hashable {
    /// The key columns.
    public var key: JSONValue
    /// The row (published columns).
    public var row: JSONValue

    /// A keyed row.
    public init(key: JSONValue, row: JSONValue) {
        self.key = key
        self.row = row
    }
}

/// A feed's confirmed state: the rows the server sent up to `cursor`.
public struct StoredFeed: Sendable, Hashable {
    /// The feed's spec.
    public var spec: FeedSpec
    /// The key columns of the collection, as learned (empty for topics).
    public var keyColumns: [String]
    /// The saved cursor; nil before the first snapshot completed.
    public var cursor: String?
    /// The confirmed rows.
    public var rows: [StoredRow]

    /// A feed record.
    public init(spec: FeedSpec, keyColumns: [String], cursor: String?, rows: [StoredRow]) {
        self.spec = spec
        self.keyColumns = keyColumns
        self.cursor = cursor
        self.rows = rows
    }
}

/// One atomic write.
public struct StoreBatch: Sendable, Hashable {
    /// A change to one feed.
    public enum FeedWrite: Sendable, Hashable {
        /// Replace all of the feed's rows and its cursor (a completed snapshot).
        case replace(spec: FeedSpec, keyColumns: [String], cursor: String?, rows: [StoredRow])
        /// Upsert and delete rows (by key string) and set the cursor.
        case apply(spec: FeedSpec, keyColumns: [String], cursor: String?, upserts: [StoredRow], deletes: [JSONValue])
        /// Forget the feed.
        case remove(spec: FeedSpec)
    }

    /// Set the client id.
    public var clientID: String?
    /// Set the next `mid`.
    public var nextMID: Int64?
    /// Mutations to delete (decided, or renumbered).
    public var deleteMutations: [Int64] = []
    /// Mutations to insert (new, or renumbered), applied after the deletions.
    public var insertMutations: [StoredMutation] = []
    /// Feed writes, in order.
    public var feeds: [FeedWrite] = []

    /// An empty batch.
    public init() {}

    /// Whether the batch writes nothing.
    public var isEmpty: Bool {
        clientID == nil && nextMID == nil && deleteMutations.isEmpty && insertMutations.isEmpty && feeds.isEmpty
    }
}
