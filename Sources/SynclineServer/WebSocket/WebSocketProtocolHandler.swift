import NIOCore
import NIOWebSocket
import SynclineProtocol

/// The RFC 6455 layer between NIO's frame codec and an application handler (`SyncConnection`, or
/// the Autobahn echo). Inbound, the application sees only whole, validated messages (as single
/// `fin` text/binary frames, inflated) and pongs; outbound, it writes whole frames and this layer
/// compresses them when permessage-deflate was negotiated. This layer owns:
/// - reserved bits (RSV1 only on the first frame of a compressed message) and reserved opcodes → 1002;
/// - reassembly, UTF-8 validation and the message size limit (`WebSocketMessageAssembler`);
/// - pings (answered here, also between fragments) and the close handshake: a close from the
///   client is validated (1002 for a 1-byte payload or an invalid code, 1007 for a reason that is
///   not UTF-8) and answered, then the server closes TCP; after the server's own close frame
///   nothing but the client's close is read, and TCP is closed when it arrives or after
///   `closeTimeout`.
final class WebSocketProtocolHandler: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    struct Options: Sendable {
        var maximumMessageBytes: Int
        var compression: WebSocketCompression
        var closeTimeout: TimeAmount = .seconds(3)
    }

    private let options: Options
    private let deflate: PerMessageDeflateParameters?
    private var assembler: WebSocketMessageAssembler
    private var closeSent = false
    private var closeReceived = false
    private var closeTimer: Scheduled<Void>?
    /// `contextTakeover` mode: this connection's own compressor, made on its first compressed message.
    private var deflater: ZlibDeflater?
    private var loopState: DeflateLoopState?
    /// Stored blocks of this connection's recent per-subscriber prefixes (a prefix is constant per
    /// subscription), so the shared path allocates nothing per frame.
    private var storedBlocks: [(prefix: ByteBuffer, block: ByteBuffer)] = []

    init(options: Options, deflate: PerMessageDeflateParameters?) {
        self.options = options
        self.deflate = deflate
        self.assembler = WebSocketMessageAssembler(maximumBytes: options.maximumMessageBytes, allowsCompression: deflate != nil)
    }

    /// The frame decoder's `maxFrameSize`: the message limit plus room for a compressed frame
    /// that came out slightly bigger than its content; the assembler enforces the exact limit.
    static func maximumFrameSize(messageLimit: Int) -> Int {
        messageLimit + messageLimit / 64 + 1024
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        closeTimer?.cancel()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closeTimer?.cancel()
        context.fireChannelInactive()
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard !closeReceived else { return }
        guard !frame.rsv2, !frame.rsv3 else { return fail(context, .protocolError, "reserved bits set") }
        switch frame.opcode {
        case .ping:
            guard !frame.rsv1 else { return fail(context, .protocolError, "RSV1 on a control frame") }
            guard !closeSent else { return }
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .pong:
            guard !frame.rsv1 else { return fail(context, .protocolError, "RSV1 on a control frame") }
            guard !closeSent else { return }
            context.fireChannelRead(data)
        case .connectionClose:
            guard !frame.rsv1 else { return fail(context, .protocolError, "RSV1 on a control frame") }
            receivedClose(context, frame)
        case .text, .binary, .continuation:
            guard !closeSent else { return }
            switch assembler.receive(frame) {
            case .none: break
            case .fail(let code, let reason): fail(context, code, reason)
            case .text(let message): context.fireChannelRead(wrapInboundOut(WebSocketFrame(fin: true, opcode: .text, data: message)))
            case .binary(let message): context.fireChannelRead(wrapInboundOut(WebSocketFrame(fin: true, opcode: .binary, data: message)))
            }
        default:
            fail(context, .protocolError, "reserved opcode")
        }
    }

    private func receivedClose(_ context: ChannelHandlerContext, _ frame: WebSocketFrame) {
        closeReceived = true
        if closeSent {
            // The client answered our close: the handshake is complete; the server closes TCP.
            context.close(promise: nil)
            return
        }
        var payload = frame.unmaskedData
        var reply = context.channel.allocator.buffer(capacity: 2)
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
        closeSent = true
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: reply)))
            .whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
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
    private func fail(_ context: ChannelHandlerContext, _ code: CloseCode, _ reason: String) {
        guard !closeSent else { return }
        var data = context.channel.allocator.buffer(capacity: 2 + 123)
        data.writeInteger(code.rawValue)
        data.writeString(String(decoding: reason.utf8.prefix(123), as: UTF8.self))
        write(context: context, data: wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)), promise: nil)
        context.flush()
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !closeSent else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        let frame = unwrapOutboundIn(data)
        switch frame.opcode {
        case .connectionClose:
            closeSent = true
            context.write(data, promise: promise)
            let channel = context.channel
            closeTimer = context.eventLoop.scheduleTask(in: options.closeTimeout) { channel.close(promise: nil) }
        case .text, .binary:
            guard let deflate, frame.fin, !frame.rsv1,
                  frame.length >= options.compression.minimumBytes,
                  let compressed = compress(frame, deflate, allocator: context.channel.allocator)
            else {
                context.write(data, promise: promise)
                return
            }
            context.write(wrapOutboundOut(compressed), promise: promise)
        default:
            context.write(data, promise: promise)
        }
    }

    private func compress(_ frame: WebSocketFrame, _ deflate: PerMessageDeflateParameters, allocator: ByteBufferAllocator) -> WebSocketFrame? {
        if options.compression.mode == .contextTakeover && !deflate.serverNoContextTakeover {
            let parts = [frame.extensionData, frame.data].compactMap { $0 }
            if deflater == nil {
                deflater = ZlibDeflater(windowBits: min(options.compression.windowBits, deflate.serverMaxWindowBits),
                                        memoryLevel: options.compression.memoryLevel)
            }
            guard let deflater else { return nil }
            var output = allocator.buffer(capacity: frame.length / 2 + 64)
            deflater.compress(parts, into: &output)
            return WebSocketFrame(fin: true, rsv1: true, opcode: frame.opcode, data: output)
        }
        // Every message on its own; bodies sent with a per-subscriber prefix (the fan-out's frames)
        // are compressed once per loop and shared, behind the prefix as a stored block.
        let state = loopState ?? DeflateLoopState.forCurrentThread
        loopState = state
        let windowBits = deflate.serverMaxWindowBits
        if let prefix = frame.extensionData, let block = storedBlock(prefix, allocator: allocator),
           let body = state.sharedCompressed(frame.data, windowBits: windowBits) {
            return WebSocketFrame(fin: true, rsv1: true, opcode: frame.opcode, data: body, extensionData: block)
        }
        guard let deflater = state.deflater(windowBits: windowBits) else { return nil }
        let parts = [frame.extensionData, frame.data].compactMap { $0 }
        return WebSocketFrame(fin: true, rsv1: true, opcode: frame.opcode, data: deflater.compressIndependently(parts, allocator: allocator))
    }

    private func storedBlock(_ prefix: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer? {
        for index in storedBlocks.indices where DeflateLoopState.same(storedBlocks[index].prefix, prefix) {
            return storedBlocks[index].block
        }
        guard let block = DeflateFraming.storedBlock(prefix, allocator: allocator) else { return nil }
        if storedBlocks.count == 4 { storedBlocks.removeFirst() }
        storedBlocks.append((prefix, block))
        return block
    }
}
