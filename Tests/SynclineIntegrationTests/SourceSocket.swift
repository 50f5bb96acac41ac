import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SynclineProtocol

/// A plain TCP client bound to a chosen loopback source address (127.0.0.x all reach the server
/// on Linux), for the per-address limits: it may send a PROXY header first, any request headers,
/// then WebSocket frames by hand.
final class SourceSocket: Sendable {
    private let channel: any Channel
    private let received: NIOLockedValueBox<ByteBuffer>

    private init(channel: any Channel, received: NIOLockedValueBox<ByteBuffer>) {
        self.channel = channel
        self.received = received
    }

    static func connect(port: Int, from source: String) async throws -> SourceSocket {
        let received = NIOLockedValueBox(ByteBuffer())
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(to: try SocketAddress(ipAddress: source, port: 0))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(received: received))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return SourceSocket(channel: channel, received: received)
    }

    /// The upgrade's answer: its status and header block (`Retry-After` and the like).
    struct Answer: Sendable {
        var status: Int
        var head: String
        func header(_ name: String) -> String? {
            for line in head.split(separator: "\r\n") {
                let parts = line.split(separator: ":", maxSplits: 1)
                if parts.count == 2, parts[0].lowercased() == name.lowercased() {
                    return parts[1].trimmingCharacters(in: .whitespaces)
                }
            }
            return nil
        }
    }

    /// Connects from `source`, sends `prefix` (a PROXY header) and a `/v1/sync` upgrade with
    /// `headers`; the status, or nil when the server closed without answering.
    static func upgrade(port: Int, from source: String, prefix: [UInt8] = [], headers: [(String, String)] = []) async throws -> (SourceSocket, Answer?) {
        let socket = try await connect(port: port, from: source)
        return (socket, try await socket.upgrade(port: port, prefix: prefix, headers: headers))
    }

    func upgrade(port: Int, prefix: [UInt8] = [], headers: [(String, String)] = []) async throws -> Answer? {
        var request = "GET /v1/sync HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        request += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: \(synclineSubprotocol)\r\n"
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        request += "\r\n"
        try await send(prefix + Array(request.utf8))
        // Generous: a full parallel test run on 2 cores delays answers by many seconds.
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            let head: String? = received.withLockedValue { buffer in
                let view = buffer.readableBytesView
                guard let end = view.firstRange(of: Array("\r\n\r\n".utf8)) else { return nil }
                return buffer.readString(length: end.upperBound - view.startIndex)
            }
            if let head {
                let status = head.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
                if status != 101 {  // drop the refusal's JSON body
                    try? await Task.sleep(for: .milliseconds(20))
                    received.withLockedValue { $0.clear() }
                }
                return Answer(status: status, head: head)
            }
            guard channel.isActive else { return nil }
            guard ContinuousClock.now < deadline else { throw TestFailure("no upgrade response") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    var isActive: Bool { channel.isActive }

    func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
    }

    /// One masked text frame's bytes.
    static func textFrame(_ text: String) -> [UInt8] {
        let payload = Array(text.utf8)
        var frame: [UInt8] = [0x81]
        switch payload.count {
        case ..<126: frame.append(0x80 | UInt8(payload.count))
        case ..<65_536: frame += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        default: frame += [0x80 | 127] + (0..<8).map { UInt8(truncatingIfNeeded: UInt64(payload.count) >> (56 - 8 * UInt64($0))) }
        }
        let mask: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]
        frame += mask
        frame += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
        return frame
    }

    func sendText(_ text: String) async throws {
        try await send(Self.textFrame(text))
    }

    /// The next text message's JSON, skipping pings; nil when a close frame or the end came first.
    func nextMessage(timeout: Duration = .seconds(30)) async throws -> JSONValue? {
        while let frame = try await nextFrame(timeout: timeout) {
            switch frame.opcode {
            case 0x1: return try JSONParser.parse(String(decoding: frame.payload, as: UTF8.self))
            case 0x8:
                lastClose.withLockedValue { $0 = frame.payload.count >= 2 ? UInt16(frame.payload[0]) << 8 | UInt16(frame.payload[1]) : nil }
                return nil
            default: continue
            }
        }
        return nil
    }

    /// The close code of the close frame that ended `nextMessage`, if any.
    let lastClose = NIOLockedValueBox<UInt16?>(nil)

    struct Frame { var opcode: UInt8; var payload: [UInt8] }

    func nextFrame(timeout: Duration) async throws -> Frame? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let frame = received.withLockedValue({ Self.parse(&$0) }) { return frame }
            guard channel.isActive else { return received.withLockedValue { Self.parse(&$0) } }
            guard ContinuousClock.now < deadline else { throw TestFailure("no frame within \(timeout)") }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    func close() async {
        try? await channel.close()
    }

    private static func parse(_ buffer: inout ByteBuffer) -> Frame? {
        let view = buffer.readableBytesView
        guard view.count >= 2 else { return nil }
        let b0 = view[view.startIndex], b1 = view[view.startIndex + 1]
        var offset = 2
        var length = Int(b1 & 0x7F)
        if length == 126 {
            guard view.count >= 4 else { return nil }
            length = Int(buffer.getInteger(at: buffer.readerIndex + 2, as: UInt16.self)!)
            offset = 4
        } else if length == 127 {
            guard view.count >= 10 else { return nil }
            length = Int(buffer.getInteger(at: buffer.readerIndex + 2, as: UInt64.self)!)
            offset = 10
        }
        guard view.count >= offset + length else { return nil }
        buffer.moveReaderIndex(forwardBy: offset)
        return Frame(opcode: b0 & 0x0F, payload: buffer.readBytes(length: length)!)
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received: NIOLockedValueBox<ByteBuffer>
        init(received: NIOLockedValueBox<ByteBuffer>) { self.received = received }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            received.withLockedValue { $0.writeBuffer(&buffer) }
        }
    }
}
