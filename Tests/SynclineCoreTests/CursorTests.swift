import SynclineProtocol
import Testing

@Suite("Cursor")
struct CursorTests {
    @Test func parsesEpochAndPosition() throws {
        let cursor = try #require(Cursor(parsing: "0123456789abcdef.42"))
        #expect(cursor.epoch == "0123456789abcdef")
        #expect(cursor.position == 42)
        #expect(cursor == Cursor(epoch: "0123456789abcdef", position: 42))
    }

    @Test func printsEpochDotPosition() {
        #expect(Cursor(epoch: "ab12", position: 7).description == "ab12.7")
        #expect("\(Cursor(epoch: "0", position: 0))" == "0.0")
    }

    @Test(arguments: [
        Cursor(epoch: "a", position: 0),
        Cursor(epoch: "deadbeef", position: 1),
        Cursor(epoch: "0f1e2d3c4b5a6978", position: 1_234_567),
        Cursor(epoch: "ab", position: 999_999_999_999_999_999), // 18 digits
        Cursor(epoch: "ab", position: .max), // 19 digits
        Cursor(epoch: String(repeating: "f", count: 40), position: 10),
    ])
    func printThenParseRoundTrips(_ cursor: Cursor) throws {
        #expect(Cursor(parsing: cursor.description) == cursor)
    }

    @Test(arguments: ["ab.1", "0.0", "c0ffee.123456789012345678", "ab.0"])
    func parseThenPrintRoundTrips(_ text: String) throws {
        let cursor = try #require(Cursor(parsing: text))
        #expect(cursor.description == text)
    }

    @Test func leadingZerosInThePositionAreAccepted() throws {
        let cursor = try #require(Cursor(parsing: "ab.007"))
        #expect(cursor.position == 7)
    }

    @Test(arguments: [
        "",                // empty
        "ab",              // no dot
        "12345",           // no dot, digits only
        ".",               // both parts empty
        ".12",             // empty epoch
        "ab.",             // empty position
        "xyz.1",           // non-hex epoch
        "AB.1",            // upper-case hex is not the server's spelling
        "ab-cd.1",         // punctuation in the epoch
        "a.b.1",           // dot inside the epoch
        "ab.1.2",          // two dots
        "ab.-1",           // negative position
        "ab.+1",           // signed position
        "ab.1a",           // non-digit position
        "ab.0x1",          // hex position
        "ab.1e3",          // exponent
        "ab. 1",           // whitespace
        " ab.1",
        "ab.1 ",
        "ab.1\n",
        "ab.١٢",           // non-ASCII digits
        "éa.1",            // non-ASCII epoch
        "ab.9223372036854775808",  // 19 digits, one past Int64.max
        "ab.99999999999999999999", // beyond Int64
    ])
    func rejectsGarbage(_ text: String) {
        #expect(Cursor(parsing: text) == nil, "accepted \(text)")
    }

    @Test func rejectsOverlongText() {
        // 61 hex + ".12" = 64 bytes: accepted; one more byte: refused.
        let fits = String(repeating: "a", count: 61) + ".12"
        #expect(fits.utf8.count == 64)
        #expect(Cursor(parsing: fits) == Cursor(epoch: String(repeating: "a", count: 61), position: 12))
        let overlong = String(repeating: "a", count: 62) + ".12"
        #expect(Cursor(parsing: overlong) == nil)
        #expect(Cursor(parsing: String(repeating: "a", count: 10_000) + ".1") == nil)
    }
}
