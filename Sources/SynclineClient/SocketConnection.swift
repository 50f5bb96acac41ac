import Foundation
import HTTPTypes
import Logging
import NIOCore
import NIOWebSocket
import SynclineProtocol
import WSClient

/// One WebSocket connection (swift-websocket's `WSClient`), reporting to the client's inbox as
/// core events: opened, each text message parsed (digits kept), closed with the server's code.
final class SocketConnection: Sendable {
    enum Outgoing: Sendable {
        case text(String, written: (@Sendable () -> Void)?)
        case close
    }

    let id: Int
    private let outgoing: AsyncStream<Outgoing>.Continuation
    private let task: Task<Void, Never>

    init(id: Int, url: String, inbox: InputQueue<ClientInput>, maxMessageBytes: Int, crashAfterAck: Bool, logger: Logger) {
        self.id = id
        let (stream, continuation) = AsyncStream<Outgoing>.makeStream()
        outgoing = continuation
        task = Task {
            var configuration = WebSocketClientConfiguration(maxFrameSize: maxMessageBytes)
            configuration.additionalHeaders[HTTPField.Name("Sec-WebSocket-Protocol")!] = synclineSubprotocol
            configuration.autoPing = .disabled
            do {
                let frame = try await WebSocketClient.connect(url: url, configuration: configuration, logger: logger) { inbound, outbound, _ in
                    inbox.push(.event(.opened(id)))
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            for try await message in inbound.messages(maxSize: maxMessageBytes) {
                                guard case .text(let text) = message, let value = try? JSONParser.parse(text) else { continue }
                                if crashAfterAck, value["type"]?.stringValue == "ack" {
                                    CrashPoint.crash("after-ack")
                                }
                                await inbox.pushWaiting(.event(.received(id, value)))
                            }
                        }
                        group.addTask {
                            for await item in stream {
                                switch item {
                                case .text(let text, let written):
                                    try await outbound.write(.text(text))
                                    written?()
                                case .close:
                                    try await outbound.close(.normalClosure, reason: nil)
                                    return
                                }
                            }
                        }
                        try await group.next()
                        group.cancelAll()
                    }
                }
                let code = frame.map { UInt16(webSocketErrorCode: $0.closeCode) }
                inbox.push(.event(.closed(id, code: code, reason: frame?.reason ?? "")))
            } catch {
                inbox.push(.event(.closed(id, code: nil, reason: "\(error)")))
            }
        }
    }

    func send(_ text: String, written: (@Sendable () -> Void)? = nil) {
        outgoing.yield(.text(text, written: written))
    }

    func close() {
        outgoing.yield(.close)
        outgoing.finish()
    }

    /// Ends the connection without a close handshake.
    func abort() {
        task.cancel()
    }
}

/// Injected crash points for tests of durability: `SYNCLINE_CLIENT_CRASH_AT=before-send|after-send|after-ack`
/// kills the process with SIGKILL at that moment of the first mutation's life.
enum CrashPoint {
    static let configured: String? = ProcessInfo.processInfo.environment["SYNCLINE_CLIENT_CRASH_AT"].flatMap { $0.isEmpty ? nil : $0 }

    static func crash(_ point: String) {
        guard configured == point else { return }
        FileHandle.standardError.write(Data("syncline client: crash point \(point)\n".utf8))
        kill(getpid(), SIGKILL)
    }
}
