import SynclineProtocol

/// What a feed delivers: a collection under a canonical filter, or a topic.
///
/// Subscriptions with equal keys share one feed: matched once and encoded once per change.
public enum FeedKey: Hashable, Sendable, CustomStringConvertible {
    /// `columns` sorted; `values[i]` is the canonical value (Postgres's rendering through the
    /// column's type) for `columns[i]`; `.null` means IS NULL.
    case collection(name: String, columns: [String], values: [JSONValue])
    case topic(String)

    /// Builds a collection key from a canonical filter, sorting its columns.
    public static func collection(_ name: String, filter: [String: JSONValue]) -> FeedKey {
        let columns = filter.keys.sorted()
        return .collection(name: name, columns: columns, values: columns.map { filter[$0]! })
    }

    public var collectionName: String? {
        if case .collection(let name, _, _) = self { return name }
        return nil
    }

    /// The filter as a JSON object text (canonical values), as the snapshot reader takes it.
    public var filterJSON: String {
        guard case .collection(_, let columns, let values) = self else { return "{}" }
        return JSONValue.object(Array(zip(columns, values))).jsonText
    }

    public var description: String {
        switch self {
        case .collection(let name, let columns, let values):
            return name + "{" + zip(columns, values).map { "\($0)=\($1.jsonText)" }.joined(separator: ",") + "}"
        case .topic(let topic): return "topic:" + topic
        }
    }
}

/// A feed's identity inside one server process.
public struct FeedID: Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "feed#\(rawValue)" }
}
