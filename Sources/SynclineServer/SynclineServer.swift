import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import ServiceLifecycle
import SynclineProtocol

/// The listening socket: HTTP/1.1 with the `/v1/sync` WebSocket upgrade, as a `Service`. On
/// graceful shutdown it stops accepting, closes every WebSocket with 1001 (clients reconnect and
/// resume elsewhere) and waits up to the grace period for them to go.
final class SynclineServer: Service, Sendable {
    static let serverName = "syncline/0.1.0"

    private let environment: SyncEnvironment
    private let group: any EventLoopGroup
    private let dashboard: ByteBuffer?
    private let boundPort: EventLoopPromise<Int>

    init(environment: SyncEnvironment, group: any EventLoopGroup, dashboard: ByteBuffer?) {
        self.environment = environment
        self.group = group
        self.dashboard = dashboard
        self.boundPort = group.any().makePromise(of: Int.self)
    }

    /// The port actually bound (useful with port 0).
    var port: Int {
        get async throws { try await boundPort.futureResult.get() }
    }

    func run() async throws {
        let configuration = environment.configuration
        let environment = self.environment
        let dashboard = self.dashboard
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 4096)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.writeBufferWaterMark,
                                    value: .init(low: configuration.maximumOutboundBytes / 2, high: configuration.maximumOutboundBytes))
                .childChannelInitializer { channel in
                    Self.initialize(channel, environment: environment, dashboard: dashboard)
                }
                .bind(host: configuration.host, port: configuration.port).get()
        } catch {
            boundPort.fail(error)
            throw error
        }
        let port = channel.localAddress?.port ?? configuration.port
        boundPort.succeed(port)
        environment.logger.info("syncline listening", metadata: [
            "address": "http://\(configuration.host):\(port)", "websocket": "ws://\(configuration.host):\(port)/v1/sync",
        ])
        if configuration.demo {
            environment.logger.notice("demo dashboard: http://\(configuration.host):\(port)/")
        }
        try await gracefulShutdown()
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

    private static func initialize(_ channel: any Channel, environment: SyncEnvironment, dashboard: ByteBuffer?) -> EventLoopFuture<Void> {
        let decision = NIOLoopBound(UpgradeDecision(), eventLoop: channel.eventLoop)
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: environment.configuration.maximumMessageBytes,
            automaticErrorHandling: true,
            shouldUpgrade: { channel, head in
                shouldUpgrade(channel, head, environment: environment, decision: decision)
            },
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        SyncConnection(environment: environment, headerIdentity: decision.value.identity))
                }
            })
        let router = HTTPRouter(environment: environment, decision: decision, dashboard: dashboard)
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                withServerUpgrade: (upgraders: [upgrader], completionHandler: { context in
                    context.pipeline.syncOperations.removeHandler(router, promise: nil)
                }),
                withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(router)
        }
    }

    /// Decides the upgrade: path, subprotocol, connection limit, and the Authorization header's
    /// token. A refusal is recorded for the router, which answers with its status.
    private static func shouldUpgrade(
        _ channel: any Channel, _ head: HTTPRequestHead, environment: SyncEnvironment, decision: NIOLoopBound<UpgradeDecision>
    ) -> EventLoopFuture<HTTPHeaders?> {
        let loop = channel.eventLoop
        guard HTTPRouter.split(head.uri).0 == "/v1/sync" else { return loop.makeSucceededFuture(nil) }
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
        guard environment.admitConnection() else {
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
