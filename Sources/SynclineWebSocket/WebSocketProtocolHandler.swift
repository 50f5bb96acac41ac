import NIOCore
import NIOWebSocket
import SynclineProtocol

/// The RFC 6455 layer: the one place for frames, pings and the close handshake, between NIO's
/// frame decoder (inbound) and TLS or the socket (outbound: it encodes frames to bytes itself; NIO's
/// frame encoder is not in the pipeline, see `WebSocketUpgrader`). The application handler after it
/// (`SyncConnection`, or the Autobahn echo) receives only whole, validated messages (single `fin`
/// text/binary frames, inflated) and pongs, and sends through this handler's loop-bound API
/// (`sendText`, `sendPing`, `close`, `flush`: `WebSocketProtocolHandler+Output.swift`), so data,
/// pongs and closes leave in the order they were sent. This layer owns:
/// - reserved bits (RSV1 only on the first frame of a compressed message) and reserved opcodes → 1002;
///   the decoder's errors (a frame over the size limit → 1009, a fragmented or long control frame → 1002);
/// - reassembly, UTF-8 validation and the message size limit (`WebSocketMessageAssembler`);
/// - pings (answered here, also between fragments) and the close handshake: a close from the
///   client is validated (1002 for a 1-byte payload or an invalid code, 1007 for a reason that is
///   not UTF-8) and answered, then the server closes TCP; after the server's own close frame
///   nothing but the client's close is read, nothing more is sent, and TCP is closed when the
///   client's close arrives or after `closeTimeout` (the one close timer);
/// - permessage-deflate on the way out (`shared` or `contextTakeover`).
public final class WebSocketProtocolHandler: ChannelDuplexHandler {
    public typealias InboundIn = WebSocketFrame
    public typealias InboundOut = WebSocketFrame
    /// Other handlers may still write whole frames through the pipeline (tests, tools): they take
    /// the same path as the API.
    public typealias OutboundIn = WebSocketFrame
    public typealias OutboundOut = ByteBuffer

    /// The layer's limits and compression settings.
    public struct Options: Sendable {
        /// Largest message accepted, after inflating (bigger: close 1009).
        public var maximumMessageBytes: Int
        /// What the server compresses and how, when permessage-deflate was negotiated.
        public var compression: WebSocketCompression
        /// How long the server waits for the client's close frame after its own before closing TCP.
        public var closeTimeout: TimeAmount = .seconds(3)

        public init(maximumMessageBytes: Int, compression: WebSocketCompression, closeTimeout: TimeAmount = .seconds(3)) {
            self.maximumMessageBytes = maximumMessageBytes
            self.compression = compression
            self.closeTimeout = closeTimeout
        }
    }

    public let options: Options
    /// The negotiated permessage-deflate parameters; nil: uncompressed.
    public let deflate: PerMessageDeflateParameters?
    private var assembler: WebSocketMessageAssembler
    /// Set between `handlerAdded` and `handlerRemoved`.
    var context: ChannelHandlerContext?
    /// The server's close frame was sent: nothing more is.
    private(set) var closeSent = false
    private var closeReceived = false
    private var closeTimer: Scheduled<Void>?
    /// Small frames written since the last `flush`, in one buffer: one channel write per
    /// connection and flush instead of three per frame. Nil when empty (an idle connection holds
    /// no buffer).
    var pending: ByteBuffer?
    /// Bytes of small frames written but not yet flushed to the channel (part of what a slow
    /// reader has queued).
    public var pendingBytes: Int { pending?.readableBytes ?? 0 }
    /// A write reached the channel since its last flush.
    var unflushed = false
    /// Whether the channel's outbound queue is under its high watermark (the connection closes a
    /// slow reader with 4008 when it is not).
    public var isWritable: Bool { context?.channel.isWritable ?? false }
    /// `contextTakeover` mode: this connection's own compressor, made on its first compressed message.
    var deflater: ZlibDeflater?
    var loopState: DeflateLoopState?

    /// A handler for one connection; `deflate` is what `PerMessageDeflateParameters.negotiate` chose.
    public init(options: Options, deflate: PerMessageDeflateParameters?) {
        self.options = options
        self.deflate = deflate
        self.assembler = WebSocketMessageAssembler(maximumBytes: options.maximumMessageBytes, allowsCompression: deflate != nil)
    }

    /// The frame decoder's `maxFrameSize`: the message limit plus room for a compressed frame
    /// that came out slightly bigger than its content; the assembler enforces the exact limit.
    public static func maximumFrameSize(messageLimit: Int) -> Int {
        messageLimit + messageLimit / 64 + 1024
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        closeTimer?.cancel()
        closeTimer = nil
        pending = nil
        self.context = nil
    }

    public func channelInactive(context: ChannelHandlerContext) {
        closeTimer?.cancel()
        closeTimer = nil
        pending = nil
        context.fireChannelInactive()
    }

    /// After the application has handled what was read (and written its answers), one flush.
    public func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
        flush()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOWebSocketError {
            // The decoder stops at a bad frame and reads nothing more, so the client's close cannot
            // arrive: TCP closes once our close frame is out.
            let code: CloseCode = error == .invalidFrameLength ? .messageTooBig : .protocolError
            fail(code, "invalid frame", thenCloseTCP: true)
            return
        }
        if error is ByteToMessageDecoderError, closeSent {
            return  // bytes after the decoder's own error: already failing
        }
        context.fireErrorCaught(error)
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard !closeReceived else { return }
        guard !frame.rsv2, !frame.rsv3 else { return fail(.protocolError, "reserved bits set") }
        switch frame.opcode {
        case .ping:
            guard !frame.rsv1 else { return fail(.protocolError, "RSV1 on a control frame") }
            guard !closeSent else { return }
            sendControl(.pong, payload: WebSocketMessageAssembler.unmaskedData(frame))
        case .pong:
            guard !frame.rsv1 else { return fail(.protocolError, "RSV1 on a control frame") }
            guard !closeSent else { return }
            context.fireChannelRead(data)
        case .connectionClose:
            guard !frame.rsv1 else { return fail(.protocolError, "RSV1 on a control frame") }
            receivedClose(context, frame)
        case .text, .binary, .continuation:
            guard !closeSent else { return }
            switch assembler.receive(frame) {
            case .none: break
            case .fail(let code, let reason): fail(code, reason)
            case .text(let message): context.fireChannelRead(wrapInboundOut(WebSocketFrame(fin: true, opcode: .text, data: message)))
            case .binary(let message): context.fireChannelRead(wrapInboundOut(WebSocketFrame(fin: true, opcode: .binary, data: message)))
            }
        default:
            fail(.protocolError, "reserved opcode")
        }
    }

    private func receivedClose(_ context: ChannelHandlerContext, _ frame: WebSocketFrame) {
        closeReceived = true
        if closeSent {
            // The client answered our close: the handshake is complete; the server closes TCP.
            context.close(promise: nil)
            return
        }
        var payload = WebSocketMessageAssembler.unmaskedData(frame)
        var reply = Self.allocator.buffer(capacity: 2)
        switch payload.readableBytes {
        case 0:
            break  // no status: answer with none
        case 1:
            reply.writeInteger(CloseCode.protocolError.rawValue)
        default:
            let code = payload.readInteger(as: UInt16.self)!
            if !Self.isValidReceivedCloseCode(code) {
                reply.writeInteger(CloseCode.protocolError.rawValue)
            } else if !UTF8Validator.isValid(payload) {
                reply.writeInteger(CloseCode.invalidPayload.rawValue)
            } else {
                reply.writeInteger(code)
            }
        }
        sendClose(reply, thenCloseTCP: true)
    }

    /// Codes a peer may send (RFC 6455 §7.4, IANA registry): not 1004–1006 or 1015 (reserved,
    /// never on the wire), nothing below 1000 or in the unassigned 1016–2999.
    static func isValidReceivedCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: return true
        default: return false
        }
    }

    /// Fails the connection (RFC 6455 §7.1.7): sends a close with `code` and stops reading data.
    private func fail(_ code: CloseCode, _ reason: String, thenCloseTCP: Bool = false) {
        guard !closeSent else { return }
        sendClose(Self.closePayload(code, reason: reason), thenCloseTCP: thenCloseTCP)
    }

    // MARK: Closing

    /// Starts the close handshake with `code` (the reason is cut to fit a control frame). Whatever
    /// was sent before leaves first; nothing sent after it does. TCP closes when the client
    /// answers, or after `closeTimeout`. Idempotent.
    public func close(_ code: CloseCode, reason: String) {
        guard !closeSent, context != nil else { return }
        sendClose(Self.closePayload(code, reason: reason), thenCloseTCP: false)
    }

    static func closePayload(_ code: CloseCode, reason: String) -> ByteBuffer {
        var data = allocator.buffer(capacity: 2 + 123)
        data.writeInteger(code.rawValue)
        data.writeString(String(decoding: reason.utf8.prefix(123), as: UTF8.self))
        return data
    }

    /// Writes and flushes a close frame, after which nothing more is sent; arms the close timer,
    /// or (`thenCloseTCP`: the handshake cannot or need not go on) closes TCP once it is written.
    func sendClose(_ payload: ByteBuffer, thenCloseTCP: Bool) {
        guard !closeSent, let context else { return }
        let channel = context.channel
        if thenCloseTCP {
            let written = context.eventLoop.makePromise(of: Void.self)
            appendFrame(opcode: WebSocketOpcode.connectionClose, rsv1: false, prefix: nil, body: payload, promise: written)
            written.futureResult.whenComplete { _ in channel.close(promise: nil) }
        } else {
            appendFrame(opcode: WebSocketOpcode.connectionClose, rsv1: false, prefix: nil, body: payload, promise: nil)
        }
        closeSent = true
        flush()
        if closeTimer == nil {
            closeTimer = context.eventLoop.scheduleTask(in: options.closeTimeout) { channel.close(promise: nil) }
        }
    }
}
