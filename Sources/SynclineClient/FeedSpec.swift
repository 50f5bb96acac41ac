import SynclineProtocol

/// What a feed asks the server for: a collection filtered on columns, or a topic.
public enum FeedSpec: Hashable, Sendable {
    /// Rows of `name` whose columns equal `filter` (AND; `null` means IS NULL).
    case collection(name: String, filter: [String: JSONValue])
    /// Messages published to a topic.
    case topic(String)

    /// The stable local name of the feed: the store keeps its rows and cursor under it.
    public var storageKey: String {
        switch self {
        case .collection(let name, let filter):
            let members = filter.map { ($0.key, $0.value) }
            return "c:\(name):\(JSONValue.object(members).keyString)"
        case .topic(let topic):
            return "t:\(topic)"
        }
    }

    /// The collection's name, nil for a topic.
    public var collection: String? {
        if case .collection(let name, _) = self { return name }
        return nil
    }

    /// The spec as JSON, for storing.
    var json: JSONValue {
        switch self {
        case .collection(let name, let filter):
            return .object([("collection", .string(name)), ("where", .object(filter.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }))])
        case .topic(let topic):
            return .object([("topic", .string(topic))])
        }
    }

    /// The spec back from `json`; nil for anything else.
    init?(json: JSONValue) {
        if let topic = json["topic"]?.stringValue {
            self = .topic(topic)
        } else if let name = json["collection"]?.stringValue, let members = json["where"]?.members {
            self = .collection(name: name, filter: Dictionary(members, uniquingKeysWith: { $1 }))
        } else {
            return nil
        }
    }

    /// The `subscribe` message for wire id `id`, resuming after `cursor` when given.
    func subscribeMessage(id: String, after cursor: String?) -> String {
        var members: [(String, JSONValue)] = [("type", "subscribe"), ("id", .string(id))]
        switch self {
        case .collection(let name, let filter):
            members.append(("collection", .string(name)))
            if !filter.isEmpty { members.append(("where", .object(filter.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }))) }
        case .topic(let topic):
            members.append(("topic", .string(topic)))
        }
        if let cursor { members.append(("after", .string(cursor))) }
        return JSONValue.object(members).jsonText
    }
}
