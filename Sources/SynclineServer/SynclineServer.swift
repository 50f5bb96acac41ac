import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import ServiceLifecycle
import SynclineProtocol
import SynclineWebSocket

/// The listening socket: HTTP/1.1 with the `/v1/sync` WebSocket upgrade, as a `Service`. On
/// graceful shutdown it first drains (`/readyz` fails for `drainMilliseconds` while it keeps
/// serving), then stops accepting, closes every WebSocket with 1001 (clients reconnect and resume
/// elsewhere) and waits up to the grace period for them to go. The tail, the pools and the canary
/// come before it in the service group, so they still run during the drain (ServiceGroup shuts
/// services down in reverse order, one after the other).
final class SynclineServer: Service, Sendable {
    static let serverName = "syncline/0.1.0"

    let environment: SyncEnvironment
    private let group: any EventLoopGroup
    private let assets: StaticAssets
    private let boundPort: EventLoopPromise<Int>

    init(environment: SyncEnvironment, group: any EventLoopGroup, assets: StaticAssets) {
        self.environment = environment
        self.group = group
        self.assets = assets
        self.boundPort = group.any().makePromise(of: Int.self)
    }

    /// The port actually bound (useful with port 0).
    var port: Int {
        get async throws { try await boundPort.futureResult.get() }
    }

    func run() async throws {
        let configuration = environment.configuration
        let environment = self.environment
        let assets = self.assets
        let channel: any Channel
        let tls: NIOSSLContext?
        do {
            tls = try Self.makeTLSContext(configuration)
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 4096)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                // One socket read per connection per loop pass (NIO's default is 4): with the frame
                // reader's budget, this bounds what one connection does before others get a turn.
                .childChannelOption(.maxMessagesPerRead, value: 1)
                .childChannelOption(.writeBufferWaterMark,
                                    value: .init(low: configuration.maximumOutboundBytes / 2, high: configuration.maximumOutboundBytes))
                .childChannelInitializer { channel in
                    Self.initialize(channel, environment: environment, assets: assets, tls: tls)
                }
                .bind(host: configuration.host, port: configuration.port).get()
        } catch {
            boundPort.fail(error)
            throw error
        }
        let port = channel.localAddress?.port ?? configuration.port
        boundPort.succeed(port)
        let secure = tls == nil ? "" : "s"
        environment.logger.info("syncline listening", metadata: [
            "address": "http\(secure)://\(configuration.host):\(port)", "websocket": "ws\(secure)://\(configuration.host):\(port)/v1/sync",
            "compression": "\(configuration.webSocketCompression.mode.rawValue)",
        ])
        if configuration.demo {
            environment.logger.notice("demo dashboard: http://\(configuration.host):\(port)/")
        }
        if let directory = assets.directory {
            environment.logger.notice("serving \(directory.root) at http\(secure)://\(configuration.host):\(port)/app/")
        }
        try await gracefulShutdown()
        if configuration.drainMilliseconds > 0 {
            // The balancer must stop sending clients here before they are told to go: /readyz
            // fails for two of its health-check intervals while this node still serves.
            environment.health.startDraining()
            environment.logger.info("draining: /readyz fails while still serving", metadata: [
                "drain_ms": "\(configuration.drainMilliseconds)",
            ])
            try? await Task.sleep(for: .milliseconds(configuration.drainMilliseconds))
        }
        environment.logger.info("shutting down: closing WebSocket connections with 1001")
        try? await channel.close()
        let hub = environment.hub
        for loop in group.makeIterator() {
            try? await loop.submit { hub.fanout(on: loop).closeAll() }.get()
        }
        let deadline = ContinuousClock.now + .milliseconds(configuration.shutdownGrace.nanoseconds / 1_000_000)
        while environment.connections.withLockedValue({ $0 }) > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    /// `--tls-cert`/`--tls-key` (PEM) as a server context; nil without them.
    static func makeTLSContext(_ configuration: ServerConfiguration) throws -> NIOSSLContext? {
        guard let certificatePath = configuration.tlsCertificatePath, let keyPath = configuration.tlsKeyPath else {
            if configuration.tlsCertificatePath != nil || configuration.tlsKeyPath != nil {
                throw TLSConfigurationError(message: "--tls-cert and --tls-key go together")
            }
            return nil
        }
        let chain = try NIOSSLCertificate.fromPEMFile(certificatePath).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        tls.applicationProtocols = ["http/1.1"]
        return try NIOSSLContext(configuration: tls)
    }

    struct TLSConfigurationError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    private static func initialize(_ channel: any Channel, environment: SyncEnvironment, assets: StaticAssets, tls: NIOSSLContext?) -> EventLoopFuture<Void> {
        let decision = NIOLoopBound(UpgradeDecision(), eventLoop: channel.eventLoop)
        let configuration = environment.configuration
        let upgrader = WebSocketUpgrader(
            maxFrameSize: WebSocketProtocolHandler.maximumFrameSize(messageLimit: configuration.maximumMessageBytes),
            framesPerPass: configuration.maximumFramesPerPass,
            shouldUpgrade: { channel, head in
                shouldUpgrade(channel, head, environment: environment, decision: decision)
            },
            upgradePipelineHandler: { channel in
                let webSocket = WebSocketProtocolHandler(options: .init(configuration), deflate: decision.value.deflate)
                try channel.pipeline.syncOperations.addHandler(webSocket)
                try channel.pipeline.syncOperations.addHandler(
                    SyncConnection(environment: environment, headerIdentity: decision.value.identity, webSocket: webSocket))
            })
        let router = HTTPRouter(environment: environment, decision: decision, assets: assets)
        let peer = IPAddress(channel.remoteAddress)
        let fromTrustedProxy = peer.map { peer in configuration.trustedProxies.contains { $0.contains(peer) } } ?? false
        return channel.eventLoop.makeCompletedFuture {
            // Ahead of TLS: the byte limit counts what the socket delivers, and a PROXY header
            // precedes the TLS handshake.
            if configuration.inboundBytesPerSecond > 0 {
                try channel.pipeline.syncOperations.addHandler(InboundByteLimiter(
                    bytesPerSecond: configuration.inboundBytesPerSecond, burstBytes: configuration.inboundBurstBytes))
            }
            if fromTrustedProxy {
                try channel.pipeline.syncOperations.addHandler(ProxyProtocolHandler(decision: decision, logger: environment.logger))
            }
            if let tls {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
            }
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                withServerUpgrade: (upgraders: [upgrader], completionHandler: { context in
                    context.pipeline.syncOperations.removeHandler(router, promise: nil)
                }),
                withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(router)
        }
    }

    /// Decides the upgrade: path, `Origin`, the per-address limits, subprotocol, connection limit,
    /// and the Authorization header's token. A refusal is recorded for the router, which answers
    /// with its status.
    private static func shouldUpgrade(
        _ channel: any Channel, _ head: HTTPRequestHead, environment: SyncEnvironment, decision: NIOLoopBound<UpgradeDecision>
    ) -> EventLoopFuture<HTTPHeaders?> {
        let loop = channel.eventLoop
        guard HTTPRouter.split(head.uri).0 == "/v1/sync" else { return loop.makeSucceededFuture(nil) }
        if let refusal = UpgradeAdmission.check(channel, head, environment: environment, proxied: decision.value.proxiedAddress) {
            decision.value.refusal = (refusal.status, refusal.code, refusal.message)
            decision.value.refusalHeaders = refusal.headers
            return loop.makeSucceededFuture(nil)
        }
        let offered = head.headers["Sec-WebSocket-Protocol"]
            .flatMap { $0.split(separator: ",") }
            .map { $0.trimmingCharacters(in: .whitespaces) }
        var responseHeaders = HTTPHeaders()
        if !offered.isEmpty {
            guard offered.contains(synclineSubprotocol) else {
                decision.value.refusal = (.badRequest, "unsupported_subprotocol", "offer the subprotocol \(synclineSubprotocol)")
                return loop.makeSucceededFuture(nil)
            }
            responseHeaders.add(name: "Sec-WebSocket-Protocol", value: synclineSubprotocol)
        }
        decision.value.deflate = WebSocketLayer.negotiateDeflate(head, configuration: environment.configuration, into: &responseHeaders)
        guard environment.admitConnection() else {
            SynclineLimitMetrics.refused(.connections)
            decision.value.refusal = (.serviceUnavailable, "overloaded", "connection limit reached; retry later")
            return loop.makeSucceededFuture(nil)
        }
        guard let authorization = head.headers["Authorization"].first else {
            return loop.makeSucceededFuture(responseHeaders)
        }
        guard authorization.lowercased().hasPrefix("bearer ") else {
            environment.releaseConnection()
            decision.value.refusal = (.unauthorized, "unauthorized", "Authorization must be 'Bearer <jwt>'")
            return loop.makeSucceededFuture(nil)
        }
        let token = String(authorization.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        let promise = loop.makePromise(of: HTTPHeaders?.self)
        let headers = responseHeaders
        promise.completeWithTask {
            do {
                let identity = try await environment.authenticator.authenticate(token)
                try await loop.submit { decision.value.identity = identity }.get()
                return headers
            } catch {
                environment.releaseConnection()
                try await loop.submit {
                    decision.value.refusal = (.unauthorized, "unauthorized", "invalid or expired token")
                }.get()
                return nil
            }
        }
        return promise.futureResult
    }
}
