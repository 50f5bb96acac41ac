import NIOCore
import NIOWebSocket
import SynclineProtocol

/// Reassembles fragmented WebSocket data frames into messages (RFC 6455 §5.4), inflating
/// permessage-deflate messages (RFC 7692) as their frames arrive, and enforcing:
/// - the message size limit on the *inflated* size (a decompression bomb stops at the limit, with
///   1009, before more than `maximumBytes + 1` bytes were produced);
/// - UTF-8 validity of text, incrementally: a code point may span frames, and an invalid byte
///   fails the message (1007) when its frame arrives, not at the end of the message;
/// - frame sequencing (continuation without a message, a new message inside one: 1002).
/// Control frames are not its business (they may arrive between fragments; the caller handles them).
struct WebSocketMessageAssembler {
    enum Outcome {
        case none
        case text(ByteBuffer)
        case binary(ByteBuffer)
        case fail(CloseCode, String)
    }

    let maximumBytes: Int
    /// Whether RSV1 (a compressed message) may be set: permessage-deflate was negotiated.
    let allowsCompression: Bool
    private var inProgress = false
    private var isText = false
    private var buffer: ByteBuffer?
    private var utf8 = UTF8Validator()
    /// The inflater of the compressed message in progress. The server always negotiates
    /// `client_no_context_takeover`, so it lives only as long as one message.
    private var inflater: ZlibInflater?

    init(maximumBytes: Int, allowsCompression: Bool = false) {
        self.maximumBytes = maximumBytes
        self.allowsCompression = allowsCompression
    }

    /// Whether a message is partly received.
    var isAssembling: Bool { inProgress }

    mutating func receive(_ frame: WebSocketFrame) -> Outcome {
        switch frame.opcode {
        case .text, .binary:
            guard !inProgress else { return fail(.protocolError, "new message before the previous one ended") }
            if frame.rsv1 {
                guard allowsCompression else { return fail(.protocolError, "RSV1 set without permessage-deflate") }
                guard let inflater = ZlibInflater() else { return fail(.internalError, "cannot allocate an inflater") }
                self.inflater = inflater
            }
            inProgress = true
            isText = frame.opcode == .text
            utf8 = UTF8Validator()
            buffer = nil
            return append(frame)
        case .continuation:
            guard inProgress else { return fail(.protocolError, "continuation frame without a message") }
            guard !frame.rsv1 else { return fail(.protocolError, "RSV1 set on a continuation frame") }
            return append(frame)
        default:
            return .none
        }
    }

    private mutating func append(_ frame: WebSocketFrame) -> Outcome {
        var data = Self.unmaskedData(frame)
        var current: ByteBuffer
        if let inflater {
            current = buffer ?? ByteBuffer()
            buffer = nil
            let start = current.writerIndex
            var outcome = inflater.inflate(data, into: &current, limit: maximumBytes)
            if outcome == .ok && frame.fin {
                // RFC 7692 §7.2.2: the sender removed the empty stored block's 00 00 FF FF.
                outcome = inflater.inflate(ByteBuffer(bytes: [0, 0, 0xFF, 0xFF]), into: &current, limit: maximumBytes)
            }
            switch outcome {
            case .ok: break
            case .tooBig: return fail(.messageTooBig, "message exceeds \(maximumBytes) bytes once inflated")
            case .invalid: return fail(.invalidPayload, "invalid deflate data")
            }
            if isText {
                let valid = current.withUnsafeReadableBytes { raw in
                    utf8.validate(UnsafeRawBufferPointer(rebasing: raw[(start - current.readerIndex)...]))
                }
                guard valid else { return fail(.invalidPayload, "text message is not valid UTF-8") }
            }
        } else {
            let already = buffer?.readableBytes ?? 0
            guard already + data.readableBytes <= maximumBytes else {
                return fail(.messageTooBig, "message exceeds \(maximumBytes) bytes")
            }
            if isText {
                guard utf8.validate(data) else { return fail(.invalidPayload, "text message is not valid UTF-8") }
            }
            if var existing = buffer {
                buffer = nil
                existing.writeBuffer(&data)
                current = existing
            } else {
                current = data
            }
        }
        guard frame.fin else {
            buffer = current
            return .none
        }
        let text = isText
        reset()
        if text {
            guard utf8.isComplete else { return fail(.invalidPayload, "text message ends inside a UTF-8 sequence") }
            return .text(current)
        }
        return .binary(current)
    }

    /// The frame's payload, unmasked eight bytes at a time (NIO's `unmaskedData` goes byte by
    /// byte through a generic collection: in debug builds it dominated Autobahn's section 9 and 12).
    static func unmaskedData(_ frame: WebSocketFrame) -> ByteBuffer {
        var data = frame.data
        guard let key = frame.maskKey else { return data }
        let k0 = key[key.startIndex], k1 = key[key.startIndex + 1], k2 = key[key.startIndex + 2], k3 = key[key.startIndex + 3]
        let key32 = UInt32(k0) | UInt32(k1) << 8 | UInt32(k2) << 16 | UInt32(k3) << 24
        let key64 = UInt64(UInt32(littleEndian: key32)) | UInt64(UInt32(littleEndian: key32)) << 32
        let bytes = (k0, k1, k2, k3)
        data.withUnsafeMutableReadableBytes { raw in
            let count = raw.count
            var i = 0
            while i + 8 <= count {
                let word = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                raw.storeBytes(of: word ^ key64, toByteOffset: i, as: UInt64.self)
                i += 8
            }
            while i < count {
                let k: UInt8
                switch i & 3 {
                case 0: k = bytes.0
                case 1: k = bytes.1
                case 2: k = bytes.2
                default: k = bytes.3
                }
                raw[i] ^= k
                i += 1
            }
        }
        return data
    }

    private mutating func fail(_ code: CloseCode, _ reason: String) -> Outcome {
        reset()
        return .fail(code, reason)
    }

    private mutating func reset() {
        inProgress = false
        buffer = nil
        inflater = nil
    }
}
