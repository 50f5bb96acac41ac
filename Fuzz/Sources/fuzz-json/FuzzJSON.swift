import SynclineProtocol

/// Any bytes: the parser either refuses them with an offset inside the input, or returns a value
/// that renders to JSON which parses back to the same value and renders to the same bytes
/// (the render is a fixed point). Values are compared scalar by scalar: Swift's `String ==`
/// treats canonically equivalent strings as equal, which would hide a changed byte.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSON(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    let value: JSONValue
    do throws(JSONParseError) {
        value = try JSONParser.parse(input)
    } catch {
        guard (0...size).contains(error.offset) else { fatalError("error offset \(error.offset) outside 0...\(size): \(error)") }
        return 0
    }
    guard depth(value) <= JSONParser.maximumDepth else { fatalError("accepted nesting \(depth(value)) > \(JSONParser.maximumDepth)") }
    let rendered = value.jsonText
    let reparsed: JSONValue
    do throws(JSONParseError) {
        reparsed = try JSONParser.parse(rendered)
    } catch {
        fatalError("the render of an accepted input does not parse (\(error)): \(rendered.debugDescription)")
    }
    guard identical(value, reparsed) else { fatalError("round trip changed the value: \(rendered.debugDescription)") }
    guard Array(reparsed.jsonText.utf8) == Array(rendered.utf8) else { fatalError("render is not a fixed point: \(rendered.debugDescription)") }
    guard value == reparsed, value.hashValue == reparsed.hashValue else { fatalError("== or hash disagree with the round trip") }
    return 0
}

/// Nesting of arrays and objects (a scalar is 1), as `JSONParser` counts it.
func depth(_ value: JSONValue) -> Int {
    switch value {
    case .null, .bool, .number, .string: return 1
    case .array(let items): return 1 + (items.map(depth).max() ?? 0)
    case .object(let members): return 1 + (members.map { depth($0.1) }.max() ?? 0)
    }
}

/// Structural equality with strings compared by their UTF-8 bytes.
func identical(_ a: JSONValue, _ b: JSONValue) -> Bool {
    switch (a, b) {
    case (.null, .null): return true
    case let (.bool(x), .bool(y)): return x == y
    case let (.number(x), .number(y)): return x.utf8.elementsEqual(y.utf8)
    case let (.string(x), .string(y)): return x.utf8.elementsEqual(y.utf8)
    case let (.array(x), .array(y)): return x.count == y.count && zip(x, y).allSatisfy(identical)
    case let (.object(x), .object(y)):
        return x.count == y.count && zip(x, y).allSatisfy { $0.0.utf8.elementsEqual($1.0.utf8) && identical($0.1, $1.1) }
    default: return false
    }
}
