import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import SynclineProtocol
import SynclineServer
import HTTPTypes
import WSClient
import WSCore
import WSCompression

/// A real WebSocket client (swift-websocket's WSClient) with a pull API for tests: send JSON text,
/// wait for the next message with a timeout, learn the close code the server sent.
final class TestClient: Sendable {
    private enum Command: Sendable {
        case send(String)
        case sendBinary([UInt8])
        case close
    }

    private let inbox = NIOLockedValueBox<[JSONValue]>([])
    private let finished = NIOLockedValueBox(false)
    private let commands: AsyncStream<Command>.Continuation
    private let task: Task<WebSocketCloseFrame?, any Error>

    private init(commands: AsyncStream<Command>.Continuation, task: Task<WebSocketCloseFrame?, any Error>,
                 inbox: NIOLockedValueBox<[JSONValue]>, finished: NIOLockedValueBox<Bool>) {
        self.commands = commands
        self.task = task
        // swiftlint: the boxes are shared with the connection task
        self.inboxRef = inbox
        self.finishedRef = finished
    }

    private let inboxRef: NIOLockedValueBox<[JSONValue]>
    private let finishedRef: NIOLockedValueBox<Bool>

    static func unsignedToken(_ sub: String) -> String { Authenticator.unsignedToken(sub: sub) }

    /// Connects (no hello yet).
    static func connect(
        _ server: TestServer, headers: [(String, String)] = [], subprotocols: [String] = [synclineSubprotocol],
        compression: Bool = false, tls: TLSConfiguration? = nil
    ) async throws -> TestClient {
        try await connect(url: server.url, headers: headers, subprotocols: subprotocols, compression: compression, tls: tls)
    }

    /// Connects to a server by URL (a `syncline serve` child process); no hello yet.
    static func connect(
        url serverURL: String, headers: [(String, String)] = [], subprotocols: [String] = [synclineSubprotocol],
        compression: Bool = false, tls: TLSConfiguration? = nil
    ) async throws -> TestClient {
        let inbox = NIOLockedValueBox<[JSONValue]>([])
        let finished = NIOLockedValueBox(false)
        let (stream, continuation) = AsyncStream<Command>.makeStream()
        var configuration = WebSocketClientConfiguration(maxFrameSize: 32 << 20)
        for (name, value) in headers {
            configuration.additionalHeaders[HTTPField.Name(name)!] = value
        }
        if !subprotocols.isEmpty {
            configuration.additionalHeaders[HTTPField.Name("Sec-WebSocket-Protocol")!] = subprotocols.joined(separator: ", ")
        }
        configuration.autoPing = .disabled
        if compression {
            configuration.extensions = [WebSocketExtensionFactory.perMessageDeflate(maxDecompressedFrameSize: 64 << 20, minFrameSizeToCompress: 16).build()]
        }
        let url = tls == nil ? serverURL : serverURL.replacingOccurrences(of: "ws://", with: "wss://")
        if tls != nil { configuration.sniHostname = "localhost" }  // SNI cannot carry an IP address
        let opened = NIOLockedValueBox(false)
        let task = Task<WebSocketCloseFrame?, any Error> {
            defer { finished.withLockedValue { $0 = true } }
            return try await WebSocketClient.connect(url: url, configuration: configuration, tlsConfiguration: tls, logger: TestCluster.logger) { inbound, outbound, _ in
                opened.withLockedValue { $0 = true }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for try await message in inbound.messages(maxSize: 64 << 20) {
                            guard case .text(let text) = message, let value = try? JSONParser.parse(text) else { continue }
                            inbox.withLockedValue { $0.append(value) }
                        }
                    }
                    group.addTask {
                        for await command in stream {
                            switch command {
                            case .send(let text): try await outbound.write(.text(text))
                            case .sendBinary(let bytes): try await outbound.write(.binary(ByteBuffer(bytes: bytes)))
                            case .close:
                                try await outbound.close(.normalClosure, reason: nil)
                                return
                            }
                        }
                    }
                    // Whichever ends first (the server closed, or the test asked to close) ends both.
                    try await group.next()
                    group.cancelAll()
                }
            }
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while !opened.withLockedValue({ $0 }) {
            if finished.withLockedValue({ $0 }) {
                _ = try await task.value
                throw TestFailure("connection closed during the handshake")
            }
            guard ContinuousClock.now < deadline else { throw TestFailure("WebSocket handshake timed out") }
            try await Task.sleep(for: .milliseconds(5))
        }
        return TestClient(commands: continuation, task: task, inbox: inbox, finished: finished)
    }

    /// Connects and completes hello → welcome as `sub`.
    static func open(
        _ server: TestServer, sub: String = "alice", clientID: String? = nil, compression: Bool = false, tls: TLSConfiguration? = nil
    ) async throws -> TestClient {
        let client = try await connect(server, compression: compression, tls: tls)
        client.send(["type": "hello", "client_id": clientID ?? "c-\(UUID().uuidString.prefix(12))", "token": unsignedToken(sub)])
        let welcome = try await client.next()
        guard welcome["type"]?.stringValue == "welcome" else { throw TestFailure("expected welcome, got \(welcome.jsonText)") }
        return client
    }

    func send(_ text: String) {
        commands.yield(.send(text))
    }

    func sendBinary(_ bytes: [UInt8]) {
        commands.yield(.sendBinary(bytes))
    }

    func send(_ object: [String: Any]) {
        send(Self.encode(object))
    }

    static func encode(_ object: [String: Any]) -> String {
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    /// The next message, or a failure after `timeout`.
    func next(timeout: Duration = .seconds(10)) async throws -> JSONValue {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let message = inboxRef.withLockedValue({ $0.isEmpty ? nil : $0.removeFirst() }) { return message }
            if finishedRef.withLockedValue({ $0 }) { throw TestFailure("connection closed while waiting for a message: \(await endDescription)") }
            guard ContinuousClock.now < deadline else { throw TestFailure("no message within \(timeout)") }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    /// The next message of `type` (skipping others only when `skipping` allows it).
    func next(_ type: String, timeout: Duration = .seconds(10), skipping: Set<String> = []) async throws -> JSONValue {
        while true {
            let message = try await next(timeout: timeout)
            let actual = message["type"]?.stringValue ?? "?"
            if actual == type { return message }
            guard skipping.contains(actual) else { throw TestFailure("expected \(type), got \(message.jsonText)") }
        }
    }

    /// Messages that arrive within `window`.
    func drain(for window: Duration) async throws -> [JSONValue] {
        try await Task.sleep(for: window)
        return inboxRef.withLockedValue { messages in
            defer { messages = [] }
            return messages
        }
    }

    /// Waits for the server to close the connection; returns its close code.
    func closeCode(timeout: Duration = .seconds(10)) async throws -> UInt16? {
        let deadline = ContinuousClock.now + timeout
        while !finishedRef.withLockedValue({ $0 }) {
            guard ContinuousClock.now < deadline else { throw TestFailure("connection still open") }
            try await Task.sleep(for: .milliseconds(5))
        }
        guard let frame = try? await task.value else { return nil }
        switch frame.closeCode {
        case .normalClosure: return 1000
        case .goingAway: return 1001
        case .protocolError: return 1002
        case .unacceptableData: return 1003
        case .dataInconsistentWithMessage: return 1007
        case .policyViolation: return 1008
        case .messageTooLarge: return 1009
        case .unexpectedServerError: return 1011
        case .unknown(let code): return code
        default: return nil
        }
    }

    /// Waits for the server to close the connection; returns its close code and reason.
    func closeFrame(timeout: Duration = .seconds(10)) async throws -> (code: UInt16?, reason: String) {
        let code = try await closeCode(timeout: timeout)
        let reason = (try? await task.value)??.reason ?? ""
        return (code, reason)
    }

    func close() async {
        commands.yield(.close)
        commands.finish()
        _ = try? await task.value
    }

    var isClosed: Bool { finishedRef.withLockedValue { $0 } }

    /// How the connection ended, for failure messages: the server's close frame, or the error.
    private var endDescription: String {
        get async {
            switch await task.result {
            case .success(let frame?): "close frame \(frame.closeCode) \"\(frame.reason ?? "")\""
            case .success(nil): "no close frame (TCP closed)"
            case .failure(let error): "\(error)"
            }
        }
    }
}

/// A bare HTTP/1.1 exchange over a socket, for answers a WebSocket client hides (401, 400, 426).
enum RawHTTP {
    static func request(port: Int, _ text: String) async throws -> String {
        let collected = NIOLockedValueBox(ByteBuffer())
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(collected: collected))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(ByteBuffer(string: text.replacingOccurrences(of: "\n", with: "\r\n"))).get()
        let deadline = ContinuousClock.now + .seconds(5)
        // A HEAD request's and a 304's answers end with their headers.
        let bodiless = text.hasPrefix("HEAD ")
        while ContinuousClock.now < deadline {
            let text = collected.withLockedValue { String(buffer: $0) }
            if text.range(of: "\r\n\r\n") != nil, bodiless || text.hasPrefix("HTTP/1.1 304") { break }
            if let end = text.range(of: "\r\n\r\n"), let length = text.components(separatedBy: "\r\n")
                .first(where: { $0.lowercased().hasPrefix("content-length:") })
                .flatMap({ Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) }),
                text[end.upperBound...].utf8.count >= length {
                break
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        try? await channel.close()
        return collected.withLockedValue { String(buffer: $0) }
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let collected: NIOLockedValueBox<ByteBuffer>
        init(collected: NIOLockedValueBox<ByteBuffer>) { self.collected = collected }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            collected.withLockedValue { $0.writeBuffer(&buffer) }
        }
    }
}
