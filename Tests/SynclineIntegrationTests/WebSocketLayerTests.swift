import Foundation
import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing
@testable import SynclineServer
@testable import SynclineWebSocket

/// The WebSocket layer's pure parts, without sockets: UTF-8 validation, extension negotiation,
/// deflate framing, and the protocol handler on an EmbeddedChannel.
@Suite("WebSocket layer")
struct WebSocketLayerTests {
    // MARK: UTF-8

    @Test("UTF-8: valid text split at every byte boundary is accepted")
    func utf8Splits() {
        let text = Array("aé€𝄞ü κόσμε 🚀 end".utf8)
        for cut in 0...text.count {
            var validator = UTF8Validator()
            let first = text[..<cut].withUnsafeBytes { validator.validate($0) }
            let second = text[cut...].withUnsafeBytes { validator.validate($0) }
            #expect(first && second && validator.isComplete, "cut at \(cut)")
        }
    }

    @Test("UTF-8: overlongs, surrogates, > U+10FFFF, stray continuations and truncation are refused",
          arguments: [[0xC0, 0x80], [0xE0, 0x80, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80],
                      [0xF5, 0x80, 0x80, 0x80], [0x80], [0xFF], [0x61, 0xE2, 0x82]] as [[UInt8]])
    func utf8Invalid(bytes: [UInt8]) {
        var validator = UTF8Validator()
        let ok = bytes.withUnsafeBytes { validator.validate($0) }
        #expect(!(ok && validator.isComplete))
    }

    @Test("UTF-8: fails on the chunk that holds the invalid byte (fail fast)")
    func utf8FailFast() {
        var validator = UTF8Validator()
        let first: [UInt8] = [0xCE, 0xBA, 0xE1], second: [UInt8] = [0xBD, 0xC0]
        #expect(first.withUnsafeBytes { validator.validate($0) })
        #expect(!second.withUnsafeBytes { validator.validate($0) })
    }

    @Test("word-wise unmasking equals NIO's byte-wise unmasking at every length and offset")
    func unmasking() {
        let key = WebSocketMaskingKey([0x12, 0xAB, 0x00, 0xFF])!
        for length in 0..<40 {
            var backing = ByteBuffer(bytes: (0..<(length + 3)).map { UInt8(truncatingIfNeeded: $0 &* 37) })
            backing.moveReaderIndex(forwardBy: length % 3)  // payloads do not start at offset 0
            let frame = WebSocketFrame(fin: true, opcode: .binary, maskKey: key, data: backing.getSlice(at: backing.readerIndex, length: length)!)
            #expect(WebSocketMessageAssembler.unmaskedData(frame) == frame.unmaskedData, "length \(length)")
        }
    }

    // MARK: Negotiation

    @Test("permessage-deflate negotiation")
    func negotiation() {
        // Context takeover mode keeps the server's window unless the client asks otherwise.
        let plain = PerMessageDeflateParameters.negotiate(["permessage-deflate"], mode: .contextTakeover)
        #expect(plain == PerMessageDeflateParameters())
        #expect(plain?.responseHeader == "permessage-deflate; client_no_context_takeover")
        // Shared mode never takes context over and says so, asked or not.
        let shared = PerMessageDeflateParameters.negotiate(["permessage-deflate"], mode: .shared)
        #expect(shared?.serverNoContextTakeover == true)
        #expect(shared?.responseHeader == "permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        let full = PerMessageDeflateParameters.negotiate(
            ["permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits"],
            mode: .shared)
        #expect(full?.serverNoContextTakeover == true)
        #expect(full?.serverMaxWindowBits == 10)
        #expect(full?.responseHeader == "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10")
        // Quoted values are values.
        #expect(PerMessageDeflateParameters.negotiate(["permessage-deflate; server_max_window_bits=\"9\""], mode: .shared)?.serverMaxWindowBits == 9)
        // Off: declined.
        #expect(PerMessageDeflateParameters.negotiate(["permessage-deflate"], mode: .off) == nil)
        // Invalid offers are declined; a later acceptable one is taken.
        for bad in ["permessage-deflate; server_max_window_bits=16", "permessage-deflate; server_max_window_bits",
                    "permessage-deflate; client_max_window_bits=7", "permessage-deflate; foo",
                    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                    "permessage-deflate; server_no_context_takeover=1", "x-webkit-deflate-frame"] {
            #expect(PerMessageDeflateParameters.negotiate([bad], mode: .shared) == nil, "\(bad)")
        }
        let fallback = PerMessageDeflateParameters.negotiate(
            ["permessage-deflate; server_max_window_bits=20, permessage-deflate; server_no_context_takeover"], mode: .shared)
        #expect(fallback?.serverNoContextTakeover == true)
    }

    // MARK: Deflate framing

    private func inflate(_ parts: ByteBuffer..., limit: Int = 1 << 24) -> (ZlibInflater.Outcome, ByteBuffer) {
        let inflater = ZlibInflater()!
        var output = ByteBuffer()
        for part in parts {
            let outcome = inflater.inflate(part, into: &output, limit: limit)
            guard outcome == .ok else { return (outcome, output) }
        }
        return (inflater.inflate(ByteBuffer(bytes: [0, 0, 0xFF, 0xFF]), into: &output, limit: limit), output)
    }

    @Test("a stored block with the prefix, then a body compressed on its own, inflates to prefix + body")
    func storedPrefixPlusSharedBody() {
        let prefix = ByteBuffer(string: "{\"type\":\"changes\",\"sub\":\"t\",")
        let body = ByteBuffer(string: String(repeating: "\"row\":{\"account_id\":\"alice-checking\",\"amount\":\"12.30\"},", count: 50) + "}")
        let compressed = ZlibDeflater(windowBits: 15, memoryLevel: 8)!.compressIndependently([body])
        #expect(compressed.readableBytes < body.readableBytes / 4)
        let block = DeflateFraming.storedBlock(prefix)!
        let (outcome, output) = inflate(block, compressed)
        #expect(outcome == .ok)
        #expect(String(buffer: output) == String(buffer: prefix) + String(buffer: body))
    }

    @Test("context takeover: consecutive messages from one compressor inflate with one inflater")
    func contextTakeoverRoundTrip() {
        let deflater = ZlibDeflater(windowBits: 12, memoryLevel: 5)!
        let inflater = ZlibInflater()!
        for i in 0..<5 {
            let text = String(repeating: "message \(i) with repeated content; ", count: 20)
            var compressed = ByteBuffer()
            deflater.compress([ByteBuffer(string: text)], into: &compressed)
            var output = ByteBuffer()
            #expect(inflater.inflate(compressed, into: &output, limit: 1 << 20) == .ok)
            #expect(inflater.inflate(ByteBuffer(bytes: [0, 0, 0xFF, 0xFF]), into: &output, limit: 1 << 20) == .ok)
            #expect(String(buffer: output) == text)
        }
    }

    // Found by fuzz-websocket (deflate mode): with context takeover zlib writes nothing for an empty
    // message after a sync flush, and the receiver's appended 00 00 FF FF then opened a 0xFF00-byte
    // stored block that swallowed the next message.
    @Test("context takeover: an empty message between two others is one 0x00 byte and inflates (RFC 7692 §7.2.3.6)")
    func contextTakeoverEmptyMessage() {
        let deflater = ZlibDeflater(windowBits: 15, memoryLevel: 8)!
        let inflater = ZlibInflater()!
        for text in ["first message, long enough to be compressed", "", "", "third message after the empty ones"] {
            var compressed = ByteBuffer()
            deflater.compress([ByteBuffer(string: text)], into: &compressed)
            if text.isEmpty { #expect(Array(compressed.readableBytesView) == [0]) }
            var output = ByteBuffer()
            #expect(inflater.inflate(compressed, into: &output, limit: 1 << 20) == .ok)
            #expect(inflater.inflate(ByteBuffer(bytes: [0, 0, 0xFF, 0xFF]), into: &output, limit: 1 << 20) == .ok)
            #expect(String(buffer: output) == text)
        }
    }

    @Test("server_max_window_bits=8: Huffman-only output (no back-references) inflates correctly")
    func windowBitsEight() {
        let text = String(repeating: "abcabcabc ", count: 200)
        let compressed = ZlibDeflater(windowBits: 8, memoryLevel: 8)!.compressIndependently([ByteBuffer(string: text)])
        #expect(compressed.readableBytes < text.utf8.count)
        let (outcome, output) = inflate(compressed)
        #expect(outcome == .ok && String(buffer: output) == text)
    }

    @Test("a decompression bomb stops at the limit")
    func bombStopsAtLimit() {
        let zeros = ByteBuffer(repeating: 0x20, count: 1 << 20)
        var bomb = ByteBuffer()
        ZlibDeflater(windowBits: 15, memoryLevel: 8, level: 9)!.compress(Array(repeating: zeros, count: 64), into: &bomb)
        #expect(bomb.readableBytes < 128 << 10)  // 64 MiB of spaces in ~64 KiB
        let (outcome, output) = inflate(bomb, limit: 1 << 20)
        #expect(outcome == .tooBig)
        #expect(output.readableBytes <= (1 << 20) + 1)
    }

    // MARK: Protocol handler

    private func channel(limit: Int = 1 << 20, deflate: PerMessageDeflateParameters? = nil) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(WebSocketProtocolHandler(
            options: .init(maximumMessageBytes: limit, compression: WebSocketCompression()), deflate: deflate))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
        return channel
    }

    private func frame(_ opcode: WebSocketOpcode, fin: Bool = true, rsv1: Bool = false, _ bytes: [UInt8]) -> WebSocketFrame {
        WebSocketFrame(fin: fin, rsv1: rsv1, opcode: opcode, data: ByteBuffer(bytes: bytes))
    }

    /// The frames the handler wrote (it writes bytes: frames coalesced per flush).
    private func sentFrames(_ channel: EmbeddedChannel) throws -> [WebSocketFrame] {
        var bytes = ByteBuffer()
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&buffer) }
        return try ServerFrames.parse(&bytes)
    }

    private func sentClose(_ channel: EmbeddedChannel) throws -> UInt16? {
        for frame in try sentFrames(channel) where frame.opcode == .connectionClose {
            var data = frame.data
            return data.readInteger(as: UInt16.self)
        }
        return nil
    }

    @Test("fragments with a ping between them: pong at once, then the whole message")
    func fragmentsAndPing() throws {
        let channel = try channel()
        try channel.writeInbound(frame(.text, fin: false, Array("Hel".utf8)))
        try channel.writeInbound(frame(.ping, [1, 2]))
        let pong = try #require(try sentFrames(channel).first)
        #expect(pong.opcode == .pong && pong.data == ByteBuffer(bytes: [1, 2]))
        #expect(try channel.readInbound(as: WebSocketFrame.self) == nil)
        try channel.writeInbound(frame(.continuation, fin: false, Array("lo ".utf8)))
        try channel.writeInbound(frame(.continuation, Array("κόσμε".utf8)))
        let message = try #require(try channel.readInbound(as: WebSocketFrame.self))
        #expect(message.opcode == .text && message.fin && String(buffer: message.data) == "Hello κόσμε")
    }

    @Test("protocol violations close with the right code",
          arguments: [
            ([WebSocketFrame(fin: true, rsv2: true, opcode: .text, data: ByteBuffer())], 1002),
            ([WebSocketFrame(fin: true, rsv1: true, opcode: .text, data: ByteBuffer())], 1002),  // RSV1 without deflate
            ([WebSocketFrame(fin: true, opcode: WebSocketOpcode(encodedWebSocketOpcode: 3)!, data: ByteBuffer())], 1002),
            ([WebSocketFrame(fin: true, opcode: .continuation, data: ByteBuffer())], 1002),
            ([WebSocketFrame(fin: false, opcode: .text, data: ByteBuffer()), WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer())], 1002),
            ([WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(bytes: [0xCE, 0xBA, 0xED, 0xA0, 0x80]))], 1007),
            ([WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(repeating: 0x61, count: 2000))], 1009),
            ([WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer(bytes: [0x03]))], 1002),
            ([WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer(bytes: [0x03, 0xEC]))], 1002),  // 1004
            ([WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer(bytes: [0x03, 0xE8, 0xFF]))], 1007),
            ([WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer(bytes: [0x0F, 0xA0]))], 4000),  // echoed
          ] as [([WebSocketFrame], Int)])
    func violations(frames: [WebSocketFrame], code: Int) throws {
        let channel = try channel(limit: 1000)
        for frame in frames { try channel.writeInbound(frame) }
        #expect(try sentClose(channel) == UInt16(code))
        #expect(try channel.readInbound(as: WebSocketFrame.self) == nil)
    }

    @Test("a 16 MiB limit: a 16 MiB message in 16 fragments passes, one byte more closes with 1009")
    func sixteenMebibytes() throws {
        let limit = 16 << 20
        let megabyte = ByteBuffer(repeating: 0x61, count: 1 << 20)
        for extra in [0, 1] {
            let channel = try channel(limit: limit)
            for i in 0..<16 {
                try channel.writeInbound(WebSocketFrame(fin: false, opcode: i == 0 ? .text : .continuation, data: megabyte))
            }
            try channel.writeInbound(WebSocketFrame(fin: true, opcode: .continuation, data: ByteBuffer(repeating: 0x61, count: extra)))
            if extra == 0 {
                let message = try #require(try channel.readInbound(as: WebSocketFrame.self))
                #expect(message.data.readableBytes == limit)
            } else {
                #expect(try sentClose(channel) == 1009)
            }
        }
    }

    @Test("after the server's close, only the client's close is read, and TCP closes then")
    func closeHandshake() throws {
        let channel = try channel()
        try channel.writeOutbound(WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer(bytes: [0x03, 0xE8])))
        #expect(try sentFrames(channel).map(\.opcode) == [.connectionClose])
        try channel.writeInbound(frame(.text, Array("late".utf8)))
        #expect(try channel.readInbound(as: WebSocketFrame.self) == nil)
        #expect(channel.isActive)
        try channel.writeInbound(frame(.connectionClose, [0x03, 0xE8]))
        #expect(!channel.isActive)
    }

    @Test("output: small frames coalesce into one write per flush, a big body goes by reference, in send order; nothing after the close")
    func coalescedOutput() throws {
        let channel = try channel()
        let handler = try channel.pipeline.syncOperations.handler(type: WebSocketProtocolHandler.self)
        let prefix = ByteBuffer(string: "{\"type\":\"changes\",\"sub\":\"t\",")
        let big = ByteBuffer(repeating: 0x61, count: WebSocketProtocolHandler.inlineBodyBytes + 1)
        handler.sendText(prefix: prefix, body: ByteBuffer(string: "\"n\":1}"))
        handler.sendText("{\"type\":\"ack\"}")
        handler.sendPing()
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil, "nothing reaches the channel before the flush")
        handler.flush()
        var first = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil, "one write for three frames")
        let frames = try ServerFrames.parse(&first)
        #expect(frames.map(\.opcode) == [.text, .text, .ping])
        #expect(String(buffer: frames[0].data) == "{\"type\":\"changes\",\"sub\":\"t\",\"n\":1}")
        // Pending small frame, then header + prefix, then the shared body itself (not a copy).
        handler.sendText("{\"small\":true}")
        handler.sendText(prefix: prefix, body: big)
        handler.flush()
        var headAndSmall = try #require(try channel.readOutbound(as: ByteBuffer.self))
        let body = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(DeflateLoopState.same(body, big))
        headAndSmall.writeImmutableBuffer(body)
        let second = try ServerFrames.parse(&headAndSmall)
        #expect(second.map { String(buffer: $0.data) } == ["{\"small\":true}", String(buffer: prefix) + String(buffer: big)])
        // The close goes after what was sent before it; nothing sent after it leaves.
        handler.sendText("{\"before\":true}")
        handler.close(.tooSlow, reason: "outbound queue full")
        handler.sendText("{\"after\":true}")
        handler.sendPing()
        handler.flush()
        let last = try sentFrames(channel)
        #expect(last.map(\.opcode) == [.text, .connectionClose])
        var close = last[1].data
        #expect(close.readInteger(as: UInt16.self) == 4008)
    }

    @Test("isWritable is the channel's (the 4008 check reads it per send)")
    func writability() throws {
        let channel = try channel()
        let handler = try channel.pipeline.syncOperations.handler(type: WebSocketProtocolHandler.self)
        #expect(handler.isWritable)
        channel.isWritable = false
        #expect(!handler.isWritable)
        channel.isWritable = true
        #expect(handler.isWritable)
    }

    @Test("compressed messages in and out; a compressed bomb closes with 1009")
    func compressedThroughHandler() throws {
        let channel = try channel(limit: 1 << 20, deflate: PerMessageDeflateParameters())
        let text = String(repeating: "compressible text ", count: 100)
        let compressed = ZlibDeflater(windowBits: 15, memoryLevel: 8)!.compressIndependently([ByteBuffer(string: text)])
        // Split the compressed message over two frames.
        var first = compressed
        let head = first.readSlice(length: compressed.readableBytes / 2)!
        try channel.writeInbound(WebSocketFrame(fin: false, rsv1: true, opcode: .text, data: head))
        try channel.writeInbound(WebSocketFrame(fin: true, opcode: .continuation, data: first))
        let message = try #require(try channel.readInbound(as: WebSocketFrame.self))
        #expect(String(buffer: message.data) == text)
        // Outbound: prefix + shared body → stored block + compressed body, RSV1 set.
        try channel.writeOutbound(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text), extensionData: ByteBuffer(string: "{\"p\":1,")))
        let out = try #require(try sentFrames(channel).first)
        #expect(out.rsv1)
        let (outcome, inflated) = inflate(out.data)
        #expect(outcome == .ok && String(buffer: inflated) == "{\"p\":1," + text)
        // Bomb.
        var bomb = ByteBuffer()
        ZlibDeflater(windowBits: 15, memoryLevel: 8, level: 9)!.compress(Array(repeating: ByteBuffer(repeating: 0x20, count: 1 << 20), count: 8), into: &bomb)
        try channel.writeInbound(WebSocketFrame(fin: true, rsv1: true, opcode: .text, data: bomb))
        #expect(try sentClose(channel) == 1009)
    }
}

/// Fan-out cost of compression on the hot path, without sockets: one body per batch written to N
/// connections through `WebSocketProtocolHandler` with the fan-out's frame shape (per-subscriber
/// prefix + shared body). Run with `SYNCLINE_WS_BENCH=1 swift test --filter FanoutCompressionBench`;
/// prints CPU µs and wire bytes per delivery, and resident memory per connection after one
/// compressed message. Off by default (it measures, it does not check).
@Suite("Fan-out compression bench", .enabled(if: ProcessInfo.processInfo.environment["SYNCLINE_WS_BENCH"] != nil))
struct FanoutCompressionBench {
    @Test("off vs context takeover vs shared")
    func measure() throws {
        let connections = Int(ProcessInfo.processInfo.environment["SYNCLINE_WS_BENCH_CONNECTIONS"] ?? "") ?? 1000
        let batches = 20
        let row = #"{"op":"insert","key":{"id":"4d0f6a1e-0000-4000-8000-0000000000NN"},"row":{"id":"4d0f6a1e-0000-4000-8000-0000000000NN","account_id":"alice-checking","amount":"12.30","memo":"coffee NN","created_at":"2026-11-27T21:00:00.000Z"}}"#
        func body(_ batch: Int) -> ByteBuffer {
            let changes = (0..<5).map { row.replacingOccurrences(of: "NN", with: String(format: "%02d", (batch * 5 + $0) % 100)) }
            return ByteBuffer(string: "\"cursor\":\"9c41e07a5b2d83f6.\(1000 + batch)\",\"changes\":[" + changes.joined(separator: ",") + "]}")
        }
        var modes: [(String, WebSocketCompression.Mode, PerMessageDeflateParameters?)] = [("off", .off, nil)]
        modes.append(("context-takeover", .contextTakeover, PerMessageDeflateParameters()))
        modes.append(("shared", .shared, PerMessageDeflateParameters()))
        for (name, mode, deflate) in modes {
            let before = WebSocketConformanceTests.residentBytes()
            var channels: [EmbeddedChannel] = []
            var prefixes: [ByteBuffer] = []
            for i in 0..<connections {
                let channel = EmbeddedChannel()
                try channel.pipeline.syncOperations.addHandler(WebSocketProtocolHandler(
                    options: .init(maximumMessageBytes: 1 << 20, compression: WebSocketCompression(mode: mode)), deflate: deflate))
                channels.append(channel)
                prefixes.append(ByteBuffer(string: "{\"type\":\"changes\",\"sub\":\"sub-\(i)\","))
            }
            var bytes = 0
            var cpu: Double = 0
            var rssAfterFirst = 0
            for batch in 0..<batches {
                let shared = body(batch)
                let start = clock()
                for (channel, prefix) in zip(channels, prefixes) {
                    channel.write(WebSocketFrame(fin: true, opcode: .text, data: shared, extensionData: prefix), promise: nil)
                }
                cpu += Double(clock() - start) / Double(CLOCKS_PER_SEC)
                for channel in channels {
                    channel.flush()
                    while let buffer = try channel.readOutbound(as: ByteBuffer.self) { bytes += buffer.readableBytes }
                }
                if batch == 0 { rssAfterFirst = WebSocketConformanceTests.residentBytes() }
            }
            let deliveries = Double(connections * batches)
            print(String(format: "fanout-bench mode=%@ connections=%d uncompressed=%d B/delivery: %.2f µs CPU/delivery, %.0f B/delivery on the wire, RSS %.1f KiB/connection after the first batch",
                         name, connections, prefixes[0].readableBytes + body(0).readableBytes, cpu / deliveries * 1e6, Double(bytes) / deliveries,
                         Double(rssAfterFirst - before) / 1024 / Double(connections)))
            for channel in channels { _ = try? channel.finish() }
            let state = DeflateLoopState.forCurrentThread
            print("fanout-bench shared cache: \(state.hits) hits, \(state.misses) compressions")
        }
    }
}

/// Parses what a server wrote (unmasked frames, RFC 6455 §5.2), for tests of the WebSocket layer.
enum ServerFrames {
    struct Malformed: Error {}

    static func parse(_ bytes: inout ByteBuffer) throws -> [WebSocketFrame] {
        var frames: [WebSocketFrame] = []
        while bytes.readableBytes > 0 {
            guard let first = bytes.readInteger(as: UInt8.self), let second = bytes.readInteger(as: UInt8.self),
                  second & 0x80 == 0, let opcode = WebSocketOpcode(encodedWebSocketOpcode: first & 0x0F) else { throw Malformed() }
            var length = Int(second & 0x7F)
            if length == 126 {
                guard let extended = bytes.readInteger(as: UInt16.self) else { throw Malformed() }
                length = Int(extended)
            } else if length == 127 {
                guard let extended = bytes.readInteger(as: UInt64.self) else { throw Malformed() }
                length = Int(extended)
            }
            guard let payload = bytes.readSlice(length: length) else { throw Malformed() }
            frames.append(WebSocketFrame(fin: first & 0x80 != 0, rsv1: first & 0x40 != 0, rsv2: first & 0x20 != 0, rsv3: first & 0x10 != 0,
                                         opcode: opcode, data: payload))
        }
        return frames
    }
}
