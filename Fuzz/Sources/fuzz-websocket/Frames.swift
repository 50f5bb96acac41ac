import SynclineProtocol

/// A client frame as RFC 6455 §5.2 encodes it (masked when `mask` is given).
func clientFrame(fin: Bool = true, rsv1: Bool = false, opcode: UInt8, payload: [UInt8], mask: [UInt8]?) -> [UInt8] {
    var out: [UInt8] = [(fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | opcode]
    let maskBit: UInt8 = mask == nil ? 0 : 0x80
    if payload.count < 126 {
        out.append(maskBit | UInt8(payload.count))
    } else if payload.count <= 0xFFFF {
        out.append(maskBit | 126)
        out += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
    } else {
        out.append(maskBit | 127)
        out += (0..<8).reversed().map { UInt8(truncatingIfNeeded: UInt64(payload.count) >> (8 * UInt64($0))) }
    }
    guard let mask else { return out + payload }
    out += mask
    out += payload.enumerated().map { $0.element ^ mask[$0.offset & 3] }
    return out
}

/// A frame the server sent.
struct ServerFrame: Equatable {
    var fin: Bool
    var rsv1: Bool
    var opcode: UInt8
    var payload: [UInt8]

    var isControl: Bool { opcode & 0x8 != 0 }
    var closeCode: UInt16? {
        guard opcode == 0x8, payload.count >= 2 else { return nil }
        return UInt16(payload[0]) << 8 | UInt16(payload[1])
    }
}

/// Parses what the server wrote, checking RFC 6455 on the way: no mask, RSV2/RSV3 clear, known
/// opcodes, control frames final and ≤ 125 bytes, lengths in their shortest form, nothing
/// after the close frame, a close payload of 0 or ≥ 2 bytes with a code a server may send and a
/// UTF-8 reason.
func parseServerFrames(_ bytes: [UInt8]) -> [ServerFrame] {
    var frames: [ServerFrame] = []
    var i = 0
    while i < bytes.count {
        if let last = frames.last, last.opcode == 0x8 { fail("bytes after the server's close frame") }
        guard i + 2 <= bytes.count else { fail("truncated frame header") }
        let first = bytes[i], second = bytes[i + 1]
        i += 2
        guard second & 0x80 == 0 else { fail("server frame is masked") }
        guard first & 0x30 == 0 else { fail("server frame has RSV2/RSV3") }
        var length = Int(second & 0x7F)
        if length == 126 {
            guard i + 2 <= bytes.count else { fail("truncated length") }
            length = Int(bytes[i]) << 8 | Int(bytes[i + 1])
            guard length >= 126 else { fail("16-bit length \(length) not minimal") }
            i += 2
        } else if length == 127 {
            guard i + 8 <= bytes.count else { fail("truncated length") }
            length = bytes[i..<i + 8].reduce(0) { $0 << 8 | Int($1) }
            guard length > 0xFFFF else { fail("64-bit length \(length) not minimal") }
            i += 8
        }
        guard i + length <= bytes.count else { fail("truncated payload") }
        let frame = ServerFrame(fin: first & 0x80 != 0, rsv1: first & 0x40 != 0, opcode: first & 0x0F, payload: Array(bytes[i..<i + length]))
        i += length
        switch frame.opcode {
        case 0x0, 0x1, 0x2: break
        case 0x8, 0x9, 0xA:
            guard frame.fin, !frame.rsv1, frame.payload.count <= 125 else { fail("bad control frame \(frame)") }
        default: fail("server sent opcode \(frame.opcode)")
        }
        if frame.opcode == 0x8 {
            guard frame.payload.count != 1 else { fail("1-byte close payload") }
            if let code = frame.closeCode {
                guard validServerCloseCodes.contains(code) else { fail("server sent close code \(code)") }
                guard String(validating: frame.payload.dropFirst(2), as: UTF8.self) != nil else { fail("close reason not UTF-8") }
            }
        }
        frames.append(frame)
    }
    return frames
}

/// The codes the WebSocket layer itself sends, or echoes from a valid client close.
let validServerCloseCodes: Set<UInt16> = Set(Array(1000...1003) + Array(1007...1014) + Array(3000...4999))

func fail(_ message: String) -> Never {
    fatalError("websocket: \(message)")
}

func expect(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fail(message()) }
}
