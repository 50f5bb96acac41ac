/// Incremental UTF-8 validation (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF)
/// for text messages that arrive in pieces: a code point may be split across frames, and an
/// invalid byte is reported as soon as it arrives (RFC 6455 §8.1, "fail fast").
struct UTF8Validator {
    /// Continuation bytes still expected by the current code point.
    private var needed: UInt8 = 0
    /// Allowed range of the next continuation byte (narrower right after E0, ED, F0, F4).
    private var lower: UInt8 = 0x80
    private var upper: UInt8 = 0xBF

    /// True when no code point is left open: the text seen so far can end here.
    var isComplete: Bool { needed == 0 }

    /// Feeds more bytes; false as soon as they cannot be (the rest of) valid UTF-8.
    mutating func validate(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let count = bytes.count
        var i = 0
        while i < count {
            let byte = bytes[i]
            if needed == 0 {
                if byte < 0x80 {
                    i += 1
                    // ASCII fast path, eight bytes at a time.
                    while i + 8 <= count,
                          bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                        i += 8
                    }
                    continue
                }
                switch byte {
                case 0xC2...0xDF: needed = 1
                case 0xE0: needed = 2; lower = 0xA0
                case 0xE1...0xEC, 0xEE, 0xEF: needed = 2
                case 0xED: needed = 2; upper = 0x9F
                case 0xF0: needed = 3; lower = 0x90
                case 0xF1...0xF3: needed = 3
                case 0xF4: needed = 3; upper = 0x8F
                default: return false
                }
            } else {
                guard byte >= lower && byte <= upper else { return false }
                lower = 0x80
                upper = 0xBF
                needed -= 1
            }
            i += 1
        }
        return true
    }

    mutating func validate(_ buffer: ByteBuffer) -> Bool {
        buffer.withUnsafeReadableBytes { validate($0) }
    }

    /// Whole-input check (close reasons).
    static func isValid(_ buffer: ByteBuffer) -> Bool {
        var validator = UTF8Validator()
        return validator.validate(buffer) && validator.isComplete
    }
}

import NIOCore
