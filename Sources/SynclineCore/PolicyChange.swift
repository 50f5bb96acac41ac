import SynclineProtocol

/// A change of what a collection's feed policy reads (a `policy` record of the change log): the
/// feeds of `collection` whose filter pins `column` to `value` — or does not pin `column`, and so
/// cannot exclude it — must be re-checked before they get the commit that carries it.
public struct PolicyChange: Sendable, Hashable {
    public var collection: String
    public var column: String
    public var value: JSONValue

    public init(collection: String, column: String, value: JSONValue) {
        self.collection = collection
        self.column = column
        self.value = value
    }

    /// The change a `policy` record names; nil for any other record (or a malformed one).
    public init?(_ record: ChangeRecord) {
        guard record.operation == .policy, let collection = record.collection,
              let match = record.newMatch, match.count == 1, let (column, value) = match.first
        else { return nil }
        self.init(collection: collection, column: column, value: value)
    }

    /// The policy changes among `records` (usually none: one pass, no allocation then).
    public static func all(in records: [ChangeRecord]) -> [PolicyChange] {
        var out: [PolicyChange] = []
        for record in records where record.operation == .policy {
            if let change = PolicyChange(record) { out.append(change) }
        }
        return out
    }

    /// Whether a feed with `key` may be affected: same collection, and its filter either pins
    /// `column` to `value` or does not pin `column` at all. Topic feeds never are.
    public func maps(_ key: FeedKey) -> Bool {
        guard case .collection(let name, let columns, let values) = key, name == collection else { return false }
        guard let i = columns.firstIndex(of: column) else { return true }
        return values[i] == value
    }
}
