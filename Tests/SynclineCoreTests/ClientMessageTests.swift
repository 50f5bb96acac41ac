import SynclineProtocol
import Testing

@Suite("ClientMessage.decode")
struct ClientMessageTests {
    // MARK: - helpers

    private func decodeError(_ text: String) -> ClientMessageError? {
        do throws(ClientMessageError) {
            let message = try ClientMessage.decode(text)
            Issue.record("decoded \(text) as \(message)")
            return nil
        } catch {
            return error
        }
    }

    private func decodeError(bytes: [UInt8]) -> ClientMessageError? {
        do throws(ClientMessageError) {
            let message = try bytes.withUnsafeBufferPointer { buffer throws(ClientMessageError) in try ClientMessage.decode(buffer) }
            Issue.record("decoded \(bytes) as \(message)")
            return nil
        } catch {
            return error
        }
    }

    // MARK: - every message type

    @Test func hello() throws {
        #expect(try ClientMessage.decode(#"{"type":"hello","client_id":"dev-1_A","token":"jwt.x.y"}"#)
            == .hello(.init(clientID: "dev-1_A", token: "jwt.x.y")))
        #expect(try ClientMessage.decode(#"{"type":"hello","client_id":"c"}"#) == .hello(.init(clientID: "c", token: nil)))
        #expect(try ClientMessage.decode(#"{"type":"hello","client_id":"c","token":null}"#) == .hello(.init(clientID: "c", token: nil)))
    }

    @Test func subscribeToCollection() throws {
        let message = try ClientMessage.decode(
            #"{"type":"subscribe","id":"s1","collection":"accounts","where":{"owner":"u1","amount":1250.00,"open":true,"closed_at":null},"after":"ab12.42"}"#)
        let expected = ClientMessage.subscribe(.init(
            id: "s1",
            target: .collection(name: "accounts", filter: [
                "owner": .string("u1"), "amount": .number("1250.00"), "open": .bool(true), "closed_at": .null,
            ]),
            after: "ab12.42"))
        #expect(message == expected)
    }

    @Test func subscribeToCollectionWithoutWhere() throws {
        #expect(try ClientMessage.decode(#"{"type":"subscribe","id":"s1","collection":"todos"}"#)
            == .subscribe(.init(id: "s1", target: .collection(name: "todos", filter: [:]), after: nil)))
        #expect(try ClientMessage.decode(#"{"type":"subscribe","id":"s1","collection":"todos","where":null,"after":null}"#)
            == .subscribe(.init(id: "s1", target: .collection(name: "todos", filter: [:]), after: nil)))
        #expect(try ClientMessage.decode(#"{"type":"subscribe","id":"s1","collection":"todos","where":{}}"#)
            == .subscribe(.init(id: "s1", target: .collection(name: "todos", filter: [:]), after: nil)))
    }

    @Test func subscribeToTopic() throws {
        #expect(try ClientMessage.decode(#"{"type":"subscribe","id":"t1","topic":"chat:room-1","after":"ab.7"}"#)
            == .subscribe(.init(id: "t1", target: .topic("chat:room-1"), after: "ab.7")))
        #expect(try ClientMessage.decode(#"{"type":"subscribe","id":"t1","topic":"chat","where":null}"#)
            == .subscribe(.init(id: "t1", target: .topic("chat"), after: nil)))
    }

    @Test func unsubscribe() throws {
        #expect(try ClientMessage.decode(#"{"type":"unsubscribe","id":"s1"}"#) == .unsubscribe(id: "s1"))
    }

    @Test func mutate() throws {
        let message = try ClientMessage.decode(#"{"type":"mutate","mid":7,"name":"transfer","args":{"amount":1250.00,"to":"b"}}"#)
        #expect(message == .mutate(.init(mid: 7, name: "transfer",
                                         args: .object([("amount", .number("1250.00")), ("to", .string("b"))]))))
        #expect(try ClientMessage.decode(#"{"type":"mutate","mid":9223372036854775807,"name":"n","args":{}}"#)
            == .mutate(.init(mid: .max, name: "n", args: .object([]))))
    }

    @Test func auth() throws {
        #expect(try ClientMessage.decode(#"{"type":"auth","token":"new.jwt"}"#) == .auth(token: "new.jwt"))
    }

    @Test func ping() throws {
        #expect(try ClientMessage.decode(#"{"type":"ping"}"#) == .ping(t: nil))
        #expect(try ClientMessage.decode(#"{"type":"ping","t":1712345678901.5}"#) == .ping(t: .number("1712345678901.5")))
        #expect(try ClientMessage.decode(#"{"type":"ping","t":{"a":[1]}}"#) == .ping(t: .object([("a", .array([.number("1")]))])))
    }

    @Test func bufferEntryPoint() throws {
        let bytes = Array(#"{"type":"unsubscribe","id":"é"}"#.utf8)
        let message = try bytes.withUnsafeBufferPointer { buffer throws(ClientMessageError) in try ClientMessage.decode(buffer) }
        #expect(message == .unsubscribe(id: "é"))
    }

    // MARK: - forward compatibility

    @Test func unknownFieldsAreIgnored() throws {
        #expect(try ClientMessage.decode(#"{"v":2,"type":"hello","client_id":"c","extra":{"deep":[1,{"x":null}]},"token":"t"}"#)
            == .hello(.init(clientID: "c", token: "t")))
        #expect(try ClientMessage.decode(#"{"type":"unsubscribe","id":"s1","reason":"bored","n":1.5}"#) == .unsubscribe(id: "s1"))
        #expect(try ClientMessage.decode(#"{"type":"ping","future":[true]}"#) == .ping(t: nil))
        #expect(try ClientMessage.decode(#"{"type":"mutate","mid":1,"name":"n","args":{},"optimistic":true}"#)
            == .mutate(.init(mid: 1, name: "n", args: .object([]))))
    }

    @Test(arguments: ["frobnicate", "HELLO", "Hello", "", "welcome", "changes"])
    func unknownTypeIsUnknownType(_ type: String) throws {
        let error = try #require(decodeError(#"{"type":"# + JSONValue.quoted(type) + #","id":"s1"}"#))
        #expect(error.code == .unknownType)
        #expect(error.type == type)
    }

    @Test(arguments: ["[]", "1", #""hello""#, "null", "true", "not json", "", "{", #"[{"type":"hello","client_id":"c"}]"#])
    func nonObjectIsBadRequest(_ text: String) throws {
        let error = try #require(decodeError(text))
        #expect(error.code == .badRequest)
        #expect(error.type == nil)
        #expect(error.ref == nil)
    }

    @Test(arguments: ["{}", #"{"type":1}"#, #"{"type":null}"#, #"{"type":["hello"]}"#, #"{"Type":"hello","client_id":"c"}"#, #"{"client_id":"c"}"#])
    func missingOrNonStringTypeIsBadRequest(_ text: String) throws {
        let error = try #require(decodeError(text))
        #expect(error.code == .badRequest)
        #expect(error.type == nil)
    }

    @Test func invalidUTF8FrameIsBadRequest() throws {
        let error = try #require(decodeError(bytes: [0x7B, 0x22, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3A, 0x22, 0xFF, 0x22, 0x7D]))
        #expect(error.code == .badRequest)
    }

    // MARK: - hello

    @Test(arguments: ["a", "Z", "0", "-", "_", "A-z_0-9", String(repeating: "x", count: 64)])
    func validClientIDs(_ id: String) throws {
        #expect(try ClientMessage.decode(#"{"type":"hello","client_id":"# + JSONValue.quoted(id) + "}")
            == .hello(.init(clientID: id, token: nil)))
    }

    @Test(arguments: [
        #""""#, JSONValue.quoted(String(repeating: "x", count: 65)), #""a b""#, #""a.b""#, #""a/b""#, #""é""#,
        #""a\u0000""#, #""a\n""#, #""a+b""#, "5", "null", "true", #"["a"]"#,
    ])
    func invalidClientIDsAreBadRequest(_ idJSON: String) throws {
        let error = try #require(decodeError(#"{"type":"hello","client_id":"# + idJSON + "}"))
        #expect(error.code == .badRequest)
        #expect(error.type == "hello")
    }

    @Test func helloWithoutClientIDIsBadRequest() throws {
        let error = try #require(decodeError(#"{"type":"hello","token":"t"}"#))
        #expect(error.code == .badRequest)
        #expect(error.type == "hello")
    }

    @Test(arguments: ["1", "true", "{}", #"["t"]"#])
    func helloWithNonStringTokenIsBadRequest(_ tokenJSON: String) throws {
        let error = try #require(decodeError(#"{"type":"hello","client_id":"c","token":"# + tokenJSON + "}"))
        #expect(error.code == .badRequest)
    }

    // MARK: - subscribe

    @Test func subscribeWithBothCollectionAndTopicIsBadRequestWithRef() throws {
        let error = try #require(decodeError(#"{"type":"subscribe","id":"s1","collection":"todos","topic":"chat"}"#))
        #expect(error.code == .badRequest)
        #expect(error.ref == .string("s1"))
        #expect(error.type == "subscribe")
    }

    @Test func subscribeWithNeitherCollectionNorTopicIsBadRequestWithRef() throws {
        let error = try #require(decodeError(#"{"type":"subscribe","id":"s-2","where":{"a":1}}"#))
        #expect(error.code == .badRequest)
        #expect(error.ref == .string("s-2"))
    }

    @Test func subscribeRefIsTheIDExactlyAsSent() throws {
        // A non-string id is refused, and `ref` carries it verbatim.
        let number = try #require(decodeError(#"{"type":"subscribe","id":42.0,"collection":"todos"}"#))
        #expect(number.code == .badRequest)
        #expect(number.ref == .number("42.0"))
        let object = try #require(decodeError(#"{"type":"subscribe","id":{"x":1},"topic":"t"}"#))
        #expect(object.ref == .object([("x", .number("1"))]))
        let missing = try #require(decodeError(#"{"type":"subscribe","collection":"todos"}"#))
        #expect(missing.code == .badRequest)
        #expect(missing.ref == nil)
    }

    @Test func subscribeIDLengthLimits() throws {
        let longest = String(repeating: "i", count: ClientMessage.maximumNameLength)
        #expect(try ClientMessage.decode(#"{"type":"subscribe","id":"# + JSONValue.quoted(longest) + #","topic":"t"}"#)
            == .subscribe(.init(id: longest, target: .topic("t"), after: nil)))
        let tooLong = longest + "i"
        let error = try #require(decodeError(#"{"type":"subscribe","id":"# + JSONValue.quoted(tooLong) + #","topic":"t"}"#))
        #expect(error.code == .badRequest)
        #expect(error.ref == .string(tooLong))
        let empty = try #require(decodeError(#"{"type":"subscribe","id":"","topic":"t"}"#))
        #expect(empty.ref == .string(""))
    }

    @Test(arguments: [#"[1]"#, #"{"b":1}"#, #"[]"#, #"{}"#])
    func whereWithNonScalarValueIsBadRequest(_ valueJSON: String) throws {
        let error = try #require(decodeError(#"{"type":"subscribe","id":"s1","collection":"todos","where":{"a":1,"b":"# + valueJSON + "}}"))
        #expect(error.code == .badRequest)
        #expect(error.ref == .string("s1"))
    }

    @Test(arguments: [#"[]"#, #"[{"a":1}]"#, "1", #""a=1""#, "true"])
    func whereThatIsNotAnObjectIsBadRequest(_ whereJSON: String) throws {
        let error = try #require(decodeError(#"{"type":"subscribe","id":"s1","collection":"todos","where":"# + whereJSON + "}"))
        #expect(error.code == .badRequest)
        #expect(error.ref == .string("s1"))
    }

    @Test func whereColumnLimits() throws {
        func subscribe(columns: Int) -> String {
            let members = (0..<columns).map { "\"c\($0)\":\($0)" }.joined(separator: ",")
            return #"{"type":"subscribe","id":"s1","collection":"todos","where":{"# + members + "}}"
        }
        let sixteen = try ClientMessage.decode(subscribe(columns: ClientMessage.maximumFilterColumns))
        guard case .subscribe(let request) = sixteen, case .collection(_, let filter) = request.target else {
            Issue.record("unexpected \(sixteen)")
            return
        }
        #expect(filter.count == 16)
        #expect(filter["c15"] == .number("15"))
        let error = try #require(decodeError(subscribe(columns: ClientMessage.maximumFilterColumns + 1)))
        #expect(error.code == .badRequest)
        #expect(error.ref == .string("s1"))
        let emptyColumn = try #require(decodeError(#"{"type":"subscribe","id":"s1","collection":"todos","where":{"":1}}"#))
        #expect(emptyColumn.code == .badRequest)
    }

    @Test func whereOnTopicIsBadRequest() throws {
        let error = try #require(decodeError(#"{"type":"subscribe","id":"t1","topic":"chat","where":{"a":1}}"#))
        #expect(error.code == .badRequest)
        #expect(error.ref == .string("t1"))
    }

    @Test(arguments: ["1", "true", "{}", #"["ab.1"]"#])
    func nonStringAfterIsBadRequest(_ afterJSON: String) throws {
        let error = try #require(decodeError(#"{"type":"subscribe","id":"s1","collection":"todos","after":"# + afterJSON + "}"))
        #expect(error.code == .badRequest)
        #expect(error.ref == .string("s1"))
    }

    @Test(arguments: [#""""#, "1", "null", #"["todos"]"#])
    func invalidCollectionOrTopicNameIsBadRequest(_ nameJSON: String) throws {
        let collection = try #require(decodeError(#"{"type":"subscribe","id":"s1","collection":"# + nameJSON + "}"))
        #expect(collection.code == .badRequest)
        #expect(collection.ref == .string("s1"))
        let topic = try #require(decodeError(#"{"type":"subscribe","id":"s1","topic":"# + nameJSON + "}"))
        #expect(topic.code == .badRequest)
        #expect(topic.ref == .string("s1"))
    }

    // MARK: - unsubscribe

    @Test func unsubscribeWithBadIDIsBadRequestWithRef() throws {
        let number = try #require(decodeError(#"{"type":"unsubscribe","id":7}"#))
        #expect(number.code == .badRequest)
        #expect(number.ref == .number("7"))
        #expect(number.type == "unsubscribe")
        let missing = try #require(decodeError(#"{"type":"unsubscribe"}"#))
        #expect(missing.code == .badRequest)
        #expect(missing.ref == nil)
    }

    // MARK: - mutate

    @Test(arguments: [
        ("0", JSONValue.number("0")),
        ("-1", .number("-1")),
        ("1.5", .number("1.5")),
        ("1.0", .number("1.0")),
        ("1e2", .number("1e2")),
        ("-0", .number("-0")),
        ("9223372036854775808", .number("9223372036854775808")),
        (#""1""#, .string("1")),
        ("true", .bool(true)),
        ("null", .null),
        ("[1]", .array([.number("1")])),
    ])
    func invalidMidIsBadRequestWithRefExactlyAsSent(_ midJSON: String, _ ref: JSONValue) throws {
        let error = try #require(decodeError(#"{"type":"mutate","mid":"# + midJSON + #","name":"transfer","args":{}}"#))
        #expect(error.code == .badRequest)
        #expect(error.ref == ref)
        #expect(error.type == "mutate")
    }

    @Test func missingMidIsBadRequestWithoutRef() throws {
        let error = try #require(decodeError(#"{"type":"mutate","name":"transfer","args":{}}"#))
        #expect(error.code == .badRequest)
        #expect(error.ref == nil)
    }

    @Test(arguments: ["[]", "1", #""{}""#, "null"])
    func nonObjectArgsIsBadRequestWithRef(_ argsJSON: String) throws {
        let error = try #require(decodeError(#"{"type":"mutate","mid":3,"name":"transfer","args":"# + argsJSON + "}"))
        #expect(error.code == .badRequest)
        #expect(error.ref == .number("3"))
    }

    @Test func missingArgsOrNameIsBadRequestWithRef() throws {
        let noArgs = try #require(decodeError(#"{"type":"mutate","mid":3,"name":"transfer"}"#))
        #expect(noArgs.code == .badRequest)
        #expect(noArgs.ref == .number("3"))
        let noName = try #require(decodeError(#"{"type":"mutate","mid":4,"args":{}}"#))
        #expect(noName.code == .badRequest)
        #expect(noName.ref == .number("4"))
        let emptyName = try #require(decodeError(#"{"type":"mutate","mid":5,"name":"","args":{}}"#))
        #expect(emptyName.ref == .number("5"))
    }

    // MARK: - auth

    @Test(arguments: [#"{"type":"auth"}"#, #"{"type":"auth","token":null}"#, #"{"type":"auth","token":1}"#])
    func authWithoutStringTokenIsBadRequest(_ text: String) throws {
        let error = try #require(decodeError(text))
        #expect(error.code == .badRequest)
        #expect(error.type == "auth")
    }
}
