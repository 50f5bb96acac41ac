import SynclineProtocol

/// What one change means for one feed.
public enum FeedEffect: Hashable, Sendable {
    /// The row is (now) in the feed: `insert` of the new key and row.
    case insert
    /// The row was and stays in the feed under the same key.
    case update
    /// The row left the feed (deleted, or updated out of the filter): `delete` of its old key.
    case delete
    /// The row stays in the feed but its key changed: `delete` of the old key, then `insert`.
    case rekey
    /// A TRUNCATE: the feed restarts with a fresh snapshot.
    case reset
    /// A topic message.
    case message
}

/// Feeds by key, and a hash index per (collection, column set) so that a change is matched by
/// lookups with its old and new filter images, never by scanning subscriptions.
///
/// A value type with no I/O: the server keeps one behind a lock and the tests drive it directly.
public struct SubscriptionIndex: Sendable {
    private struct Entry: Sendable {
        var key: FeedKey
        var references: Int
    }

    private var entries: [FeedID: Entry] = [:]
    private var idsByKey: [FeedKey: FeedID] = [:]
    /// collection → sorted column set → canonical values → feed.
    private var byCollection: [String: [[String]: [[JSONValue]: FeedID]]] = [:]
    private var byTopic: [String: FeedID] = [:]
    private var nextID: UInt64 = 1

    public init() {}

    public var feedCount: Int { entries.count }

    public func key(of id: FeedID) -> FeedKey? { entries[id]?.key }

    public func references(of id: FeedID) -> Int { entries[id]?.references ?? 0 }

    /// Adds one reference to the feed for `key`, creating it if needed.
    public mutating func retain(_ key: FeedKey) -> (id: FeedID, created: Bool) {
        if let id = idsByKey[key] {
            entries[id]!.references += 1
            return (id, false)
        }
        let id = FeedID(nextID)
        nextID += 1
        entries[id] = Entry(key: key, references: 1)
        idsByKey[key] = id
        switch key {
        case .collection(let name, let columns, let values):
            byCollection[name, default: [:]][columns, default: [:]][values] = id
        case .topic(let topic):
            byTopic[topic] = id
        }
        return (id, true)
    }

    /// Drops one reference; returns true when that was the last and the feed is gone.
    @discardableResult
    public mutating func release(_ id: FeedID) -> Bool {
        guard var entry = entries[id] else { return false }
        entry.references -= 1
        if entry.references > 0 {
            entries[id] = entry
            return false
        }
        entries[id] = nil
        idsByKey[entry.key] = nil
        switch entry.key {
        case .collection(let name, let columns, let values):
            byCollection[name]?[columns]?[values] = nil
            if byCollection[name]?[columns]?.isEmpty == true { byCollection[name]?[columns] = nil }
            if byCollection[name]?.isEmpty == true { byCollection[name] = nil }
        case .topic(let topic):
            byTopic[topic] = nil
        }
        return true
    }

    /// Calls `body` once per feed the change concerns, with what it means for that feed.
    public func match(_ change: ChangeRecord, _ body: (FeedID, FeedEffect) throws -> Void) rethrows {
        switch change.operation {
        case .policy:
            return  // carries no row: the hub holds and re-checks the feeds it maps instead
        case .message:
            if let topic = change.topic, let id = byTopic[topic] { try body(id, .message) }
        case .truncate:
            guard let name = change.collection, let sets = byCollection[name] else { return }
            for (_, feeds) in sets {
                for (_, id) in feeds { try body(id, .reset) }
            }
        case .insert, .update, .delete:
            guard let name = change.collection, let sets = byCollection[name] else { return }
            for (columns, feeds) in sets {
                let newID = change.operation == .delete ? nil : Self.lookup(feeds, columns, change.newMatch)
                let oldID = change.operation == .insert ? nil : Self.lookup(feeds, columns, change.oldMatch)
                switch (oldID, newID) {
                case (nil, nil):
                    break
                case let (old?, new?) where old == new:
                    try body(new, change.oldKey == nil ? .update : .rekey)
                case let (old, new):
                    if let old { try body(old, .delete) }
                    if let new { try body(new, .insert) }
                }
            }
        }
    }

    private static func lookup(_ feeds: [[JSONValue]: FeedID], _ columns: [String], _ image: [String: JSONValue]?) -> FeedID? {
        if columns.isEmpty { return feeds[[]] }
        guard let image else { return nil }
        var values: [JSONValue] = []
        values.reserveCapacity(columns.count)
        for column in columns {
            guard let v = image[column] else { return nil }
            values.append(v)
        }
        return feeds[values]
    }
}
