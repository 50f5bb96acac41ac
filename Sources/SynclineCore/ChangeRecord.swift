import SynclineProtocol

/// One entry of the change log as the tail read it: a row change, a TRUNCATE, or a topic message.
///
/// Row images stay the JSON text Postgres rendered (`::text`); only the small filter images are
/// decoded, because matching needs their values.
public struct ChangeRecord: Sendable {
    public enum Operation: Sendable, Hashable {
        case insert, update, delete
        case truncate
        case message
        /// An input of a feed policy changed (`syncline.depend_policy`): `collection` is the
        /// dependent collection, `newMatch` its one `{filter column: value}`. Matches no feed;
        /// the hub re-checks the feeds it maps (`PolicyChange`) before they get the batch.
        case policy
    }

    public var position: Int64
    /// The writing transaction (`xid8`); positions of one transaction are contiguous.
    public var transaction: UInt64
    public var operation: Operation
    /// Collection name for row changes, truncates and policy changes; nil for messages.
    public var collection: String?
    /// Topic for messages; nil otherwise.
    public var topic: String?
    /// Key object (the new key for insert/update, the old one for delete).
    public var key: String?
    /// The old key when an update changed it.
    public var oldKey: String?
    /// Published columns of the new row (insert/update), or the message payload.
    public var row: String?
    /// Filterable columns of the new and old images.
    public var newMatch: [String: JSONValue]?
    public var oldMatch: [String: JSONValue]?

    public init(
        position: Int64, transaction: UInt64, operation: Operation, collection: String?, topic: String?,
        key: String?, oldKey: String?, row: String?, newMatch: [String: JSONValue]?, oldMatch: [String: JSONValue]?
    ) {
        self.position = position
        self.transaction = transaction
        self.operation = operation
        self.collection = collection
        self.topic = topic
        self.key = key
        self.oldKey = oldKey
        self.row = row
        self.newMatch = newMatch
        self.oldMatch = oldMatch
    }

    /// Decodes a filter image (`{"col": value, ...}` as Postgres rendered it).
    public static func decodeMatch(_ text: String?) -> [String: JSONValue]? {
        guard let text, case .object(let members)? = try? JSONParser.parse(text) else { return nil }
        var out: [String: JSONValue] = [:]
        out.reserveCapacity(members.count)
        for (k, v) in members { out[k] = v }
        return out
    }
}
