import Logging
import NIOCore

/// The PROXY protocol version 2 header (haproxy.org/download/2.9/doc/proxy-protocol.txt §2.2): a
/// load balancer's binary preamble naming the client it accepted. Only the parts Syncline needs:
/// the 12-byte signature, version/command, family, the length, and the source address; TLVs are
/// skipped. I/O-free, so the parser is unit-tested byte by byte.
public enum ProxyProtocolV2 {
    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// Fixed part: signature, version/command, family/transport, 2-byte length.
    static let fixedLength = 16
    /// Longest header accepted (the format allows 65,551 bytes; real ones carry addresses and a few
    /// TLVs). Longer is refused rather than buffered.
    static let maximumLength = 2_048

    struct Header: Equatable, Sendable {
        /// `LOCAL` (the proxy's own health check: use the socket's peer) or `PROXY`.
        var isLocal: Bool
        /// The client's address; nil for `LOCAL`, `AF_UNSPEC` and Unix-socket sources.
        var source: IPAddress?
        var sourcePort: UInt16?
        /// Bytes the header took, to drop before the application's data.
        var length: Int
    }

    enum Parse: Equatable, Sendable {
        /// What has arrived is a prefix of a header (or of the signature): wait for more.
        case needMoreBytes
        /// The connection does not start with the signature: it is plain HTTP or TLS.
        case absent
        case header(Header)
        case invalid(String)
    }

    static func parse(_ bytes: some Collection<UInt8>) -> Parse {
        // A mismatch in the first bytes decides at once: "GET", or a TLS record (0x16).
        for (byte, expected) in zip(bytes, signature) where byte != expected { return .absent }
        guard bytes.count >= fixedLength else { return .needMoreBytes }
        let b = Array(bytes.prefix(fixedLength))
        guard b[12] >> 4 == 2 else { return .invalid("PROXY protocol version \(b[12] >> 4) (only 2 is read)") }
        let command = b[12] & 0x0F
        guard command <= 1 else { return .invalid("unknown PROXY command \(command)") }
        let declared = Int(b[14]) << 8 | Int(b[15])
        let total = fixedLength + declared
        guard total <= maximumLength else { return .invalid("PROXY header of \(total) bytes (at most \(maximumLength))") }
        guard bytes.count >= total else { return .needMoreBytes }
        if command == 0 { return .header(Header(isLocal: true, source: nil, sourcePort: nil, length: total)) }
        let body = Array(bytes.dropFirst(fixedLength).prefix(declared))
        let family = b[13] >> 4
        switch family {
        case 0x1:  // AF_INET: source, destination (4 each), source port, destination port
            guard body.count >= 12 else { return .invalid("PROXY IPv4 addresses need 12 bytes, got \(body.count)") }
            return .header(Header(isLocal: false, source: IPAddress(bytes: body[0..<4]),
                                  sourcePort: UInt16(body[8]) << 8 | UInt16(body[9]), length: total))
        case 0x2:  // AF_INET6: 16 + 16 + 2 + 2
            guard body.count >= 36 else { return .invalid("PROXY IPv6 addresses need 36 bytes, got \(body.count)") }
            return .header(Header(isLocal: false, source: IPAddress(bytes: body[0..<16]),
                                  sourcePort: UInt16(body[32]) << 8 | UInt16(body[33]), length: total))
        case 0x0, 0x3:  // AF_UNSPEC, AF_UNIX: no IP address to count by; the proxy's address stands
            return .header(Header(isLocal: false, source: nil, sourcePort: nil, length: total))
        default:
            return .invalid("unknown PROXY address family \(family)")
        }
    }

    /// A header for `source` (tests, and anyone checking a proxy setup by hand).
    static func header(source: IPAddress, sourcePort: UInt16 = 40_000, destination: IPAddress, destinationPort: UInt16 = 8080) -> [UInt8] {
        func bytes(_ a: IPAddress) -> [UInt8] {
            switch a {
            case .v4(let v): return (0..<4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * UInt32($0))) }
            case .v6(let h, let l): return (0..<16).map { UInt8(truncatingIfNeeded: ($0 < 8 ? h : l) >> (56 - 8 * UInt64($0 % 8))) }
            }
        }
        let (family, addresses): (UInt8, [UInt8]) = switch (source, destination) {
        case (.v4, .v4): (0x11, bytes(source) + bytes(destination))
        default: (0x21, bytes(IPAddress.mappedV6(source)) + bytes(IPAddress.mappedV6(destination)))
        }
        let body = addresses + [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xFF), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xFF)]
        return signature + [0x21, family, UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
    }
}

extension IPAddress {
    /// IPv4 as `::ffff:a.b.c.d`, for a header whose other address is IPv6.
    static func mappedV6(_ a: IPAddress) -> IPAddress {
        if case .v4(let v) = a { return .v6(0, 0xFFFF_0000_0000 | UInt64(v)) }
        return a
    }
}

/// First in the pipeline of a connection from a trusted proxy: reads a PROXY v2 header if the
/// connection starts with one, records its source address for the upgrade, drops it, and removes
/// itself; a connection that starts otherwise passes through untouched. An invalid or oversized
/// header closes the connection (a trusted proxy that sends one is misconfigured).
final class ProxyProtocolHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let decision: NIOLoopBound<UpgradeDecision>
    private let logger: Logger
    private var buffered: ByteBuffer?

    init(decision: NIOLoopBound<UpgradeDecision>, logger: Logger) {
        self.decision = decision
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var buffered {
            buffered.writeBuffer(&incoming)
            incoming = buffered
        }
        switch ProxyProtocolV2.parse(incoming.readableBytesView) {
        case .needMoreBytes:
            buffered = incoming
        case .absent:
            finish(context, forwarding: incoming)
        case .header(let header):
            if !header.isLocal, let source = header.source { decision.value.proxiedAddress = source }
            incoming.moveReaderIndex(forwardBy: header.length)
            finish(context, forwarding: incoming)
        case .invalid(let reason):
            buffered = nil
            SynclineLimitMetrics.refused(.proxyHeader)
            logger.warning("closing a connection from a trusted proxy: invalid PROXY header",
                           metadata: ["peer": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")", "reason": "\(reason)"])
            context.close(promise: nil)
        }
    }

    private func finish(_ context: ChannelHandlerContext, forwarding rest: ByteBuffer) {
        buffered = nil
        if rest.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(rest)) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
    }
}
