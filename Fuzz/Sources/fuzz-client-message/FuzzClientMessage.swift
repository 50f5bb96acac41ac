import SynclineProtocol

/// Any bytes, as one text frame's payload: `ClientMessage.decode` either refuses them with a
/// protocol error code (`bad_request` or `unknown_type`) whose `type`/`ref` are what the client
/// sent, or returns a message within the protocol's limits that encodes back to JSON decoding to
/// the same message.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClientMessage(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    let json = try? JSONParser.parse(input)
    let sentType = json?["type"]?.stringValue
    let message: ClientMessage
    do throws(ClientMessageError) {
        message = try ClientMessage.decode(input)
    } catch {
        check(error, json: json, sentType: sentType)
        return 0
    }
    guard let json, case .object = json, let sentType else { fatalError("accepted something that is not an object with a string type") }
    guard name(of: message) == sentType else { fatalError("type '\(sentType)' decoded as \(message)") }
    checkLimits(message)
    let encoded = encode(message)
    do throws(ClientMessageError) {
        let again = try ClientMessage.decode(encoded)
        guard again == message else { fatalError("encode ↔ decode changed \(message) into \(again) via \(encoded)") }
    } catch {
        fatalError("the encoding of an accepted message is refused (\(error.message)): \(encoded)")
    }
    return 0
}

/// Errors carry what the `error` reply needs, and never more than a short message.
func check(_ error: ClientMessageError, json: JSONValue?, sentType: String?) {
    guard !error.message.isEmpty else { fatalError("empty error message") }
    // The reply echoes the message: a hostile frame must not make it big.
    guard error.message.utf8.count <= 512 else { fatalError("error message of \(error.message.utf8.count) bytes: \(error.message.prefix(200))…") }
    switch error.code {
    case .badRequest: break
    case .unknownType:
        guard let sentType, !knownTypes.contains(sentType) else { fatalError("unknown_type for type \(String(describing: sentType))") }
    default:
        fatalError("decode failed with code \(error.code)")
    }
    guard error.type == sentType else {
        fatalError("error.type \(String(describing: error.type)) but the message's type is \(String(describing: sentType))")
    }
    let expectedRef: JSONValue?
    switch sentType {
    case "subscribe", "unsubscribe": expectedRef = json?["id"]
    case "mutate": expectedRef = json?["mid"]
    default: expectedRef = nil
    }
    guard error.ref == expectedRef else { fatalError("ref \(String(describing: error.ref)), expected \(String(describing: expectedRef))") }
}

let knownTypes: Set<String> = ["hello", "subscribe", "unsubscribe", "mutate", "auth", "ping"]

func name(of message: ClientMessage) -> String {
    switch message {
    case .hello: "hello"
    case .subscribe: "subscribe"
    case .unsubscribe: "unsubscribe"
    case .mutate: "mutate"
    case .auth: "auth"
    case .ping: "ping"
    }
}

func validName(_ s: String) -> Bool {
    !s.isEmpty && s.utf8.count <= ClientMessage.maximumNameLength
}

func checkLimits(_ message: ClientMessage) {
    switch message {
    case .hello(let hello):
        let idBytes = hello.clientID.utf8
        let allowed = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-".utf8)
        guard (1...64).contains(idBytes.count), idBytes.allSatisfy(allowed.contains) else { fatalError("client_id \(hello.clientID.debugDescription) accepted") }
    case .subscribe(let subscribe):
        guard validName(subscribe.id) else { fatalError("subscription id \(subscribe.id.debugDescription) accepted") }
        switch subscribe.target {
        case .collection(let collection, let filter):
            guard validName(collection) else { fatalError("collection \(collection.debugDescription) accepted") }
            guard filter.count <= ClientMessage.maximumFilterColumns else { fatalError("\(filter.count) where columns accepted") }
            for (column, value) in filter where !validName(column) || !value.isScalar {
                fatalError("where column \(column.debugDescription) = \(value) accepted")
            }
        case .topic(let topic):
            guard validName(topic) else { fatalError("topic \(topic.debugDescription) accepted") }
        }
    case .unsubscribe(let id):
        guard validName(id) else { fatalError("unsubscribe id \(id.debugDescription) accepted") }
    case .mutate(let mutate):
        guard mutate.mid >= 1, validName(mutate.name) else { fatalError("mutate \(mutate.mid) \(mutate.name.debugDescription) accepted") }
        guard case .object = mutate.args else { fatalError("non-object args accepted") }
    case .auth, .ping:
        break
    }
}

/// The message as a client would send it (fields in a fixed order; nil fields left out).
func encode(_ message: ClientMessage) -> String {
    var members: [(String, JSONValue)] = [("type", .string(name(of: message)))]
    switch message {
    case .hello(let hello):
        members.append(("client_id", .string(hello.clientID)))
        if let token = hello.token { members.append(("token", .string(token))) }
    case .subscribe(let subscribe):
        members.append(("id", .string(subscribe.id)))
        switch subscribe.target {
        case .collection(let collection, let filter):
            members.append(("collection", .string(collection)))
            if !filter.isEmpty { members.append(("where", .object(filter.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }))) }
        case .topic(let topic):
            members.append(("topic", .string(topic)))
        }
        if let after = subscribe.after { members.append(("after", .string(after))) }
    case .unsubscribe(let id):
        members.append(("id", .string(id)))
    case .mutate(let mutate):
        members.append(("mid", .number(String(mutate.mid))))
        members.append(("name", .string(mutate.name)))
        members.append(("args", mutate.args))
    case .auth(let token):
        members.append(("token", .string(token)))
    case .ping(let t):
        if let t { members.append(("t", t)) }
    }
    return JSONValue.object(members).jsonText
}
