import NIOCore
@testable import SynclineWebSocket

/// The first byte picks a mode (and parameters); the rest is that mode's data.
/// - raw: any bytes into the frame decoder, once whole and once cut into reads at fuzzer-chosen
///   points: both runs must deliver the same messages and write the same bytes, and everything
///   must hold the layer's rules (limits, UTF-8, well-formed server frames, nothing after close).
/// - inflate: a payload deflated as a client would, split into fragments (maybe with a ping in
///   between) and masked: the application gets exactly the payload, or the connection closes with
///   1009 when it is over the limit (1007 for text that is not UTF-8); `ZlibInflater` alone gives
///   the payload back too and never produces more than limit + 1 bytes.
/// - deflate: messages sent by the server with permessage-deflate (either mode, any parameters)
///   inflate back to what was sent, in order.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWebSocket(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = Input(UnsafeBufferPointer(start: data, count: size))
    guard let mode = input.next() else { return 0 }
    switch mode % 4 {
    case 0, 1: rawFrames(mode, &input)
    case 2: inflateRoundTrip(mode, &input)
    default: deflateRoundTrip(mode, &input)
    }
    return 0
}

let limits = [125, 1000, 4096, 70_000]

func rawFrames(_ mode: UInt8, _ input: inout Input) {
    let limit = limits[Int(mode >> 2 & 3)]
    let deflate = mode & 0x10 != 0 ? PerMessageDeflateParameters() : nil
    let sizes = input.take(Int(input.byte() % 8))
    let bytes = input.rest()

    let whole = Connection(limit: limit, deflate: deflate)
    whole.receive(bytes[...])
    let split = Connection(limit: limit, deflate: deflate)
    for range in pieces(bytes.count, sizes: sizes) { split.receive(bytes[range]) }
    whole.finish()
    split.finish()

    expect(whole.messages == split.messages, "cutting the reads changed the messages")
    expect(whole.output == split.output, "cutting the reads changed what the server wrote")
    let frames = whole.frames
    for frame in frames { expect(frame.isControl, "the layer alone sent a data frame") }
}

func inflateRoundTrip(_ mode: UInt8, _ input: inout Input) {
    let limit = limits[Int(mode >> 2 & 3)]
    let parameters = input.byte()
    let windowBits = 8 + Int(parameters & 7)
    let memoryLevel = 1 + Int(parameters >> 3 & 7)
    let level = Int(input.byte() % 10)
    let repeats = 1 + Int(input.byte() % 64)
    let fragmentSizes = input.take(Int(input.byte() % 6))
    let flags = input.byte()
    let pingBetween = flags & 1 != 0
    var mask: [UInt8]? = nil
    if flags & 2 != 0 {
        var key = input.take(4)
        while key.count < 4 { key.append(0) }
        mask = key
    }
    let chunk = input.rest()
    var payload: [UInt8] = []
    payload.reserveCapacity(chunk.count * repeats)
    for _ in 0..<repeats { payload += chunk }
    let isUTF8 = String(validating: payload, as: UTF8.self) != nil
    let text = flags & 4 != 0

    guard let deflater = ZlibDeflater(windowBits: windowBits, memoryLevel: memoryLevel, level: level) else { fail("no deflater") }
    var compressed = ByteBuffer()
    deflater.compress([ByteBuffer(bytes: payload)], into: &compressed)
    let deflated = Array(compressed.readableBytesView)

    // The inflater alone: the payload back, or tooBig exactly when it is over the limit.
    guard let inflater = ZlibInflater() else { fail("no inflater") }
    var inflated = ByteBuffer()
    var outcome = inflater.inflate(ByteBuffer(bytes: deflated), into: &inflated, limit: limit)
    if outcome == .ok { outcome = inflater.inflate(ByteBuffer(bytes: [0, 0, 0xFF, 0xFF]), into: &inflated, limit: limit) }
    expect(inflated.readableBytes <= limit + 1, "inflater produced \(inflated.readableBytes) bytes for limit \(limit)")
    if payload.count <= limit {
        expect(outcome == .ok && Array(inflated.readableBytesView) == payload, "inflate(deflate(x)) != x (\(outcome))")
    } else {
        expect(outcome == .tooBig, "a \(payload.count)-byte payload over limit \(limit) inflated with \(outcome)")
    }

    // Through the connection, fragmented.
    let ranges = pieces(deflated.count, sizes: fragmentSizes.map { $0 &* 16 })
    var wire: [UInt8] = []
    for (i, range) in ranges.enumerated() {
        let first = i == 0
        wire += clientFrame(fin: i == ranges.count - 1, rsv1: first, opcode: first ? (text ? 1 : 2) : 0,
                            payload: Array(deflated[range]), mask: mask)
        if pingBetween && i == 0 { wire += clientFrame(opcode: 0x9, payload: [1, 2, 3], mask: mask) }
    }
    let connection = Connection(limit: limit, deflate: PerMessageDeflateParameters())
    connection.receive(wire[...])
    connection.finish()
    let frames = connection.frames
    let closes = frames.compactMap(\.closeCode)
    if payload.count > limit || (text && !isUTF8) {
        var allowed: Set<UInt16> = []
        if payload.count > limit { allowed.insert(1009) }
        if text && !isUTF8 { allowed.insert(1007) }
        expect(connection.messages.isEmpty, "a message over the limit or not UTF-8 was delivered")
        expect(closes.count == 1 && allowed.contains(closes[0]), "closed with \(closes), expected one of \(allowed)")
    } else {
        expect(connection.messages == [Connection.Message(text: text, payload: payload)], "the message did not arrive intact (closes \(closes))")
        expect(closes.isEmpty, "closed with \(closes)")
    }
    let pongs = frames.filter { $0.opcode == 0xA }
    expect(pongs.allSatisfy { $0.payload == [1, 2, 3] }, "pongs \(pongs)")
    // The ping follows the first fragment: answered unless the connection failed before it.
    expect(pongs.count <= (pingBetween ? 1 : 0), "\(pongs.count) pongs")
    if pingBetween && closes.isEmpty { expect(pongs.count == 1, "the ping between fragments was not answered") }
}

func deflateRoundTrip(_ mode: UInt8, _ input: inout Input) {
    let parameters = input.byte()
    var compression = WebSocketCompression(mode: parameters & 1 == 0 ? .shared : .contextTakeover)
    compression.windowBits = 9 + Int(parameters >> 1 & 7) % 7
    compression.memoryLevel = 1 + Int(parameters >> 4 & 7)
    compression.minimumBytes = Int(input.byte() % 80)
    let negotiation = input.byte()
    var deflate = PerMessageDeflateParameters(serverNoContextTakeover: negotiation & 1 != 0, serverMaxWindowBits: 8 + Int(negotiation >> 1 & 7))
    if compression.mode == .shared { deflate.serverNoContextTakeover = true }
    let connection = Connection(limit: 1 << 20, deflate: deflate, compression: compression)

    // Messages: a length byte (× 8, so that some pass the stored block's and inline limits), a kind
    // byte, then the bytes; a prefix (the fan-out's per-subscriber part) for some.
    var sent: [[UInt8]] = []
    while input.remaining > 0 {
        let length = Int(input.byte()) * 8
        let kind = input.byte()
        let chunk = input.take(max(1, Int(kind >> 2)))
        var body: [UInt8] = []
        while body.count < length && !chunk.isEmpty { body += chunk }
        body = Array(body.prefix(length))
        switch kind & 3 {
        case 0:
            connection.handler.sendMessage(ByteBuffer(bytes: body), opcode: .binary)
            sent.append(body)
        case 1:
            let prefix = Array(chunk.prefix(Int(kind >> 2)))
            connection.handler.sendText(prefix: ByteBuffer(bytes: prefix), body: ByteBuffer(bytes: body))
            sent.append(prefix + body)
        case 2:
            // The same body twice: the shared mode's per-loop cache answers the second.
            let shared = ByteBuffer(bytes: body)
            connection.handler.sendText(prefix: ByteBuffer(bytes: [0x7B]), body: shared)
            connection.handler.sendText(prefix: ByteBuffer(bytes: [0x5B, 0x7B]), body: shared)
            sent += [[0x7B] + body, [0x5B, 0x7B] + body]
        default:
            connection.handler.flush()
        }
    }
    connection.handler.flush()
    connection.collect()
    let frames = connection.frames
    connection.finish()
    expect(frames.count == sent.count, "\(sent.count) messages sent, \(frames.count) frames written")
    let contextTakeover = compression.mode == .contextTakeover && !deflate.serverNoContextTakeover
    var inflater: ZlibInflater?
    for (frame, expected) in zip(frames, sent) {
        expect(frame.fin && (frame.opcode == 1 || frame.opcode == 2), "unexpected frame \(frame.opcode)")
        guard frame.rsv1 else {
            expect(frame.payload == expected, "an uncompressed frame differs from what was sent")
            continue
        }
        expect(expected.count >= compression.minimumBytes, "a \(expected.count)-byte message under minimumBytes was compressed")
        if inflater == nil || !contextTakeover { inflater = ZlibInflater() }
        var out = ByteBuffer()
        var outcome = inflater!.inflate(ByteBuffer(bytes: frame.payload), into: &out, limit: 1 << 24)
        if outcome == .ok { outcome = inflater!.inflate(ByteBuffer(bytes: [0, 0, 0xFF, 0xFF]), into: &out, limit: 1 << 24) }
        expect(outcome == .ok && Array(out.readableBytesView) == expected, "a compressed frame does not inflate to what was sent (\(outcome))")
    }
}
