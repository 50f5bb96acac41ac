import CZlib
import NIOCore

/// What the server answered to the client's `permessage-deflate` offer (RFC 7692).
enum NegotiatedCompression: UInt8, Sendable {
    /// No extension: frames are plain.
    case off
    /// `server_no_context_takeover`: every compressed message is independent, so one inflater per
    /// event loop, reset before each message, serves all of that loop's connections (this is what
    /// lets the server compress a broadcast once and share the bytes).
    case perMessage
    /// The server keeps its LZ77 window across messages: each connection needs its own inflater,
    /// kept for the connection's life, as a real client would.
    case contextTakeover

    /// Reads the `Sec-WebSocket-Extensions` response header.
    init(responseHeader: String?) {
        guard let header = responseHeader?.lowercased(), header.contains("permessage-deflate") else {
            self = .off
            return
        }
        self = header.contains("server_no_context_takeover") ? .perMessage : .contextTakeover
    }

    var label: String {
        switch self {
        case .off: "off"
        case .perMessage: "server_no_context_takeover"
        case .contextTakeover: "context_takeover"
        }
    }
}

/// A raw-deflate (RFC 1951) decompressor for permessage-deflate messages received by the load
/// client. The client must inflate every compressed message — that is the cost a real subscriber
/// pays — but the figure the benchmark reports is the server's CPU, so this is kept simple: one
/// `inflate` call per 64 KiB of output, with a 32 KiB window (valid for any server window size).
final class MessageInflater {
    private let stream: UnsafeMutablePointer<z_stream>
    private static let tail: [UInt8] = [0x00, 0x00, 0xFF, 0xFF]

    init() throws {
        self.stream = .allocate(capacity: 1)
        self.stream.initialize(to: z_stream())
        guard syncline_inflateInit2(self.stream, -15) == Z_OK else {
            self.stream.deinitialize(count: 1)
            self.stream.deallocate()
            throw BenchError("zlib inflateInit2 failed")
        }
    }

    deinit {
        inflateEnd(self.stream)
        self.stream.deinitialize(count: 1)
        self.stream.deallocate()
    }

    /// Forgets the window: the next message is decoded as an independent one.
    func reset() {
        inflateReset(self.stream)
    }

    /// Inflates one message's payload (the RFC 7692 §7.2.2 tail `00 00 FF FF` is appended here) into
    /// `output`, which is cleared first. Returns false on a corrupt stream (the message is then
    /// counted as an error by the caller).
    func inflate(_ payload: ByteBuffer, into output: inout ByteBuffer) -> Bool {
        output.clear()
        switch payload.withUnsafeReadableBytes({ self.feed($0, into: &output) }) {
        case .bad: return false
        case .ended: return true  // a final block: no tail follows it
        case .more: return Self.tail.withUnsafeBytes { self.feed($0, into: &output) } != .bad
        }
    }

    private enum Fed { case more, ended, bad }

    private func feed(_ input: UnsafeRawBufferPointer, into output: inout ByteBuffer) -> Fed {
        guard input.count > 0 else { return .more }
        self.stream.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress!.assumingMemoryBound(to: UInt8.self))
        self.stream.pointee.avail_in = UInt32(input.count)
        defer { self.stream.pointee.next_in = nil }
        while true {
            var result: Int32 = Z_OK
            var produced = 0
            output.writeWithUnsafeMutableBytes(minimumWritableBytes: 1 << 16) { out in
                self.stream.pointee.next_out = out.baseAddress!.assumingMemoryBound(to: UInt8.self)
                self.stream.pointee.avail_out = UInt32(out.count)
                result = CZlib.inflate(self.stream, Z_SYNC_FLUSH)
                produced = out.count - Int(self.stream.pointee.avail_out)
                return produced
            }
            switch result {
            case Z_OK:
                if self.stream.pointee.avail_in == 0, self.stream.pointee.avail_out > 0 { return .more }
            case Z_BUF_ERROR:
                return produced > 0 || self.stream.pointee.avail_in == 0 ? .more : .bad
            case Z_STREAM_END:
                // The message ended with a final block: the next one starts a new stream.
                inflateReset(self.stream)
                return .ended
            default:
                return .bad
            }
        }
    }
}
