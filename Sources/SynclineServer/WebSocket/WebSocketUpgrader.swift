import NIOCore
import NIOHTTP1
import NIOWebSocket
import SynclineWebSocket

/// The WebSocket upgrade of `/v1/sync` and of the echo endpoint: NIO's handshake (version, key,
/// `Sec-WebSocket-Accept`, the caller's `shouldUpgrade`), then the budgeted frame reader
/// (`WebSocketFrameReader`, around NIO's frame decoder) and whatever
/// `upgradePipelineHandler` adds (`WebSocketProtocolHandler` and the application). Unlike
/// `NIOWebSocketServerUpgrader.upgrade`, it adds neither NIO's frame encoder (the protocol handler
/// writes frame bytes itself, directly above TLS or the socket) nor NIO's error handler (the
/// protocol handler answers the decoder's errors: one close frame, one close timer).
final class WebSocketUpgrader: HTTPServerProtocolUpgrader, Sendable {
    let supportedProtocol = "websocket"
    let requiredUpgradeHeaders: [String] = []
    private let handshake: NIOWebSocketServerUpgrader
    private let maxFrameSize: Int
    private let framesPerPass: Int
    private let upgradePipelineHandler: @Sendable (any Channel) throws -> Void

    /// `upgradePipelineHandler` runs on the channel's event loop, after the decoder was added.
    init(maxFrameSize: Int, framesPerPass: Int = ServerConfiguration().maximumFramesPerPass,
         shouldUpgrade: @escaping @Sendable (any Channel, HTTPRequestHead) -> EventLoopFuture<HTTPHeaders?>,
         upgradePipelineHandler: @escaping @Sendable (any Channel) throws -> Void) {
        self.maxFrameSize = maxFrameSize
        self.framesPerPass = framesPerPass
        self.upgradePipelineHandler = upgradePipelineHandler
        self.handshake = NIOWebSocketServerUpgrader(
            maxFrameSize: maxFrameSize, automaticErrorHandling: false, shouldUpgrade: shouldUpgrade,
            upgradePipelineHandler: { channel, _ in channel.eventLoop.makeSucceededVoidFuture() })
    }

    func buildUpgradeResponse(channel: any Channel, upgradeRequest: HTTPRequestHead,
                              initialResponseHeaders: HTTPHeaders) -> EventLoopFuture<HTTPHeaders> {
        handshake.buildUpgradeResponse(channel: channel, upgradeRequest: upgradeRequest, initialResponseHeaders: initialResponseHeaders)
    }

    func upgrade(context: ChannelHandlerContext, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<Void> {
        let channel = context.channel
        let maxFrameSize = self.maxFrameSize
        let framesPerPass = self.framesPerPass
        let upgradePipelineHandler = self.upgradePipelineHandler
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(WebSocketFrameReader(maxFrameSize: maxFrameSize, framesPerPass: framesPerPass))
            try upgradePipelineHandler(channel)
        }
    }
}

/// What `/v1/sync` and the echo endpoint share when upgrading.
enum WebSocketLayer {
    /// Negotiates permessage-deflate for an upgrade request and adds the response header.
    static func negotiateDeflate(_ head: HTTPRequestHead, configuration: ServerConfiguration, into headers: inout HTTPHeaders) -> PerMessageDeflateParameters? {
        let offers = head.headers["Sec-WebSocket-Extensions"]
        guard !offers.isEmpty,
              let parameters = PerMessageDeflateParameters.negotiate(offers, mode: configuration.webSocketCompression.mode)
        else { return nil }
        headers.add(name: "Sec-WebSocket-Extensions", value: parameters.responseHeader)
        return parameters
    }
}

extension WebSocketProtocolHandler.Options {
    init(_ configuration: ServerConfiguration) {
        self.init(maximumMessageBytes: configuration.maximumMessageBytes, compression: configuration.webSocketCompression)
    }
}
