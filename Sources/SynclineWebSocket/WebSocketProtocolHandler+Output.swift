import NIOCore
import NIOWebSocket

/// The way out: the application's messages become frame bytes here, in the order they are sent,
/// and reach the channel in as few writes as possible.
///
/// A frame whose body is small (≤ `inlineBodyBytes`) is copied, header and all, into `pending`,
/// one buffer per connection that goes to the channel at the next `flush` (one write and one
/// flush per connection per batch, whatever the number of frames). A bigger body is written by
/// reference, so a feed body shared by many subscribers is not copied for each: pending bytes
/// first, then the header with the prefix, then the body. `pending` is handed over at every flush,
/// so an idle connection holds no buffer.
extension WebSocketProtocolHandler {
    /// Bodies up to this size are copied into the connection's pending buffer; bigger ones are
    /// written by reference. (Copying 4 KiB costs less than the channel write it saves.)
    static let inlineBodyBytes = 4096
    /// Pending bytes past this go to the channel at once (without a flush), so that the channel's
    /// outbound limit sees them.
    static let pendingBytesLimit = 64 << 10
    static let allocator = ByteBufferAllocator()

    /// Sends one text message whose payload is `prefix` followed by `body`: the fan-out's frame
    /// (a subscriber's `{"type":"changes","sub":"…",` and the feed's shared body). With `shared`
    /// compression the body is compressed once per event loop and the prefix travels in a stored
    /// block in front of it; with `contextTakeover` this connection's compressor takes both.
    /// `promise` (optional: deliveries pass none) completes when the bytes were written.
    /// Dropped once the close handshake started (the promise fails).
    public func sendText(prefix: ByteBuffer, body: ByteBuffer, promise: EventLoopPromise<Void>? = nil) {
        guard !closeSent, context != nil else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        if let deflate, prefix.readableBytes + body.readableBytes >= options.compression.minimumBytes {
            sendCompressed(WebSocketOpcode.text, prefix: prefix, body: body, deflate, promise: promise)
        } else if promise == nil, body.readableBytes <= Self.inlineBodyBytes {
            appendInlineText(prefix: prefix, body: body)
        } else {
            appendFrame(opcode: WebSocketOpcode.text, rsv1: false, prefix: prefix, body: body, promise: promise)
        }
    }

    /// The fan-out's common case: an uncompressed text frame with a small body, copied into
    /// `pending` with one capacity check and two `memcpy`s.
    private func appendInlineText(prefix: ByteBuffer, body: ByteBuffer) {
        let prefixBytes = prefix.readableBytes
        let bodyBytes = body.readableBytes
        let length = prefixBytes + bodyBytes
        var buffer = pending.take() ?? Self.allocator.buffer(capacity: max(512, 10 + length))
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 10 + length) { out in
            var i = Self.storeHeader(out, first: 0x81, length: length)
            prefix.withUnsafeReadableBytes { source in
                if let base = source.baseAddress { (out.baseAddress! + i).copyMemory(from: base, byteCount: prefixBytes) }
            }
            i += prefixBytes
            body.withUnsafeReadableBytes { source in
                if let base = source.baseAddress { (out.baseAddress! + i).copyMemory(from: base, byteCount: bodyBytes) }
            }
            return i + bodyBytes
        }
        if buffer.readableBytes >= Self.pendingBytesLimit, let context {
            context.write(wrapOutboundOut(buffer), promise: nil)
            unflushed = true
        } else {
            pending = buffer
        }
    }

    /// Stores a frame header (FIN, opcode and RSV1 in `first`) at the start of `out`; returns its size.
    @inline(__always)
    static func storeHeader(_ out: UnsafeMutableRawBufferPointer, first: UInt8, length: Int) -> Int {
        out[0] = first
        if length < 126 {
            out[1] = UInt8(length)
            return 2
        } else if length <= 0xFFFF {
            out[1] = 126
            out.storeBytes(of: UInt16(length).bigEndian, toByteOffset: 2, as: UInt16.self)
            return 4
        } else {
            out[1] = 127
            out.storeBytes(of: UInt64(length).bigEndian, toByteOffset: 2, as: UInt64.self)
            return 10
        }
    }

    /// Sends one whole message (`text` or `binary`), compressed when negotiated.
    public func sendMessage(_ data: ByteBuffer, opcode: WebSocketOpcode = .text, promise: EventLoopPromise<Void>? = nil) {
        guard !closeSent, context != nil else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        if let deflate, data.readableBytes >= options.compression.minimumBytes {
            sendCompressed(opcode, prefix: nil, body: data, deflate, promise: promise)
        } else {
            appendFrame(opcode: opcode, rsv1: false, prefix: nil, body: data, promise: promise)
        }
    }

    /// Sends a text message.
    public func sendText(_ text: String, promise: EventLoopPromise<Void>? = nil) {
        sendMessage(Self.allocator.buffer(string: text), promise: promise)
    }

    /// A ping (the server's heartbeat); its pong is passed on to the application.
    public func sendPing() {
        sendControl(.ping, payload: ByteBuffer())
    }

    /// A control frame (payload ≤ 125 bytes). Not after the close frame.
    func sendControl(_ opcode: WebSocketOpcode, payload: ByteBuffer) {
        guard !closeSent, context != nil else { return }
        appendFrame(opcode: opcode, rsv1: false, prefix: nil, body: payload, promise: nil)
    }

    /// Hands the pending frames to the channel and flushes it, when anything was sent since the
    /// last flush. Cheap when there is nothing to do.
    public func flush() {
        guard let context else { return }
        if let buffer = pending {
            pending = nil
            context.write(wrapOutboundOut(buffer), promise: nil)
            unflushed = true
        }
        if unflushed {
            unflushed = false
            context.flush()
        }
    }

    /// Whether something was sent and not yet flushed.
    var needsFlush: Bool { pending != nil || unflushed }

    // MARK: Through the pipeline

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        switch frame.opcode {
        case .connectionClose:
            guard !closeSent else {
                promise?.fail(ChannelError.outputClosed)
                return
            }
            sendClose(frame.data, thenCloseTCP: false)
            promise?.succeed()
        case .text where frame.fin && !frame.rsv1, .binary where frame.fin && !frame.rsv1:
            if let prefix = frame.extensionData, frame.opcode == .text {
                sendText(prefix: prefix, body: frame.data, promise: promise)
            } else {
                sendMessage(frame.data, opcode: frame.opcode, promise: promise)
            }
        default:
            // Fragments and control frames go out as they are.
            guard !closeSent else {
                promise?.fail(ChannelError.outputClosed)
                return
            }
            appendFrame(opcode: frame.opcode, rsv1: frame.rsv1, fin: frame.fin, prefix: frame.extensionData, body: frame.data, promise: promise)
        }
    }

    public func flush(context: ChannelHandlerContext) {
        flush()
    }

    // MARK: Encoding

    private func sendCompressed(_ opcode: WebSocketOpcode, prefix: ByteBuffer?, body: ByteBuffer, _ deflate: PerMessageDeflateParameters,
                                promise: EventLoopPromise<Void>?) {
        if options.compression.mode == .contextTakeover && !deflate.serverNoContextTakeover {
            if deflater == nil {
                deflater = ZlibDeflater(windowBits: min(options.compression.windowBits, deflate.serverMaxWindowBits),
                                        memoryLevel: options.compression.memoryLevel)
            }
            if let deflater {
                var output = Self.allocator.buffer(capacity: ((prefix?.readableBytes ?? 0) + body.readableBytes) / 2 + 64)
                if let prefix {
                    deflater.compress([prefix, body], into: &output)
                } else {
                    deflater.compress([body], into: &output)
                }
                return appendFrame(opcode: opcode, rsv1: true, prefix: nil, body: output, promise: promise)
            }
        } else {
            // Every message on its own; a body sent with a per-subscriber prefix (the fan-out's
            // frames) is compressed once per loop and shared, behind the prefix as a stored block.
            let state = loopState ?? DeflateLoopState.forCurrentThread
            loopState = state
            let windowBits = deflate.serverMaxWindowBits
            if let prefix, prefix.readableBytes <= 0xFFFF, let compressed = state.sharedCompressed(body, windowBits: windowBits) {
                return appendFrame(opcode: opcode, rsv1: true, storedBlock: true, prefix: prefix, body: compressed, promise: promise)
            }
            if let deflater = state.deflater(windowBits: windowBits) {
                let output = deflater.compressIndependently(prefix.map { [$0, body] } ?? [body], allocator: Self.allocator)
                return appendFrame(opcode: opcode, rsv1: true, prefix: nil, body: output, promise: promise)
            }
        }
        // No compressor (zlib could not allocate): uncompressed, which RFC 7692 allows per message.
        appendFrame(opcode: opcode, rsv1: false, prefix: prefix, body: body, promise: promise)
    }

    /// Encodes one frame, payload = [stored-block header] + `prefix` + `body`: into `pending` when
    /// the body is small, else pending bytes, then header and prefix, then the body by reference.
    /// With a promise, everything up to this frame is handed to the channel now (the promise
    /// completes when it is written).
    func appendFrame(opcode: WebSocketOpcode, rsv1: Bool, fin: Bool = true, storedBlock: Bool = false,
                     prefix: ByteBuffer?, body: ByteBuffer, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let prefixBytes = prefix?.readableBytes ?? 0
        let blockBytes = storedBlock ? 5 : 0
        let bodyBytes = body.readableBytes
        let length = blockBytes + prefixBytes + bodyBytes
        let inline = bodyBytes <= Self.inlineBodyBytes
        let headBytes = 10 + blockBytes + prefixBytes
        var buffer: ByteBuffer
        if let existing = pending {
            pending = nil
            buffer = existing
            buffer.reserveCapacity(minimumWritableBytes: inline ? headBytes + bodyBytes : headBytes)
        } else {
            buffer = Self.allocator.buffer(capacity: inline ? max(512, headBytes + bodyBytes) : headBytes)
        }
        Self.writeHeader(into: &buffer, opcode: opcode, rsv1: rsv1, fin: fin, length: length)
        if storedBlock {
            // A non-final stored deflate block (RFC 1951 §3.2.4) holding the prefix verbatim: in
            // front of an independently compressed body it makes one valid message.
            buffer.writeInteger(UInt8(0))
            buffer.writeInteger(UInt16(prefixBytes), endianness: .little)
            buffer.writeInteger(~UInt16(prefixBytes), endianness: .little)
        }
        if let prefix { buffer.writeImmutableBuffer(prefix) }
        if inline {
            buffer.writeImmutableBuffer(body)
            if promise != nil || buffer.readableBytes >= Self.pendingBytesLimit {
                context.write(wrapOutboundOut(buffer), promise: promise)
                unflushed = true
            } else {
                pending = buffer
            }
        } else {
            context.write(wrapOutboundOut(buffer), promise: nil)
            context.write(wrapOutboundOut(body), promise: promise)
            unflushed = true
        }
    }

    /// RFC 6455 §5.2, server to client (never masked).
    @inline(__always)
    static func writeHeader(into buffer: inout ByteBuffer, opcode: WebSocketOpcode, rsv1: Bool, fin: Bool, length: Int) {
        let first = UInt8(fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | UInt8(webSocketOpcode: opcode)
        if length < 126 {
            buffer.writeInteger(UInt16(first) << 8 | UInt16(length))
        } else if length <= 0xFFFF {
            buffer.writeInteger(UInt32(first) << 24 | 126 << 16 | UInt32(length))
        } else {
            buffer.writeInteger(UInt16(first) << 8 | 127)
            buffer.writeInteger(UInt64(length))
        }
    }
}
