import Metrics
import NIOCore
import NIOPosix
import NIOWebSocket

/// Bytes in, WebSocket frames out, with a budget: at most `framesPerPass` frames per connection
/// per event-loop pass. It replaces `ByteToMessageHandler(WebSocketFrameDecoder)`, which decodes
/// every frame of a read before returning: one 64 KiB read of 26-byte pings is 2,500 messages
/// handled back to back while every other connection on the loop waits (a bystander's round trip
/// reached 340 ms behind a 20,000-ping flood).
///
/// Past the budget the rest of the read stays buffered (undecoded), the channel stops reading
/// (`autoRead` off: the kernel's window pushes back on the sender) and the reader waits for the
/// next pass of the loop (`WebSocketReadResumer`), so other connections' reads come in between.
/// With `maxMessagesPerRead` = 1 on the channel (`SynclineServer`), one connection's pass is at
/// most one socket read and `framesPerPass` frames.
final class WebSocketFrameReader: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = WebSocketFrame

    /// Passes cut short by the budget (`syncline_websocket_deferred_passes_total`).
    static let deferredPasses = Counter(label: "syncline_websocket_deferred_passes_total")

    private let decoder: WebSocketFrameDecoder
    private let framesPerPass: Int
    /// Read and not yet decoded; nil when empty.
    private var buffered: ByteBuffer?
    private var decodedThisPass = 0
    /// `autoRead` was turned off because frames are waiting.
    private var holdingReads = false
    /// Waiting for the resumer's next pass.
    private var awaitingResume = false
    /// The decoder threw: the connection is failing, nothing more is decoded.
    private var failed = false
    /// Inside `decode` (a frame's handler may fire another read: it only adds bytes).
    private var decoding = false
    private var context: ChannelHandlerContext?

    init(maxFrameSize: Int, framesPerPass: Int) {
        self.decoder = WebSocketFrameDecoder(maxFrameSize: maxFrameSize)
        self.framesPerPass = max(1, framesPerPass)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        buffered = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        guard !failed else { return }
        if buffered == nil {
            buffered = bytes
        } else {
            buffered!.writeImmutableBuffer(bytes)
        }
        // A read while frames wait (sent before `autoRead` went off) only adds bytes: the waiting
        // frames go first, at the resumer's pace.
        guard !awaitingResume, !decoding else { return }
        decode(context)
    }

    /// A new read pass starts with a fresh budget.
    func channelReadComplete(context: ChannelHandlerContext) {
        if !awaitingResume { decodedThisPass = 0 }
        context.fireChannelReadComplete()
    }

    /// The resumer's pass: a fresh budget for the waiting frames, then the usual read-complete
    /// (the layers above flush what they answered).
    func resume() {
        guard let context, awaitingResume else { return }
        awaitingResume = false
        decodedThisPass = 0
        decode(context)
        decodedThisPass = 0
        context.fireChannelReadComplete()
    }

    private func decode(_ context: ChannelHandlerContext) {
        decoding = true
        defer { decoding = false }
        while decodedThisPass < framesPerPass, !failed, self.context != nil, var buffer = buffered, buffer.readableBytes > 0 {
            buffered = nil
            let state: DecodingState
            do {
                state = try decoder.decode(context: context, buffer: &buffer)
            } catch {
                failed = true
                buffered = nil
                context.fireErrorCaught(error)
                return
            }
            // Firing the frame may have removed this handler or delivered nothing new.
            if self.context == nil { return }
            if var added = buffered {
                // Bytes read while the frame was handled come after the rest of this buffer.
                buffer.writeBuffer(&added)
            }
            buffered = buffer.readableBytes > 0 ? buffer : nil
            if state == .needMoreData { break }
            decodedThisPass += 1
        }
        compact()
        let waiting = decodedThisPass >= framesPerPass && (buffered?.readableBytes ?? 0) > 0 && !failed
        if waiting {
            if !holdingReads {
                holdingReads = true
                context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
            }
            awaitingResume = true
            Self.deferredPasses.increment()
            WebSocketReadResumer.current.enqueue(self, on: context.eventLoop)
        } else if holdingReads {
            holdingReads = false
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
    }

    /// Drops consumed bytes once they dominate the buffer, so a long-lived partial frame does
    /// not keep every byte before it.
    private func compact() {
        guard var buffer = buffered, buffer.readerIndex > 16 << 10, buffer.readerIndex > buffer.readableBytes else { return }
        buffered = nil
        buffer.discardReadBytes()
        buffered = buffer
    }
}

/// One per event-loop thread: the frame readers waiting for their next pass. A single task per
/// loop resumes all of them, one budget each, and is scheduled again only after it finished, a
/// little in the future: NIO runs every task that is ready before it polls sockets again, so a
/// task re-armed for "now" would keep the loop from reading anyone else's bytes.
final class WebSocketReadResumer {
    /// How far ahead the next pass is scheduled: long enough that the loop polls its sockets
    /// first, short enough not to matter to a client sending bursts.
    static let delay: TimeAmount = .microseconds(100)

    nonisolated(unsafe) private static let perThread = ThreadSpecificVariable<WebSocketReadResumer>()
    static var current: WebSocketReadResumer {
        if let resumer = perThread.currentValue { return resumer }
        let resumer = WebSocketReadResumer()
        perThread.currentValue = resumer
        return resumer
    }

    private var waiting: [WebSocketFrameReader] = []
    private var scheduled = false
    private var running = false

    func enqueue(_ reader: WebSocketFrameReader, on loop: any EventLoop) {
        waiting.append(reader)
        if !scheduled && !running { schedule(on: loop) }
    }

    private func schedule(on loop: any EventLoop) {
        scheduled = true
        let bound = NIOLoopBound(self, eventLoop: loop)
        loop.scheduleTask(in: Self.delay) { bound.value.run(on: loop) }
    }

    private func run(on loop: any EventLoop) {
        scheduled = false
        running = true
        let batch = waiting
        waiting = []
        for reader in batch { reader.resume() }
        running = false
        if !waiting.isEmpty { schedule(on: loop) }
    }
}
