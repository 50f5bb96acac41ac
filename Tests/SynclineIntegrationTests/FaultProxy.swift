import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A loopback TCP proxy in front of Postgres that can partition chosen connections: `freeze`
/// stops forwarding both ways while keeping the sockets open (what a silent network partition
/// looks like to both ends: no FIN, no RST, just nothing), `resume` lets the held bytes through in
/// order, `cut` closes them. Connections are picked by the `application_name` of their startup
/// message (the server names each of its connections: `syncline-tail`, `syncline-mutations`, …), so
/// one node's LISTEN connection can be partitioned while its other connections keep working.
final class FaultProxy: Sendable {
    let port: Int
    private let server: any Channel
    private let rules: NIOLockedValueBox<Rules>
    /// Its own loop, not the process's shared singleton that hundreds of test clients load: a
    /// proxied connection once took longer than PostgresNIO's 10 s connect timeout.
    private let group: MultiThreadedEventLoopGroup

    struct Rules: Sendable {
        /// Connections whose application name starts with this are frozen, new ones included.
        var freezePrefix: String?
        var links: [ProxyLink] = []
    }

    private init(port: Int, server: any Channel, rules: NIOLockedValueBox<Rules>, group: MultiThreadedEventLoopGroup) {
        self.port = port
        self.server = server
        self.rules = rules
        self.group = group
    }

    /// Listens on a free loopback port and forwards every connection to `host:port`.
    static func start(forwardingTo host: String, port targetPort: Int) async throws -> FaultProxy {
        let rules = NIOLockedValueBox(Rules())
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { inbound in
                let link = ProxyLink(inbound: inbound, rules: rules)
                rules.withLockedValue { $0.links.append(link) }
                // The client's first bytes wait in the link until Postgres is connected.
                ClientBootstrap(group: inbound.eventLoop)
                    .channelInitializer { upstream in
                        upstream.eventLoop.makeCompletedFuture {
                            try upstream.pipeline.syncOperations.addHandler(ProxyForwarder(link: link, fromClient: false))
                        }
                    }
                    .connect(host: host, port: targetPort)
                    .whenComplete { result in
                        switch result {
                        case .success(let upstream): link.connected(upstream)
                        case .failure: link.close()
                        }
                    }
                return inbound.eventLoop.makeCompletedFuture {
                    try inbound.pipeline.syncOperations.addHandler(ProxyForwarder(link: link, fromClient: true))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return FaultProxy(port: server.localAddress!.port!, server: server, rules: rules, group: group)
    }

    /// `url` (a `postgres://` URL) with its port replaced by the proxy's.
    func url(replacingPortOf url: String) -> String {
        var components = URLComponents(string: url)!
        components.host = "127.0.0.1"
        components.port = port
        return components.string!
    }

    /// Stops forwarding on every connection named `applicationName…`, now and when one opens.
    func freeze(applicationName prefix: String) {
        let links = rules.withLockedValue { r -> [ProxyLink] in
            r.freezePrefix = prefix
            return r.links
        }
        for link in links { link.eventLoop.execute { if link.name(matches: prefix) { link.freeze() } } }
    }

    /// Forwards again everything held, in order.
    func resume() {
        let links = rules.withLockedValue { r -> [ProxyLink] in
            r.freezePrefix = nil
            return r.links
        }
        for link in links { link.eventLoop.execute { link.resume() } }
    }

    /// Closes both sockets of every connection named `applicationName…` (new ones pass).
    func cut(applicationName prefix: String) {
        for link in rules.withLockedValue({ $0.links }) {
            link.eventLoop.execute { if link.name(matches: prefix) { link.close() } }
        }
    }

    /// The application names of the connections open now (for test messages).
    func openConnections() async -> [String] {
        var names: [String] = []
        for link in rules.withLockedValue({ $0.links }) {
            if let name = try? await link.eventLoop.submit({ link.isOpen ? link.applicationName ?? "?" : nil }).get() {
                names.append(name)
            }
        }
        return names
    }

    func stop() async {
        try? await server.close()
        for link in rules.withLockedValue({ $0.links }) { link.eventLoop.execute { link.close() } }
        try? await group.shutdownGracefully()
    }

    fileprivate static func forget(_ link: ProxyLink, in rules: NIOLockedValueBox<Rules>) {
        rules.withLockedValue { $0.links.removeAll { $0 === link } }
    }
}

/// One proxied connection: the client's socket and Postgres's, on one event loop (every field is
/// touched only there, which is what makes the unchecked `Sendable` true).
final class ProxyLink: @unchecked Sendable {
    let inbound: any Channel
    var upstream: (any Channel)?
    var eventLoop: any EventLoop { inbound.eventLoop }
    private let rules: NIOLockedValueBox<FaultProxy.Rules>
    private(set) var applicationName: String?
    private var startup = ByteBuffer()
    private var frozen = false
    private var held: [(toUpstream: Bool, bytes: ByteBuffer)] = []
    private(set) var isOpen = true

    init(inbound: any Channel, rules: NIOLockedValueBox<FaultProxy.Rules>) {
        self.inbound = inbound
        self.rules = rules
    }

    func name(matches prefix: String) -> Bool { applicationName?.hasPrefix(prefix) ?? false }

    func forward(_ bytes: ByteBuffer, fromClient: Bool) {
        if fromClient && applicationName == nil { sniff(bytes) }
        if frozen {
            held.append((fromClient, bytes))
            return
        }
        guard let target = fromClient ? upstream : inbound else {
            held.append((fromClient, bytes))  // Postgres not connected yet
            return
        }
        target.writeAndFlush(bytes, promise: nil)
    }

    /// The connection to Postgres is up: what the client sent meanwhile goes out (unless frozen).
    func connected(_ upstream: any Channel) {
        guard isOpen else {
            upstream.close(promise: nil)
            return
        }
        self.upstream = upstream
        if frozen {
            upstream.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
            return
        }
        for (_, bytes) in held { upstream.write(bytes, promise: nil) }
        held = []
        upstream.flush()
    }

    func freeze() {
        guard isOpen, !frozen else { return }
        frozen = true
        // Stop reading too: the bytes wait in the kernel's buffers, as on a dead link.
        inbound.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        upstream?.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
    }

    func resume() {
        guard frozen else { return }
        frozen = false
        for (toUpstream, bytes) in held { (toUpstream ? upstream : inbound)?.write(bytes, promise: nil) }
        held = []
        upstream?.flush()
        inbound.flush()
        inbound.setOption(ChannelOptions.autoRead, value: true).whenComplete { [inbound] _ in inbound.read() }
        upstream?.setOption(ChannelOptions.autoRead, value: true).whenComplete { [upstream] _ in upstream?.read() }
    }

    func close() {
        guard isOpen else { return }
        isOpen = false
        held = []
        inbound.close(promise: nil)
        upstream?.close(promise: nil)
        FaultProxy.forget(self, in: rules)
    }

    /// Reads `application_name` from the startup message (after an SSLRequest, if any), then
    /// applies a freeze already in force to this new connection.
    private func sniff(_ bytes: ByteBuffer) {
        var incoming = bytes
        startup.writeBuffer(&incoming)
        while true {
            var view = startup
            guard let length = view.readInteger(as: Int32.self), let code = view.readInteger(as: Int32.self),
                  startup.readableBytes >= Int(length), length >= 8 else { return }
            if code == 80_877_103 || code == 80_877_104 {  // SSLRequest / GSSENCRequest: the real one follows
                startup.moveReaderIndex(forwardBy: 8)
                continue
            }
            let body = view.readBytes(length: Int(length) - 8) ?? []
            let fields = body.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            var name = ""
            for i in stride(from: 0, to: fields.count - 1, by: 2) where fields[i] == "application_name" { name = fields[i + 1] }
            applicationName = name
            startup = ByteBuffer()
            if let prefix = rules.withLockedValue({ $0.freezePrefix }), name.hasPrefix(prefix) { freeze() }
            return
        }
    }
}

/// Hands what one socket reads to its link; either side closing closes the other.
final class ProxyForwarder: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let link: ProxyLink
    let fromClient: Bool

    init(link: ProxyLink, fromClient: Bool) {
        self.link = link
        self.fromClient = fromClient
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        link.forward(unwrapInboundIn(data), fromClient: fromClient)
    }

    func channelInactive(context: ChannelHandlerContext) {
        link.close()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        link.close()
    }
}
