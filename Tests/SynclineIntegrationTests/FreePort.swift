import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A TCP port nothing listens on right now, for a child server to bind later (and again after a
/// restart). Taken below the kernel's ephemeral range, where `bind(0)` and every outgoing
/// connection get theirs: a port from inside it was taken by some client socket of the parallel
/// suite before the child bound it (EADDRINUSE, once in a full run).
func freePort() throws -> Int {
    let (low, count) = PortBand.range
    for _ in 0..<count {
        let port = low + PortBand.next.withLockedValue { n -> Int in
            n = (n + 1) % count
            return n
        }
        let bound = try? ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: port).wait()
        if let bound {
            try bound.close().wait()
            return port
        }
    }
    throw TestFailure("no free port in \(low)..<\(low + count)")
}

private enum PortBand {
    /// 8,000 ports just below the ephemeral range (`ip_local_port_range`, 32768 by default).
    static let range: (low: Int, count: Int) = {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        let ephemeral = Int(text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first ?? "") ?? 32_768
        let count = min(8_000, max(ephemeral - 1_024, 1))
        return (ephemeral - count, count)
    }()
    /// Where this process starts in the band: apart from another test process's start.
    static let next = NIOLockedValueBox(Int(getpid()) * 97 % range.count)
}
