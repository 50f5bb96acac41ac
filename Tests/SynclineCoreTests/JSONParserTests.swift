import SynclineProtocol
import Testing

@Suite("JSONParser")
struct JSONParserTests {
    // MARK: - helpers

    private func parseError(_ bytes: [UInt8]) -> JSONParseError? {
        do throws(JSONParseError) {
            _ = try JSONParser.parse(bytes)
            return nil
        } catch {
            return error
        }
    }

    private func parseError(_ text: String) -> JSONParseError? {
        parseError(Array(text.utf8))
    }

    /// `depth` nested arrays around `inner`.
    private func nestedArrays(_ depth: Int, inner: String = "") -> String {
        String(repeating: "[", count: depth) + inner + String(repeating: "]", count: depth)
    }

    // MARK: - scalars

    @Test func literals() throws {
        #expect(try JSONParser.parse("true") == .bool(true))
        #expect(try JSONParser.parse("false") == .bool(false))
        #expect(try JSONParser.parse("null") == .null)
        #expect(try JSONParser.parse(" \t\r\n null \n") == .null)
    }

    @Test(arguments: [
        "0", "-0", "7", "1250.00", "-0.5e10", "1E+5", "2e-3", "0.000", "-12.50E-07",
        "123456789012345678901234567890", "-98765432109876543210987654321",
        "9223372036854775808", "3.14159265358979323846264338327950288419716939937510",
    ])
    func numbersKeepTheirExactText(_ text: String) throws {
        let value = try JSONParser.parse(text)
        #expect(value == .number(text))
        #expect(value.jsonText == text)
        #expect(value.isScalar)
    }

    @Test func numbersInsideContainersKeepTheirText() throws {
        let value = try JSONParser.parse(#"{"amount":1250.00,"list":[1.0,-0.5e10,100000000000000000000000]}"#)
        #expect(value["amount"] == .number("1250.00"))
        #expect(value["list"] == .array([.number("1.0"), .number("-0.5e10"), .number("100000000000000000000000")]))
        #expect(value.jsonText == #"{"amount":1250.00,"list":[1.0,-0.5e10,100000000000000000000000]}"#)
    }

    @Test(arguments: [
        "01", "-", "-a", "1.", ".5", "+1", "1e", "1e+", "1E-", "--1", "0x10", "NaN", "Infinity", "-Infinity",
        "1.e5", "00", "-01", "1.5.2",
    ])
    func invalidNumbersAreRejected(_ text: String) {
        #expect(parseError(text) != nil, "accepted \(text)")
    }

    // MARK: - strings

    @Test func simpleEscapes() throws {
        let value = try JSONParser.parse(#""a\"b\\c\/d\be\ff\ng\rh\ti""#)
        #expect(value == .string("a\"b\\c/d\u{08}e\u{0C}f\ng\rh\ti"))
    }

    @Test func unicodeEscapes() throws {
        #expect(try JSONParser.parse(#""\u00e9""#) == .string("é"))
        #expect(try JSONParser.parse(#""\u00E9\u20AC""#) == .string("é€"))
        #expect(try JSONParser.parse(#""\u0000""#) == .string("\u{0}"))
        #expect(try JSONParser.parse(#""x\u0041y""#) == .string("xAy"))
    }

    @Test func surrogatePairsCombine() throws {
        let value = try JSONParser.parse(#""\ud83d\ude00 \uD834\uDD1E""#)
        #expect(value == .string("😀 𝄞"))
        #expect(value.stringValue?.unicodeScalars.map(\.value) == [0x1F600, 0x20, 0x1D11E])
    }

    @Test func rawUTF8PassesThrough() throws {
        #expect(try JSONParser.parse("\"héllo 😀 日本\"") == .string("héllo 😀 日本"))
        // Raw UTF-8 after an escape (slow path) is validated and kept too.
        #expect(try JSONParser.parse("\"\\n日本\\té\"") == .string("\n日本\té"))
    }

    @Test(arguments: [
        #""\ud83d""#,            // lone high surrogate at end
        #""\ud83dx""#,           // high surrogate followed by a plain character
        #""\ud83d\u0041""#,      // high surrogate followed by a non-surrogate escape
        #""\ud83d\ud83d""#,      // two high surrogates
        #""\ude00""#,            // lone low surrogate
        #""\ude00\ud83d""#,      // reversed pair
        #""\ud83d\n""#,          // high surrogate followed by another escape
    ])
    func unpairedSurrogatesAreRejected(_ text: String) {
        #expect(parseError(text) != nil, "accepted \(text)")
    }

    @Test(arguments: [
        #""\x""#, #""\u12""#, #""\u12G4""#, #""\U0041""#, #""\'""#, #""\"#, #""abc"#, "\"",
    ])
    func invalidEscapesAndUnterminatedStringsAreRejected(_ text: String) {
        #expect(parseError(text) != nil, "accepted \(text)")
    }

    @Test(arguments: [UInt8(0x00), 0x01, 0x09, 0x0A, 0x0D, 0x1F])
    func rawControlCharactersInStringsAreRejected(_ control: UInt8) {
        // Fast path (no escapes before it) and slow path (after an escape).
        #expect(parseError([0x22, 0x61, control, 0x62, 0x22]) != nil)
        #expect(parseError([0x22, 0x5C, 0x6E, control, 0x22]) != nil)
    }

    @Test(arguments: [
        [UInt8](arrayLiteral: 0x22, 0xC3, 0x22),            // truncated 2-byte sequence
        [0x22, 0xFF, 0x22],                                   // never valid
        [0x22, 0x80, 0x22],                                   // lone continuation byte
        [0x22, 0xC0, 0xAF, 0x22],                             // overlong "/"
        [0x22, 0xED, 0xA0, 0x80, 0x22],                       // UTF-8-encoded surrogate
        [0x22, 0xF0, 0x9F, 0x98, 0x22],                       // truncated 4-byte sequence
        [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22],                 // beyond U+10FFFF
        [0x22, 0x5C, 0x6E, 0xC3, 0x22],                       // invalid after an escape (slow path)
        [0x22, 0x61, 0xC3, 0x5C, 0x6E, 0xA9, 0x22],           // sequence split by an escape
        [0x7B, 0x22, 0xC3, 0x22, 0x3A, 0x31, 0x7D],           // invalid in a member name
        [0xC3, 0xA9],                                         // non-ASCII outside a string
        [0xEF, 0xBB, 0xBF, 0x7B, 0x7D],                       // BOM before the value
    ])
    func invalidUTF8IsRejected(_ bytes: [UInt8]) {
        #expect(parseError(bytes) != nil, "accepted \(bytes)")
    }

    // MARK: - structure

    @Test func emptyInputIsRejected() {
        #expect(parseError("") != nil)
        #expect(parseError("   \n\t") != nil)
    }

    @Test(arguments: [
        "{} x", "1 2", "truex", "nullnull", "[1]]", #"{"a":1}}"#, "\"a\"\"b\"", "{},", "[] []", "0 0", "1/",
    ])
    func trailingGarbageIsRejected(_ text: String) {
        #expect(parseError(text) != nil, "accepted \(text)")
    }

    @Test func trailingGarbageErrorPointsAtTheGarbage() throws {
        let error = try #require(parseError("{}  x"))
        #expect(error.offset == 4)
        let comma = try #require(parseError("[1,]"))
        #expect(comma.offset == 3)
    }

    @Test(arguments: [
        "[1,]", #"{"a":1,}"#, "{a:1}", #"{"a" 1}"#, "[1 2]", #"{"a":}"#, "'a'", "[", "{", "]", "}",
        #"{"a":1 "b":2}"#, "[,1]", #"{,"a":1}"#, "{1:2}", "tru", "nul", "fals", "True", "NULL", ",",
    ])
    func malformedStructureIsRejected(_ text: String) {
        #expect(parseError(text) != nil, "accepted \(text)")
    }

    @Test func nestingUpTo64LevelsIsAccepted() throws {
        // 64 containers, innermost empty.
        var value = try JSONParser.parse(nestedArrays(64))
        var depth = 1
        while case .array(let items) = value, let first = items.first {
            value = first
            depth += 1
        }
        #expect(depth == 64)
        // 63 containers around a scalar.
        _ = try JSONParser.parse(nestedArrays(63, inner: "1"))
        let objects63 = String(repeating: #"{"a":"#, count: 63) + "1" + String(repeating: "}", count: 63)
        _ = try JSONParser.parse(objects63)
    }

    @Test func nestingDeeperThan64IsRejected() throws {
        let error = try #require(parseError(nestedArrays(65)))
        #expect(error.reason.contains("64"))
        #expect(parseError(nestedArrays(100_000)) != nil)
        let objects = String(repeating: #"{"a":"#, count: 65) + "{}" + String(repeating: "}", count: 65)
        #expect(parseError(objects) != nil)
        let mixed = String(repeating: #"[{"a":"#, count: 40) + "1" + String(repeating: "}]", count: 40)
        #expect(parseError(mixed) != nil)
    }

    @Test func objectsKeepMemberOrderAndDuplicates() throws {
        let value = try JSONParser.parse(#"{"z":1,"a":"x","m":null,"a":true}"#)
        guard case .object(let members) = value else {
            Issue.record("not an object: \(value)")
            return
        }
        #expect(members.map(\.0) == ["z", "a", "m", "a"])
        #expect(value == .object([("z", .number("1")), ("a", .string("x")), ("m", .null), ("a", .bool(true))]))
        // Lookup takes the last duplicate.
        #expect(value["a"] == .bool(true))
        #expect(value["missing"] == nil)
        #expect(value.jsonText == #"{"z":1,"a":"x","m":null,"a":true}"#)
    }

    @Test func objectEqualityIsOrderSensitive() {
        let ab = JSONValue.object([("a", .number("1")), ("b", .number("2"))])
        let ba = JSONValue.object([("b", .number("2")), ("a", .number("1"))])
        #expect(ab != ba)
        #expect(ab == .object([("a", .number("1")), ("b", .number("2"))]))
        #expect(JSONValue.number("1") != .number("1.0"))
        #expect(JSONValue.number("1") != .string("1"))
    }

    @Test func whitespaceBetweenTokens() throws {
        let value = try JSONParser.parse(" {\n \"a\" :\t[ 1 ,\r\n 2 ] , \"b\" : { } }\n")
        #expect(value == .object([("a", .array([.number("1"), .number("2")])), ("b", .object([]))]))
    }

    @Test func subscriptOnNonObjectsIsNil() throws {
        #expect(try JSONParser.parse("[1]")["a"] == nil)
        #expect(try JSONParser.parse("\"a\"")["a"] == nil)
        #expect(try JSONParser.parse("[1]").isScalar == false)
        #expect(try JSONParser.parse("{}").isScalar == false)
        #expect(try JSONParser.parse("\"s\"").stringValue == "s")
        #expect(try JSONParser.parse("1").stringValue == nil)
    }

    @Test func bufferAndStringEntryPointsAgree() throws {
        let text = #"{"k":[1.50,"é\u00e9",null]}"#
        let bytes = Array(text.utf8)
        let fromBuffer = try bytes.withUnsafeBufferPointer { buffer throws(JSONParseError) in try JSONParser.parse(buffer) }
        #expect(fromBuffer == (try JSONParser.parse(text)))
        #expect(fromBuffer == (try JSONParser.parse(bytes[...])))
    }

    // MARK: - jsonText

    @Test(arguments: [
        #"{"a":[1,2.50,-0.5e10,{"b":null}],"c":"x\"y","d":true,"e":false}"#,
        #"[]"#, #"{}"#, #"[[],{},[{}]]"#, #""""#, #"123456789012345678901234567890"#,
        #"{"s":"tab\tnl\ncr\rq\"bs\\"}"#, #"{"u":"\u0001\u001f"}"#,
    ])
    func compactTextRoundTripsExactly(_ text: String) throws {
        let value = try JSONParser.parse(text)
        #expect(value.jsonText == text)
        #expect(try JSONParser.parse(value.jsonText) == value)
    }

    @Test func jsonTextOfParsedWhitespaceIsCompact() throws {
        let value = try JSONParser.parse(" [ 1 , { \"a\" : \"b\" } ] ")
        #expect(value.jsonText == #"[1,{"a":"b"}]"#)
    }

    @Test func jsonTextEscapesWhatItMustAndRoundTrips() throws {
        let tricky = "q\" b\\ /\u{0}\u{1}\u{8}\u{C}\u{1F}\n\r\t é😀\u{7F}\u{2028}"
        let value = JSONValue.object([("k\"\n", .string(tricky)), ("n", .number("-0.5e10"))])
        let text = value.jsonText
        // No raw control character may appear in the output.
        #expect(!text.utf8.contains { $0 < 0x20 })
        #expect(text.contains(#"\u0000"#))
        #expect(text.contains(#"\u0001"#))
        #expect(text.contains(#"\u001f"#))
        #expect(try JSONParser.parse(text) == value)
        #expect(JSONValue.quoted("a\"b") == #""a\"b""#)
        #expect(JSONValue.quoted("\u{8}") == #""\u0008""#)
    }
}
