import NIOCore
import NIOEmbedded
import NIOWebSocket
@testable import SynclineWebSocket

/// One server-side connection as `/v1/sync` builds it after the upgrade (NIO's frame decoder with
/// the server's frame limit, then `WebSocketProtocolHandler`), on an `EmbeddedChannel`; records
/// what reaches the application and what the server writes.
final class Connection {
    struct Message: Equatable {
        var text: Bool
        var payload: [UInt8]
    }

    let channel = EmbeddedChannel()
    let handler: WebSocketProtocolHandler
    let limit: Int
    /// Whole messages (and pongs, as opcode-less entries are not expected) passed to the application.
    private(set) var messages: [Message] = []
    private(set) var pongs = 0
    /// Every byte the server wrote, in order.
    private(set) var output: [UInt8] = []
    /// Reads stopped: the channel closed, or an error reached the end of the pipeline.
    private(set) var stopped = false

    init(limit: Int, deflate: PerMessageDeflateParameters?, compression: WebSocketCompression = WebSocketCompression()) {
        self.limit = limit
        handler = WebSocketProtocolHandler(options: .init(maximumMessageBytes: limit, compression: compression), deflate: deflate)
        let decoder = ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: WebSocketProtocolHandler.maximumFrameSize(messageLimit: limit)))
        try! channel.pipeline.syncOperations.addHandler(decoder)
        try! channel.pipeline.syncOperations.addHandler(handler)
        try! channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    /// Feeds bytes as one read; then collects what came out. Nothing is fed once reads stopped.
    func receive(_ bytes: ArraySlice<UInt8>) {
        guard !stopped else { return }
        let closeWasSent = handler.closeSent
        do {
            try channel.writeInbound(channel.allocator.buffer(bytes: bytes))
        } catch {
            stopped = true
        }
        collect(closeWasSent: closeWasSent)
        if !channel.isActive { stopped = true }
    }

    /// Drains the channel: messages (none may arrive after the server's close), and output bytes.
    func collect(closeWasSent: Bool = false) {
        while let frame = try? channel.readInbound(as: WebSocketFrame.self) {
            expect(!closeWasSent, "a frame reached the application after the server's close")
            expect(frame.fin && !frame.rsv1 && !frame.rsv2 && !frame.rsv3, "application got a raw frame \(frame)")
            switch frame.opcode {
            case .text, .binary:
                let payload = Array(frame.data.readableBytesView)
                expect(payload.count <= limit, "message of \(payload.count) bytes > limit \(limit)")
                if frame.opcode == .text {
                    expect(String(validating: payload, as: UTF8.self) != nil, "text message is not UTF-8")
                }
                messages.append(Message(text: frame.opcode == .text, payload: payload))
            case .pong:
                pongs += 1
            default:
                fail("application got opcode \(frame.opcode)")
            }
        }
        while let buffer = try? channel.readOutbound(as: ByteBuffer.self) {
            output += buffer.readableBytesView
        }
    }

    /// What the server wrote, parsed and checked.
    var frames: [ServerFrame] { parseServerFrames(output) }

    func finish() {
        collect()
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }
}
