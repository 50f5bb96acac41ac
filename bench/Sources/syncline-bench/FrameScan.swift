#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The server message types the load client cares about.
enum MessageType: UInt8, Sendable {
    case other
    case welcome
    case subscribed
    case snapshot
    case changes
    case error
    case pong
    case ack
    case reject
}

/// Just-enough scanning of server frames, straight on the received bytes: no JSON decoding,
/// no allocation. Only used on server frames of the Syncline v1 protocol, whose keys are
/// known; tolerant of whitespace after `:` (Postgres's `jsonb::text` writes `"k": v`).
enum FrameScan {
    /// Finds `needle` in `p[from...]`, locating candidates with `memchr` on the needle's
    /// rarest byte (`anchor` is its offset inside the needle). Returns the needle's start.
    @inline(__always)
    static func find(_ p: UnsafeRawBufferPointer, _ needle: UnsafeRawBufferPointer, anchor: Int, from: Int = 0) -> Int? {
        guard let base = p.baseAddress, needle.count > 0 else { return nil }
        let count = p.count
        let anchorByte = Int32(needle[anchor])
        var i = from + anchor
        while i < count {
            guard let hit = memchr(base + i, anchorByte, count - i) else { return nil }
            let k = base.distance(to: UnsafeRawPointer(hit))
            let start = k - anchor
            if start >= from, start + needle.count <= count,
               memcmp(base + start, needle.baseAddress!, needle.count) == 0
            {
                return start
            }
            i = k + 1
        }
        return nil
    }

    /// Index just after `"key"` + optional spaces + `:` + optional spaces, or nil.
    @inline(__always)
    static func skipColon(_ p: UnsafeRawBufferPointer, _ i: Int) -> Int? {
        var j = i
        let n = p.count
        while j < n, p[j] == UInt8(ascii: " ") || p[j] == UInt8(ascii: "\t") || p[j] == UInt8(ascii: "\n") || p[j] == UInt8(ascii: "\r") { j += 1 }
        guard j < n, p[j] == UInt8(ascii: ":") else { return nil }
        j += 1
        while j < n, p[j] == UInt8(ascii: " ") || p[j] == UInt8(ascii: "\t") || p[j] == UInt8(ascii: "\n") || p[j] == UInt8(ascii: "\r") { j += 1 }
        return j
    }

    static let typeKey: [UInt8] = Array("\"type\"".utf8)
    static let doneKey: [UInt8] = Array("\"done\"".utf8)
    static let createdAtKey: [UInt8] = Array("\"created_at\"".utf8)
    static let messageKey: [UInt8] = Array("\"message\"".utf8)
    static let codeKey: [UInt8] = Array("\"code\"".utf8)
    static let midKey: [UInt8] = Array("\"mid\"".utf8)
    static let lastMidKey: [UInt8] = Array("\"last_mid\"".utf8)
    static let refKey: [UInt8] = Array("\"ref\"".utf8)

    /// The message's `type` (first occurrence of the key `"type"`; the transactions collection
    /// has no column of that name).
    static func messageType(_ p: UnsafeRawBufferPointer) -> MessageType {
        let at = typeKey.withUnsafeBytes { find(p, $0, anchor: 2) }
        guard let at, var j = skipColon(p, at + 6), j < p.count, p[j] == UInt8(ascii: "\"") else { return .other }
        j += 1
        let rest = p.count - j
        @inline(__always) func matches(_ s: StaticString) -> Bool {
            let len = s.utf8CodeUnitCount
            guard rest > len, p[j + len] == UInt8(ascii: "\"") else { return false }
            return memcmp(p.baseAddress! + j, s.utf8Start, len) == 0
        }
        switch p[j] {
        case UInt8(ascii: "c"): return matches("changes") ? .changes : .other
        case UInt8(ascii: "s"):
            if matches("snapshot") { return .snapshot }
            return matches("subscribed") ? .subscribed : .other
        case UInt8(ascii: "w"): return matches("welcome") ? .welcome : .other
        case UInt8(ascii: "e"): return matches("error") ? .error : .other
        case UInt8(ascii: "p"): return matches("pong") ? .pong : .other
        case UInt8(ascii: "a"): return matches("ack") ? .ack : .other
        case UInt8(ascii: "r"): return matches("reject") ? .reject : .other
        default: return .other
        }
    }

    /// True when the frame has `"done": true`.
    static func isDone(_ p: UnsafeRawBufferPointer) -> Bool {
        let at = doneKey.withUnsafeBytes { find(p, $0, anchor: 4) }
        guard let at, let j = skipColon(p, at + 6), j < p.count else { return false }
        return p[j] == UInt8(ascii: "t")
    }

    /// The raw text of a top-level string field (for error reporting only; not unescaped).
    static func stringField(_ p: UnsafeRawBufferPointer, key: [UInt8], anchor: Int) -> String? {
        let at = key.withUnsafeBytes { find(p, $0, anchor: anchor) }
        guard let at, var j = skipColon(p, at + key.count), j < p.count, p[j] == UInt8(ascii: "\"") else { return nil }
        j += 1
        var e = j
        while e < p.count, p[e] != UInt8(ascii: "\"") || p[e - 1] == UInt8(ascii: "\\") { e += 1 }
        return String(decoding: UnsafeRawBufferPointer(rebasing: p[j..<min(e, j + 300)]), as: UTF8.self)
    }

    /// A top-level non-negative integer field (`"mid": 12`), or nil. First occurrence of the key:
    /// only for keys that come before any nested value of the frame (`mid` in ack/reject,
    /// `last_mid` in welcome, `ref` in error).
    static func intField(_ p: UnsafeRawBufferPointer, key: [UInt8], anchor: Int) -> Int64? {
        let at = key.withUnsafeBytes { find(p, $0, anchor: anchor) }
        guard let at, var j = skipColon(p, at + key.count), j < p.count else { return nil }
        if p[j] == UInt8(ascii: "\"") { j += 1 }  // a ref sent as a string
        return digits(p, &j, atMost: 18)
    }

    /// The decimal number of up to `atMost` digits at `i` (nil when there is no digit), advancing
    /// `i` past the digits read.
    @inline(__always)
    static func digits(_ p: UnsafeRawBufferPointer, _ i: inout Int, atMost: Int) -> Int64? {
        var v: Int64 = 0
        var count = 0
        while i < p.count, p[i] >= UInt8(ascii: "0"), p[i] <= UInt8(ascii: "9"), count < atMost {
            v = v * 10 + Int64(p[i] - UInt8(ascii: "0"))
            i += 1
            count += 1
        }
        return count > 0 ? v : nil
    }

    /// Calls `body` with every `"created_at": "<timestamp>"` value in the frame, as microseconds
    /// since the Unix epoch. Returns how many timestamps were found (unparsable ones included,
    /// reported as `nil`).
    @inline(__always)
    static func forEachCreatedAt(_ p: UnsafeRawBufferPointer, _ body: (Int64?) -> Void) -> Int {
        var found = 0
        var from = 0
        createdAtKey.withUnsafeBytes { needle in
            // anchor on "_" (offset 8): rare in these frames.
            while let at = find(p, needle, anchor: 8, from: from) {
                from = at + 12
                guard let j = skipColon(p, from) else { continue }
                found += 1
                if j < p.count, p[j] == UInt8(ascii: "\"") {
                    var k = j + 1
                    body(parseTimestamp(p, &k))
                    from = k
                } else {
                    body(nil)
                }
            }
        }
        return found
    }

    /// Parses `YYYY-MM-DD[T ]HH:MM:SS[.f{1,9}](Z|±HH[:MM[:SS]])` at `i` (just after the opening quote),
    /// as Postgres renders timestamptz in JSON (`2024-05-01T12:00:00.123456+00:00`; trailing zeros of
    /// the fraction are dropped). Advances `i` past what it read.
    @inline(__always)
    static func parseTimestamp(_ p: UnsafeRawBufferPointer, _ i: inout Int) -> Int64? {
        let n = p.count
        guard i + 19 <= n else { return nil }
        @inline(__always) func dig(_ k: Int) -> Int64? {
            let c = p[k] &- 48
            return c < 10 ? Int64(c) : nil
        }
        @inline(__always) func two(_ k: Int) -> Int64? {
            guard let a = dig(k), let b = dig(k + 1) else { return nil }
            return a * 10 + b
        }
        let s = i
        guard let y1 = two(s), let y2 = two(s + 2), p[s + 4] == UInt8(ascii: "-"),
              let month = two(s + 5), p[s + 7] == UInt8(ascii: "-"),
              let day = two(s + 8), p[s + 10] == UInt8(ascii: "T") || p[s + 10] == UInt8(ascii: " "),
              let hh = two(s + 11), p[s + 13] == UInt8(ascii: ":"),
              let mm = two(s + 14), p[s + 16] == UInt8(ascii: ":"),
              let ss = two(s + 17)
        else { return nil }
        let year = y1 * 100 + y2
        var j = s + 19
        var micros: Int64 = 0
        if j < n, p[j] == UInt8(ascii: ".") {
            j += 1
            var digits = 0
            while j < n, let d = dig(j) {
                if digits < 6 { micros = micros * 10 + d; digits += 1 }
                j += 1
            }
            while digits < 6 { micros *= 10; digits += 1 }
        }
        var offsetSeconds: Int64 = 0
        if j < n {
            let c = p[j]
            if c == UInt8(ascii: "Z") {
                j += 1
            } else if c == UInt8(ascii: "+") || c == UInt8(ascii: "-") {
                let sign: Int64 = c == UInt8(ascii: "-") ? -1 : 1
                j += 1
                guard j + 2 <= n, let oh = two(j) else { return nil }
                j += 2
                var om: Int64 = 0, os: Int64 = 0
                if j + 3 <= n, p[j] == UInt8(ascii: ":"), let v = two(j + 1) { om = v; j += 3 }
                else if j + 2 <= n, let v = two(j) { om = v; j += 2 }
                if j + 3 <= n, p[j] == UInt8(ascii: ":"), let v = two(j + 1) { os = v; j += 3 }
                offsetSeconds = sign * (oh * 3600 + om * 60 + os)
            }
        }
        if j < n, p[j] == UInt8(ascii: "\"") { j += 1 }
        i = j
        let days = daysFromCivil(year, month, day)
        let seconds = days * 86_400 + hh * 3_600 + mm * 60 + ss - offsetSeconds
        return seconds * 1_000_000 + micros
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    @inline(__always)
    static func daysFromCivil(_ year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}
