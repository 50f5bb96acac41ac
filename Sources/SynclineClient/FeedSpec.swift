import SynclineProtocol

/// What a feed asks the server for: a collection filtered on columns, or a topic.
public enum FeedSpec: Hashable, Sendable {
    /// Rows of `name` whose columns equal `filter` (AND; `null` means IS NULL). With `conflate`,
    /// the server may merge the feed's pending changes by key while the connection is behind
    /// (protocol §3.8): fewer intermediate states, the same rows and cursor.
    case collection(name: String, filter: [String: JSONValue], conflate: Bool = false)
    /// Messages published to a topic.
    case topic(String)

    /// The stable local name of the feed: the store keeps its rows and cursor under it.
    public var storageKey: String {
        switch self {
        case .collection(let name, let filter, let conflate):
            let members = filter.map { ($0.key, $0.value) }
            // A conflating feed is its own feed: an exact query of the same filter keeps every change.
            return "c:\(name):\(JSONValue.object(members).keyString)" + (conflate ? ":conflate" : "")
        case .topic(let topic):
            return "t:\(topic)"
        }
    }

    /// The collection's name, nil for a topic.
    public var collection: String? {
        if case .collection(let name, _, _) = self { return name }
        return nil
    }

    /// The spec as JSON, for storing.
    var json: JSONValue {
        switch self {
        case .collection(let name, let filter, let conflate):
            var members: [(String, JSONValue)] = [
                ("collection", .string(name)), ("where", .object(filter.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })),
            ]
            if conflate { members.append(("conflate", .bool(true))) }
            return .object(members)
        case .topic(let topic):
            return .object([("topic", .string(topic))])
        }
    }

    /// The spec back from `json`; nil for anything else.
    init?(json: JSONValue) {
        if let topic = json["topic"]?.stringValue {
            self = .topic(topic)
        } else if let name = json["collection"]?.stringValue, let members = json["where"]?.members {
            self = .collection(name: name, filter: Dictionary(members, uniquingKeysWith: { $1 }),
                               conflate: json["conflate"] == .bool(true))
        } else {
            return nil
        }
    }

    /// The `subscribe` message for wire id `id`, resuming after `cursor` when given.
    func subscribeMessage(id: String, after cursor: String?) -> String {
        var members: [(String, JSONValue)] = [("type", "subscribe"), ("id", .string(id))]
        switch self {
        case .collection(let name, let filter, let conflate):
            members.append(("collection", .string(name)))
            if !filter.isEmpty { members.append(("where", .object(filter.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }))) }
            if conflate { members.append(("conflate", .bool(true))) }
        case .topic(let topic):
            members.append(("topic", .string(topic)))
        }
        if let cursor { members.append(("after", .string(cursor))) }
        return JSONValue.object(members).jsonText
    }
}
