import Foundation
import NIOCore
import NIOPosix

/// permessage-deflate (RFC 7692) settings of a server.
public struct WebSocketCompression: Sendable, Equatable {
    /// How the server compresses what it sends (`--websocket-compression`).
    public enum Mode: String, Sendable, CaseIterable {
        /// The extension is declined: every client gets uncompressed frames.
        case off
        /// Every server message is compressed on its own (no server context takeover), by one
        /// compressor per event loop; a feed body shared by several subscribers is compressed once
        /// per loop and batch. No zlib state per connection.
        case shared
        /// Each connection keeps its own compressor (context takeover, unless the client asked for
        /// `server_no_context_takeover`): better ratio on small similar messages, more CPU, and
        /// `windowBits`/`memoryLevel` memory per connection once it sent a compressed message.
        case contextTakeover = "context-takeover"
    }

    public var mode: Mode = .shared
    /// Compressor window of `contextTakeover` connections (2^bits bytes; 9–15).
    public var windowBits = 12
    /// Compressor memLevel of `contextTakeover` connections (1–9).
    public var memoryLevel = 5
    /// Messages shorter than this go uncompressed (RSV1 clear), which RFC 7692 allows per message.
    public var minimumBytes = 64

    public init(mode: Mode = .shared) {
        self.mode = mode
    }
}

/// The outcome of permessage-deflate negotiation for one connection.
public struct PerMessageDeflateParameters: Equatable, Sendable {
    /// The server does not take over context: the client asked for it, or the mode is `shared`.
    public var serverNoContextTakeover = false
    /// Largest LZ77 window the server may use (the client's `server_max_window_bits`, or 15).
    public var serverMaxWindowBits = 15

    /// Defaults: context takeover allowed, 15-bit window.
    public init(serverNoContextTakeover: Bool = false, serverMaxWindowBits: Int = 15) {
        self.serverNoContextTakeover = serverNoContextTakeover
        self.serverMaxWindowBits = serverMaxWindowBits
    }

    /// The value of `Sec-WebSocket-Extensions` in the 101 response.
    public var responseHeader: String {
        var parts = ["permessage-deflate"]
        if serverNoContextTakeover { parts.append("server_no_context_takeover") }
        // Always: the server inflates each message with a fresh inflater that does not outlive it.
        parts.append("client_no_context_takeover")
        if serverMaxWindowBits < 15 { parts.append("server_max_window_bits=\(serverMaxWindowBits)") }
        return parts.joined(separator: "; ")
    }

    /// Picks the first acceptable permessage-deflate offer of the request's
    /// `Sec-WebSocket-Extensions` headers (RFC 7692 §5, §7.1); nil: none, or compression is off.
    /// An offer with an unknown or repeated parameter, or an invalid value, is declined.
    public static func negotiate(_ headers: [String], mode: WebSocketCompression.Mode) -> PerMessageDeflateParameters? {
        guard mode != .off else { return nil }
        for offer in headers.flatMap({ $0.split(separator: ",", omittingEmptySubsequences: true) }) {
            let items = offer.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
            guard items.first?.lowercased() == "permessage-deflate" else { continue }
            var result = PerMessageDeflateParameters()
            var seen = Set<String>()
            var acceptable = true
            for item in items.dropFirst() where acceptable {
                let pair = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                let name = pair[0].lowercased()
                var value: String? = pair.count > 1 ? pair[1] : nil
                if let quoted = value, quoted.count >= 2, quoted.hasPrefix("\""), quoted.hasSuffix("\"") {
                    value = String(quoted.dropFirst().dropLast())
                }
                guard seen.insert(name).inserted else { acceptable = false; break }
                switch name {
                case "server_no_context_takeover":
                    if value != nil { acceptable = false }
                    result.serverNoContextTakeover = true
                case "client_no_context_takeover":
                    if value != nil { acceptable = false }
                case "server_max_window_bits":
                    guard let value, let bits = Int(value), (8...15).contains(bits), value.allSatisfy(\.isNumber) else {
                        acceptable = false
                        break
                    }
                    result.serverMaxWindowBits = bits
                case "client_max_window_bits":
                    // We may ignore it (the client then compresses with up to 15 bits, which our
                    // 15-bit inflater accepts); only its value must be valid.
                    if let value {
                        guard let bits = Int(value), (8...15).contains(bits), value.allSatisfy(\.isNumber) else {
                            acceptable = false
                            break
                        }
                    }
                default:
                    acceptable = false
                }
            }
            if acceptable {
                // Shared mode never takes context over: say so even when the client did not ask
                // (RFC 7692 §7.1.1.1 allows it), so the client may inflate each message with a fresh
                // window and need not keep 32 KiB per connection.
                if mode == .shared { result.serverNoContextTakeover = true }
                return result
            }
        }
        return nil
    }
}

/// Per-event-loop compression state: the compressors of `shared` mode (one per window size) and
/// the last few shared bodies compressed on this loop, so that a body sent to many subscribers is
/// compressed once. Confined to its thread through a thread-specific variable: each event loop
/// thread has its own instance and no other thread ever reaches it.
final class DeflateLoopState: @unchecked Sendable {
    private static let current = ThreadSpecificVariable<DeflateLoopState>()

    static var forCurrentThread: DeflateLoopState {
        if let state = current.currentValue { return state }
        let state = DeflateLoopState()
        current.currentValue = state
        return state
    }

    private var deflaters: [Int: ZlibDeflater] = [:]
    private struct Entry {
        var body: ByteBuffer
        var windowBits: Int
        var compressed: ByteBuffer
    }
    /// The cache holds the bodies it keys: their storage stays alive, so equal addresses mean
    /// the same bytes.
    private var recent: [Entry] = []
    private static let recentCapacity = 8
    /// Bodies the cache may keep alive, in bytes (a feed batch may reach 8 MiB).
    private static let recentBytesCapacity = 4 << 20
    private var recentBytes = 0
    private(set) var hits = 0
    private(set) var misses = 0

    func deflater(windowBits: Int) -> ZlibDeflater? {
        if let deflater = deflaters[windowBits] { return deflater }
        guard let deflater = ZlibDeflater(windowBits: windowBits, memoryLevel: 8) else { return nil }
        deflaters[windowBits] = deflater
        return deflater
    }

    /// `body` compressed as an independent raw-deflate stream (sync-flushed, tail removed).
    func sharedCompressed(_ body: ByteBuffer, windowBits: Int) -> ByteBuffer? {
        for index in recent.indices where recent[index].windowBits == windowBits && Self.same(recent[index].body, body) {
            hits += 1
            return recent[index].compressed
        }
        guard let deflater = deflater(windowBits: windowBits) else { return nil }
        misses += 1
        let compressed = deflater.compressIndependently([body])
        let cost = body.readableBytes + compressed.readableBytes
        guard cost <= Self.recentBytesCapacity else { return compressed }
        while recent.count == Self.recentCapacity || recentBytes + cost > Self.recentBytesCapacity {
            let evicted = recent.removeFirst()
            recentBytes -= evicted.body.readableBytes + evicted.compressed.readableBytes
        }
        recent.append(Entry(body: body, windowBits: windowBits, compressed: compressed))
        recentBytes += cost
        return compressed
    }

    /// The same bytes in the same storage (callers keep `a` alive, so its address is not reused).
    static func same(_ a: ByteBuffer, _ b: ByteBuffer) -> Bool {
        guard a.readableBytes == b.readableBytes else { return false }
        return a.withUnsafeReadableBytes { pa in b.withUnsafeReadableBytes { pb in pa.baseAddress == pb.baseAddress } }
    }
}

enum DeflateFraming {
    /// A non-final stored (BTYPE=00) deflate block holding `bytes` verbatim (RFC 1951 §3.2.4):
    /// placed in front of an independently compressed body, it makes one valid message whose
    /// body part never refers back to it. Nil above 65,535 bytes (one block's limit).
    static func storedBlock(_ bytes: ByteBuffer, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer? {
        let length = bytes.readableBytes
        guard length <= 0xFFFF else { return nil }
        var block = allocator.buffer(capacity: 5 + length)
        block.writeInteger(UInt8(0))  // BFINAL=0, BTYPE=00, then padding to the byte boundary
        block.writeInteger(UInt16(length), endianness: .little)
        block.writeInteger(~UInt16(length), endianness: .little)
        var copy = bytes
        block.writeBuffer(&copy)
        return block
    }
}
