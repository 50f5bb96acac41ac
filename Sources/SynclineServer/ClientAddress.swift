import Foundation
import NIOCore
import NIOHTTP1

/// An IPv4 or IPv6 address as a value: what the per-address limits count by, and what
/// `--trusted-proxies` networks contain. IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(UInt32)
    /// High and low 64 bits.
    case v6(UInt64, UInt64)

    /// Parses `a.b.c.d` or an RFC 4291 text form (`::1`, `2001:db8::7`, `::ffff:1.2.3.4`); no zone,
    /// no brackets, no port.
    public init?(_ text: some StringProtocol) {
        if let v4 = Self.parseV4(Substring(text)) {
            self = .v4(v4)
        } else if let (high, low) = Self.parseV6(Substring(text)) {
            self = Self.unmapped(high, low)
        } else {
            return nil
        }
    }

    /// From raw network-order bytes (4 or 16 of them), as the PROXY protocol carries them.
    init?(bytes: some Collection<UInt8>) {
        switch bytes.count {
        case 4: self = .v4(bytes.reduce(0) { $0 << 8 | UInt32($1) })
        case 16:
            let high = bytes.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let low = bytes.dropFirst(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            self = Self.unmapped(high, low)
        default: return nil
        }
    }

    /// A socket's IP address; nil for a Unix socket.
    init?(_ address: SocketAddress?) {
        switch address {
        case .v4(let a)?: self = .v4(UInt32(bigEndian: a.address.sin_addr.s_addr))
        case .v6(let a)?:
            let bytes = withUnsafeBytes(of: a.address.sin6_addr) { Array($0) }
            self.init(bytes: bytes)
        default: return nil
        }
    }

    private static func unmapped(_ high: UInt64, _ low: UInt64) -> IPAddress {
        high == 0 && low >> 32 == 0xFFFF ? .v4(UInt32(truncatingIfNeeded: low)) : .v6(high, low)
    }

    /// What the per-address tables count by: an IPv4 address, or an IPv6 /64 (one host is
    /// usually given a whole /64, so counting single IPv6 addresses would count nothing).
    var limitKey: IPAddress {
        switch self {
        case .v4: self
        case .v6(let high, _): .v6(high, 0)
        }
    }

    public var description: String {
        switch self {
        case .v4(let a): return "\(a >> 24).\(a >> 16 & 0xFF).\(a >> 8 & 0xFF).\(a & 0xFF)"
        case .v6(let high, let low):
            let groups = (0..<8).map { i in String(UInt16(truncatingIfNeeded: (i < 4 ? high : low) >> (48 - 16 * UInt64(i % 4))), radix: 16) }
            return groups.joined(separator: ":")
        }
    }

    private static func parseV4(_ text: Substring) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let octet = UInt32(part), octet <= 255 else { return nil }
            value = value << 8 | octet
        }
        return value
    }

    private static func parseV6(_ text: Substring) -> (UInt64, UInt64)? {
        guard text.count >= 2, text.count <= 45, text.contains(":") else { return nil }
        // An embedded IPv4 tail (`::ffff:1.2.3.4`) is two groups.
        var body = text
        var tail: [UInt16] = []
        if let lastColon = text.lastIndex(of: ":"), text[text.index(after: lastColon)...].contains(".") {
            guard let v4 = parseV4(text[text.index(after: lastColon)...]) else { return nil }
            tail = [UInt16(v4 >> 16), UInt16(v4 & 0xFFFF)]
            body = text[...lastColon]
            if body.hasSuffix(":") && !body.hasSuffix("::") { body = body.dropLast() }
        }
        func groups(_ s: Substring) -> [UInt16]? {
            if s.isEmpty { return [] }
            var out: [UInt16] = []
            for g in s.split(separator: ":", omittingEmptySubsequences: false) {
                guard (1...4).contains(g.count), let v = UInt16(g, radix: 16) else { return nil }
                out.append(v)
            }
            return out
        }
        var all: [UInt16]
        let halves = body.components(separatedBy: "::")
        switch halves.count {
        case 1:
            guard let g = groups(body) else { return nil }
            all = g + tail
            guard all.count == 8 else { return nil }
        case 2:
            guard let left = groups(Substring(halves[0])), let right = groups(Substring(halves[1])) else { return nil }
            let given = left.count + right.count + tail.count
            guard given < 8 else { return nil }
            all = left + Array(repeating: 0, count: 8 - given) + right + tail
        default:
            return nil
        }
        let high = all[0..<4].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        let low = all[4..<8].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        return (high, low)
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a single host):
/// one entry of `--trusted-proxies`.
public struct IPNetwork: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(parts[0].trimmingCharacters(in: .whitespaces)) else { return nil }
        let maximum = if case .v4 = address { 32 } else { 128 }
        var length = maximum
        if parts.count == 2 {
            guard let n = Int(parts[1]), (0...maximum).contains(n) else { return nil }
            length = n
        }
        self.address = address
        self.prefixLength = length
    }

    public func contains(_ candidate: IPAddress) -> Bool {
        switch (address, candidate) {
        case (.v4(let network), .v4(let a)):
            guard prefixLength > 0 else { return true }
            let mask = UInt32.max << (32 - prefixLength)
            return network & mask == a & mask
        case (.v6(let nh, let nl), .v6(let h, let l)):
            let highBits = min(prefixLength, 64), lowBits = max(prefixLength - 64, 0)
            let highMask = highBits == 0 ? 0 : UInt64.max << (64 - highBits)
            let lowMask = lowBits == 0 ? 0 : UInt64.max << (64 - lowBits)
            return nh & highMask == h & highMask && nl & lowMask == l & lowMask
        default:
            return false
        }
    }

    public var description: String { "\(address)/\(prefixLength)" }
}

/// Who a connection is from, for the per-address limits: the TCP peer, unless the peer is a
/// trusted proxy (`--trusted-proxies`), in which case the address it vouches for. A trusted peer may
/// start the connection with a PROXY protocol v2 header (its source address replaces the peer);
/// when the address so far is still a trusted proxy, `X-Forwarded-For` is walked from the right,
/// skipping trusted hops, to the first untrusted one. Nobody else's headers are believed: an
/// untrusted peer's `X-Forwarded-For` (or PROXY header) is ignored, so it cannot pick its bucket.
public enum ClientAddress {
    /// The address the limits count: `peer` is the socket's, `proxied` what a PROXY v2 header
    /// from a trusted peer said, `headers` the upgrade request's.
    static func resolve(peer: IPAddress?, proxied: IPAddress?, headers: HTTPHeaders, trusted: [IPNetwork]) -> IPAddress? {
        guard let peer else { return nil }
        func isTrusted(_ a: IPAddress) -> Bool { trusted.contains { $0.contains(a) } }
        guard isTrusted(peer) else { return peer }
        let hop = proxied ?? peer
        return forwardedFor(headers["X-Forwarded-For"], after: hop, isTrusted: isTrusted)
    }

    /// The rightmost untrusted `X-Forwarded-For` entry, starting from `hop` (the address that
    /// delivered the request). An entry that does not parse stops the walk at the hop that added it
    /// (the last trusted one): garbage cannot pick a bucket either. All entries trusted: the leftmost.
    static func forwardedFor(_ values: [String], after hop: IPAddress, isTrusted: (IPAddress) -> Bool) -> IPAddress {
        var current = hop
        let entries = values.flatMap { $0.split(separator: ",") }
        for entry in entries.reversed() {
            guard isTrusted(current) else { break }
            guard let address = parseForwardedEntry(entry) else { break }
            current = address
        }
        return current
    }

    /// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
    static func parseForwardedEntry(_ entry: Substring) -> IPAddress? {
        let text = entry.trimmingCharacters(in: .whitespaces)
        guard text.utf8.count <= 64 else { return nil }
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            return IPAddress(text[text.index(after: text.startIndex)..<close])
        }
        if let address = IPAddress(text) { return address }
        // `a.b.c.d:port`: exactly one colon.
        let parts = text.split(separator: ":")
        if parts.count == 2, UInt16(parts[1]) != nil { return IPAddress(parts[0]) }
        return nil
    }
}
