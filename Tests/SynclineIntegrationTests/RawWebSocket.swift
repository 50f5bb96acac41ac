import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SynclineProtocol

/// A hand-driven WebSocket client on a plain socket, for what a conforming client library never
/// does: send hand-made (e.g. compressed) frames, or stop answering pings.
final class RawWebSocket: Sendable {
    struct Frame: Sendable {
        var fin: Bool
        var rsv1: Bool
        var opcode: UInt8
        var payload: [UInt8]
        var closeCode: UInt16? {
            guard opcode == 0x8, payload.count >= 2 else { return nil }
            return UInt16(payload[0]) << 8 | UInt16(payload[1])
        }
        var text: String { String(decoding: payload, as: UTF8.self) }
    }

    private let channel: any Channel
    private let received: NIOLockedValueBox<ByteBuffer>
    /// The 101 response's header block.
    let responseHead: String

    private init(channel: any Channel, received: NIOLockedValueBox<ByteBuffer>, responseHead: String) {
        self.channel = channel
        self.received = received
        self.responseHead = responseHead
    }

    /// `receiveBuffer`: SO_RCVBUF (fixed, so the kernel cannot grow it), for a client meant to
    /// back the server's writes up quickly.
    static func connect(port: Int, path: String = "/v1/sync", extensions: String? = nil,
                        subprotocol: String? = synclineSubprotocol, receiveBuffer: Int? = nil) async throws -> RawWebSocket {
        let received = NIOLockedValueBox(ByteBuffer())
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        if let receiveBuffer {
            bootstrap = bootstrap.channelOption(ChannelOptions.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBuffer))
        }
        let channel = try await bootstrap
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(received: received))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        var request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        request += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        if let subprotocol { request += "Sec-WebSocket-Protocol: \(subprotocol)\r\n" }
        if let extensions { request += "Sec-WebSocket-Extensions: \(extensions)\r\n" }
        request += "\r\n"
        try await channel.writeAndFlush(ByteBuffer(string: request)).get()
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let head: String? = received.withLockedValue { buffer in
                let view = buffer.readableBytesView
                guard let end = view.firstRange(of: Array("\r\n\r\n".utf8)) else { return nil }
                let length = end.upperBound - view.startIndex
                return buffer.readString(length: length)
            }
            if let head {
                guard head.hasPrefix("HTTP/1.1 101") else { throw TestFailure("upgrade refused: \(head)") }
                return RawWebSocket(channel: channel, received: received, responseHead: head)
            }
            guard channel.isActive else { throw TestFailure("connection closed before the upgrade response") }
            guard ContinuousClock.now < deadline else { throw TestFailure("no upgrade response") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Sends one masked frame.
    func send(opcode: UInt8, fin: Bool = true, rsv1: Bool = false, payload: [UInt8]) async throws {
        var frame = ByteBuffer()
        frame.writeInteger(UInt8((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | opcode))
        if payload.count < 126 {
            frame.writeInteger(UInt8(0x80 | payload.count))
        } else if payload.count <= 0xFFFF {
            frame.writeInteger(UInt8(0x80 | 126))
            frame.writeInteger(UInt16(payload.count))
        } else {
            frame.writeInteger(UInt8(0x80 | 127))
            frame.writeInteger(UInt64(payload.count))
        }
        let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        frame.writeBytes(mask)
        frame.writeBytes(payload.enumerated().map { $0.element ^ mask[$0.offset & 3] })
        try await channel.writeAndFlush(frame).get()
    }

    func sendText(_ text: String) async throws {
        try await send(opcode: 0x1, payload: Array(text.utf8))
    }

    /// The next frame from the server; nil once the connection closed with nothing left to read.
    func next(timeout: Duration = .seconds(10)) async throws -> Frame? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let frame = received.withLockedValue({ Self.parse(&$0) }) { return frame }
            if !channel.isActive { return received.withLockedValue { Self.parse(&$0) } }
            guard ContinuousClock.now < deadline else { throw TestFailure("no frame within \(timeout)") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Skips frames until a close frame (returned) or the end of the connection (nil).
    func closeFrame(timeout: Duration = .seconds(10)) async throws -> Frame? {
        while let frame = try await next(timeout: timeout) {
            if frame.opcode == 0x8 { return frame }
        }
        return nil
    }

    var isClosed: Bool { !channel.isActive }

    /// Stops (or resumes) reading from the socket: the server's writes back up as behind a client
    /// that does not read.
    func setReading(_ reading: Bool) async throws {
        try await channel.setOption(ChannelOptions.autoRead, value: reading).get()
        if reading { channel.read() }
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
        let payload = buffer.readBytes(length: length)!
        return Frame(fin: b0 & 0x80 != 0, rsv1: b0 & 0x40 != 0, opcode: b0 & 0x0F, payload: payload)
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
