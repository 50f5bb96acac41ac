import ArgumentParser
import Logging
import SynclineServer
import SynclineWebSocket

/// A WebSocket echo endpoint over Syncline's WebSocket layer, for Autobahn|Testsuite's
/// fuzzingclient (scripts/autobahn). Not a Syncline server: no Postgres, no sessions.
@main
struct SynclineWSEcho: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "syncline-ws-echo",
        abstract: "Echo text and binary messages through Syncline's WebSocket layer (conformance testing only).")

    @Option var host = "127.0.0.1"
    @Option var port = 9001
    @Option var path = "/autobahn"
    @Option(name: .customLong("max-message-bytes"), help: "Largest message (1009 above).")
    var maxMessageBytes = 16 << 20
    @Option(name: .customLong("websocket-compression"), help: "off, shared or context-takeover.")
    var compression = "shared"
    @Option(name: .customLong("deflate-window-bits"), help: "context-takeover compressor window (9–15).")
    var deflateWindowBits = WebSocketCompression().windowBits
    @Option(name: .customLong("deflate-memory-level"), help: "context-takeover compressor memLevel (1–9).")
    var deflateMemoryLevel = WebSocketCompression().memoryLevel
    @Option(name: .customLong("event-loop-threads"))
    var eventLoopThreads = 1

    func run() async throws {
        var logger = Logger(label: "syncline-ws-echo")
        logger.logLevel = .notice
        var configuration = ServerConfiguration()
        configuration.maximumMessageBytes = maxMessageBytes
        configuration.eventLoopThreads = eventLoopThreads
        guard let mode = WebSocketCompression.Mode(rawValue: compression) else {
            throw ValidationError("--websocket-compression must be off, shared or context-takeover")
        }
        configuration.webSocketCompression.mode = mode
        configuration.webSocketCompression.windowBits = deflateWindowBits
        configuration.webSocketCompression.memoryLevel = deflateMemoryLevel
        try await WebSocketEchoServer.run(host: host, port: port, path: path, configuration: configuration, logger: logger)
    }
}
