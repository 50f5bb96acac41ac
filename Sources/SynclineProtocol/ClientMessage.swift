/// A message from client to server, decoded and validated against protocol v1.
public enum ClientMessage: Hashable, Sendable {
    case hello(Hello)
    case subscribe(Subscribe)
    case unsubscribe(id: String)
    case mutate(Mutate)
    case auth(token: String)
    case ping(t: JSONValue?)

    public struct Hello: Hashable, Sendable {
        public var clientID: String
        public var token: String?
        public init(clientID: String, token: String?) {
            self.clientID = clientID
            self.token = token
        }
    }

    public struct Subscribe: Hashable, Sendable {
        public enum Target: Hashable, Sendable {
            /// Column → scalar; all must hold. Order is the client's; canonical order comes later.
            case collection(name: String, filter: [String: JSONValue])
            case topic(String)
        }
        public var id: String
        public var target: Target
        /// The raw `after` text; parsed by the server, which knows the epoch.
        public var after: String?
        /// `"conflate": true` (collections only): while the connection's outbound queue is over
        /// the server's threshold, the feed's pending changes to one row key merge into one
        /// (protocol §3.8). False: the exact stream.
        public var conflate: Bool
        public init(id: String, target: Target, after: String?, conflate: Bool = false) {
            self.id = id
            self.target = target
            self.after = after
            self.conflate = conflate
        }
    }

    public struct Mutate: Hashable, Sendable {
        public var mid: Int64
        public var name: String
        public var args: JSONValue
        public init(mid: Int64, name: String, args: JSONValue) {
            self.mid = mid
            self.name = name
            self.args = args
        }
    }
}

/// Why a client message was refused, with what the `error` reply needs.
public struct ClientMessageError: Error, Hashable, Sendable {
    public var code: ErrorCode
    public var message: String
    /// The request's `id` or `mid` exactly as sent, when it had one.
    public var ref: JSONValue?
    /// The message's `type`, when it had a string one.
    public var type: String?

    public init(code: ErrorCode, message: String, ref: JSONValue? = nil, type: String? = nil) {
        self.code = code
        self.message = message
        self.ref = ref
        self.type = type
    }
}

extension ClientMessage {
    /// Longest subscription id, collection, topic, column or mutator name accepted.
    public static let maximumNameLength = 200
    /// Most `where` columns in one subscription.
    public static let maximumFilterColumns = 16

    /// Decodes one text frame. Unknown fields are ignored; unknown `type` is `unknown_type`;
    /// anything that is not a JSON object with a string `type` is `bad_request`.
    public static func decode(_ bytes: UnsafeBufferPointer<UInt8>) throws(ClientMessageError) -> ClientMessage {
        let value: JSONValue
        do throws(JSONParseError) {
            value = try JSONParser.parse(bytes)
        } catch {
            throw ClientMessageError(code: .badRequest, message: "message is not valid JSON: \(error)")
        }
        return try decode(value)
    }

    public static func decode(_ text: String) throws(ClientMessageError) -> ClientMessage {
        let bytes = Array(text.utf8)
        return try bytes.withUnsafeBufferPointer { buffer throws(ClientMessageError) in try decode(buffer) }
    }

    public static func decode(_ value: JSONValue) throws(ClientMessageError) -> ClientMessage {
        guard case .object = value else {
            throw ClientMessageError(code: .badRequest, message: "message must be a JSON object")
        }
        guard let type = value["type"]?.stringValue else {
            throw ClientMessageError(code: .badRequest, message: "message needs a string field 'type'")
        }
        func fail(_ message: String, ref: JSONValue? = nil, code: ErrorCode = .badRequest) -> ClientMessageError {
            ClientMessageError(code: code, message: message, ref: ref, type: type)
        }
        func name(_ field: String, of v: JSONValue?, ref: JSONValue? = nil) throws(ClientMessageError) -> String {
            guard let s = v?.stringValue else { throw fail("'\(field)' must be a string", ref: ref) }
            guard !s.isEmpty, s.utf8.count <= maximumNameLength else {
                throw fail("'\(field)' must be 1–\(maximumNameLength) bytes", ref: ref)
            }
            return s
        }
        switch type {
        case "hello":
            guard let clientID = value["client_id"]?.stringValue else {
                throw fail("hello needs a string 'client_id'")
            }
            guard (1...64).contains(clientID.utf8.count), clientID.utf8.allSatisfy(isClientIDByte) else {
                throw fail("'client_id' must be 1–64 characters of [A-Za-z0-9_-]")
            }
            var token: String?
            switch value["token"] {
            case nil, .null?: token = nil
            case .string(let t)?: token = t
            default: throw fail("'token' must be a string")
            }
            return .hello(Hello(clientID: clientID, token: token))

        case "subscribe":
            let ref = value["id"]
            let id = try name("id", of: ref, ref: ref)
            var after: String?
            switch value["after"] {
            case nil, .null?: after = nil
            case .string(let a)?: after = a
            default: throw fail("'after' must be a cursor string", ref: ref)
            }
            var conflate = false
            switch value["conflate"] {
            case nil, .null?: break
            case .bool(let b)?: conflate = b
            default: throw fail("'conflate' must be a boolean", ref: ref)
            }
            // `null` means absent, as for every optional field.
            let collection = value["collection"] == .null ? nil : value["collection"]
            let topic = value["topic"] == .null ? nil : value["topic"]
            switch (collection, topic) {
            case (.some, .some): throw fail("give either 'collection' or 'topic', not both", ref: ref)
            case (nil, nil): throw fail("subscribe needs 'collection' or 'topic'", ref: ref)
            case (let c?, nil):
                let collectionName = try name("collection", of: c, ref: ref)
                var filter: [String: JSONValue] = [:]
                switch value["where"] {
                case nil, .null?: break
                case .object(let members)?:
                    guard members.count <= maximumFilterColumns else {
                        throw fail("'where' may name at most \(maximumFilterColumns) columns", ref: ref)
                    }
                    for (column, v) in members {
                        guard v.isScalar else {
                            throw fail("'where.\(column)' must be a string, number, boolean or null", ref: ref)
                        }
                        guard !column.isEmpty, column.utf8.count <= maximumNameLength else {
                            throw fail("'where' has an invalid column name", ref: ref)
                        }
                        filter[column] = v
                    }
                default: throw fail("'where' must be an object of column to scalar", ref: ref)
                }
                return .subscribe(Subscribe(id: id, target: .collection(name: collectionName, filter: filter), after: after,
                                            conflate: conflate))
            case (nil, let t?):
                if value["where"] != nil, value["where"] != .null {
                    throw fail("'where' applies to collections, not topics", ref: ref)
                }
                // Topic messages never merge (each has its own cursor and payload).
                if conflate { throw fail("'conflate' applies to collections, not topics", ref: ref) }
                return .subscribe(Subscribe(id: id, target: .topic(try name("topic", of: t, ref: ref)), after: after))
            }

        case "unsubscribe":
            let ref = value["id"]
            return .unsubscribe(id: try name("id", of: ref, ref: ref))

        case "mutate":
            let ref = value["mid"]
            guard case .number(let text)? = ref, let mid = Int64(text), mid >= 1 else {
                throw fail("'mid' must be an integer ≥ 1", ref: ref)
            }
            let mutator = try name("name", of: value["name"], ref: ref)
            guard let args = value["args"], case .object = args else {
                throw fail("'args' must be an object", ref: ref)
            }
            return .mutate(Mutate(mid: mid, name: mutator, args: args))

        case "auth":
            guard let token = value["token"]?.stringValue else { throw fail("auth needs a string 'token'") }
            return .auth(token: token)

        case "ping":
            return .ping(t: value["t"])

        default:
            throw fail("unknown message type '\(type.prefix(64))'", code: .unknownType)
        }
    }

    private static func isClientIDByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x5F
    }
}
