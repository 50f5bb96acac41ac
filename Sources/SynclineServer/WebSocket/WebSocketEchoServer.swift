import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import SynclineWebSocket

/// An echo endpoint over the same WebSocket layer as `/v1/sync` (upgrader settings, permessage-
/// deflate negotiation, `WebSocketProtocolHandler` with its assembler, limits and close handshake),
/// without Postgres or authentication: for Autobahn|Testsuite (`scripts/autobahn`). Never part of
/// `syncline serve`; only the separate `syncline-ws-echo` executable starts it.
public enum WebSocketEchoServer {
    /// Binds, reports the bound port, and serves until the task is cancelled.
    public static func run(
        host: String, port: Int, path: String, configuration: ServerConfiguration, logger: Logger,
        bound: @Sendable (Int) -> Void = { _ in }
    ) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.eventLoopThreads))
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                let negotiated = NIOLoopBoundBox<PerMessageDeflateParameters?>(nil, eventLoop: channel.eventLoop)
                let upgrader = WebSocketUpgrader(
                    maxFrameSize: WebSocketProtocolHandler.maximumFrameSize(messageLimit: configuration.maximumMessageBytes),
                    shouldUpgrade: { channel, head in
                        guard head.uri.split(separator: "?").first.map(String.init) == path else {
                            return channel.eventLoop.makeSucceededFuture(nil)
                        }
                        var headers = HTTPHeaders()
                        negotiated.value = WebSocketLayer.negotiateDeflate(head, configuration: configuration, into: &headers)
                        return channel.eventLoop.makeSucceededFuture(headers)
                    },
                    upgradePipelineHandler: { channel in
                        let webSocket = WebSocketProtocolHandler(options: .init(configuration), deflate: negotiated.value)
                        try channel.pipeline.syncOperations.addHandler(webSocket)
                        try channel.pipeline.syncOperations.addHandler(EchoHandler(webSocket: webSocket))
                    })
                let notFound = NIOLoopBound(NotFoundHandler(), eventLoop: channel.eventLoop)
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withServerUpgrade: (upgraders: [upgrader], completionHandler: { context in
                            context.pipeline.syncOperations.removeHandler(notFound.value, promise: nil)
                        }),
                        withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(notFound.value)
                }
            }
            .bind(host: host, port: port).get()
        let actual = channel.localAddress?.port ?? port
        logger.notice("websocket echo listening", metadata: ["url": "ws://\(host):\(actual)\(path)",
                                                             "compression": "\(configuration.webSocketCompression.mode.rawValue)",
                                                             "max_message_bytes": "\(configuration.maximumMessageBytes)"])
        bound(actual)
        do {
            while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
        } catch {}
        try? await channel.close()
        try? await group.shutdownGracefully()
    }

    /// Sends every message back through the WebSocket layer's API (flushed when the read ends).
    private final class EchoHandler: ChannelInboundHandler {
        typealias InboundIn = WebSocketFrame

        private let webSocket: WebSocketProtocolHandler

        init(webSocket: WebSocketProtocolHandler) {
            self.webSocket = webSocket
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            switch frame.opcode {
            case .text, .binary:
                webSocket.sendMessage(frame.data, opcode: frame.opcode)
            default:
                break
            }
        }
    }

    /// Answers plain HTTP requests with 404.
    private final class NotFoundHandler: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .end = unwrapInboundIn(data) else { return }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: "0")
            headers.add(name: "Connection", value: "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .notFound, headers: headers))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
        }
    }
}
