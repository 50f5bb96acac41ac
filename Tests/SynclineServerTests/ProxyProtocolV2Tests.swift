import NIOCore
import NIOEmbedded
@testable import SynclineServer
import Testing

/// The PROXY protocol v2 parser, byte by byte, and its handler on an embedded channel.
@Suite struct ProxyProtocolV2Tests {
    let client = IPAddress("203.0.113.7")!
    let server = IPAddress("10.0.0.1")!

    @Test func ipv4Header() {
        let header = ProxyProtocolV2.header(source: client, sourcePort: 51_000, destination: server)
        #expect(header.count == 28)
        #expect(ProxyProtocolV2.parse(header + Array("GET /".utf8))
            == .header(.init(isLocal: false, source: client, sourcePort: 51_000, length: 28)))
    }

    @Test func ipv6Header() {
        let v6 = IPAddress("2001:db8::42")!
        let header = ProxyProtocolV2.header(source: v6, destination: IPAddress("2001:db8::1")!)
        #expect(header.count == 52)
        guard case .header(let parsed) = ProxyProtocolV2.parse(header) else { Issue.record("not parsed"); return }
        #expect(parsed.source == v6)
        #expect(parsed.length == 52)
    }

    @Test func everyPrefixWaitsForMore() {
        let header = ProxyProtocolV2.header(source: client, destination: server)
        for n in 0..<header.count {
            #expect(ProxyProtocolV2.parse(header.prefix(n)) == .needMoreBytes, "prefix \(n)")
        }
    }

    @Test func otherProtocolsAreAbsentAtTheFirstByte() {
        #expect(ProxyProtocolV2.parse(Array("G".utf8)) == .absent)
        #expect(ProxyProtocolV2.parse(Array("GET / HTTP/1.1\r\n".utf8)) == .absent)
        #expect(ProxyProtocolV2.parse([0x16, 0x03, 0x01]) == .absent)  // a TLS record
        // PROXY v1 (text) is not read: absent, so it reaches HTTP and fails there.
        #expect(ProxyProtocolV2.parse(Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8)) == .absent)
        // The signature with one byte changed.
        var header = ProxyProtocolV2.header(source: client, destination: server)
        header[7] = 0x00
        #expect(ProxyProtocolV2.parse(header) == .absent)
    }

    @Test func localCommandKeepsThePeer() {
        let local = ProxyProtocolV2.signature + [0x20, 0x00, 0x00, 0x00]
        #expect(ProxyProtocolV2.parse(local) == .header(.init(isLocal: true, source: nil, sourcePort: nil, length: 16)))
    }

    @Test func tlvsAreSkipped() {
        var header = ProxyProtocolV2.header(source: client, destination: server)
        let tlv: [UInt8] = [0x04, 0x00, 0x03, 0x61, 0x62, 0x63]  // PP2_TYPE_NOOP, 3 bytes
        header[15] += UInt8(tlv.count)
        header += tlv
        #expect(ProxyProtocolV2.parse(header + [0x47]) == .header(.init(isLocal: false, source: client, sourcePort: 40_000, length: 34)))
    }

    @Test func invalidHeaders() {
        let base = ProxyProtocolV2.header(source: client, destination: server)
        var version1 = base
        version1[12] = 0x11
        #expect(isInvalid(version1))
        var command = base
        command[12] = 0x2F
        #expect(isInvalid(command))
        var family = base
        family[13] = 0x51
        #expect(isInvalid(family))
        var short = base
        short[15] = 4  // AF_INET with 4 bytes of addresses
        #expect(isInvalid(Array(short.prefix(20))))
        var huge = base
        huge[14] = 0xFF  // 65,280+ bytes declared: refused before any is buffered
        #expect(isInvalid(huge))
    }

    private func isInvalid(_ bytes: [UInt8]) -> Bool {
        if case .invalid = ProxyProtocolV2.parse(bytes) { return true }
        return false
    }

    @Test func unixAndUnspecifiedHaveNoAddress() {
        let unspec = ProxyProtocolV2.signature + [0x21, 0x00, 0x00, 0x00]
        #expect(ProxyProtocolV2.parse(unspec) == .header(.init(isLocal: false, source: nil, sourcePort: nil, length: 16)))
        let unix = ProxyProtocolV2.signature + [0x21, 0x31, 0x00, 216] + [UInt8](repeating: 0, count: 216)
        #expect(ProxyProtocolV2.parse(unix) == .header(.init(isLocal: false, source: nil, sourcePort: nil, length: 232)))
    }

    /// The handler records the source, strips the header (split over two reads) and passes the
    /// rest on; without a header it passes everything.
    @Test func handlerStripsTheHeader() throws {
        let channel = EmbeddedChannel()
        let decision = NIOLoopBound(UpgradeDecision(), eventLoop: channel.eventLoop)
        try channel.pipeline.syncOperations.addHandler(ProxyProtocolHandler(decision: decision, logger: .init(label: "test")))
        let bytes = ProxyProtocolV2.header(source: client, destination: server) + Array("GET / HTTP/1.1\r\n".utf8)
        try channel.writeInbound(ByteBuffer(bytes: bytes.prefix(10)))
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        try channel.writeInbound(ByteBuffer(bytes: bytes.dropFirst(10)))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        #expect(decision.value.proxiedAddress == client)
        try channel.writeInbound(ByteBuffer(bytes: ProxyProtocolV2.header(source: server, destination: server)))
        // Removed after the header: a second header is just data.
        #expect(try channel.readInbound(as: ByteBuffer.self)?.readableBytes == 28)
        #expect(decision.value.proxiedAddress == client)

        let plain = EmbeddedChannel()
        let plainDecision = NIOLoopBound(UpgradeDecision(), eventLoop: plain.eventLoop)
        try plain.pipeline.syncOperations.addHandler(ProxyProtocolHandler(decision: plainDecision, logger: .init(label: "test")))
        try plain.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        #expect(try plain.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        #expect(plainDecision.value.proxiedAddress == nil)
    }

    @Test func handlerClosesOnAnInvalidHeader() throws {
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let decision = NIOLoopBound(UpgradeDecision(), eventLoop: channel.eventLoop)
        try channel.pipeline.syncOperations.addHandler(ProxyProtocolHandler(decision: decision, logger: .init(label: "test")))
        var header = ProxyProtocolV2.header(source: client, destination: server)
        header[12] = 0x11
        try channel.writeInbound(ByteBuffer(bytes: header))
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        #expect(!channel.isActive)
    }
}
