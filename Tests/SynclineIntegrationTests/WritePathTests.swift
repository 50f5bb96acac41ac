import Foundation
import NIOCore
import NIOSSL
import SynclineProtocol
import Testing
@testable import SynclineServer
@testable import SynclineWebSocket

/// The one ordered write path (`WebSocketProtocolHandler` encodes every frame, coalesces small
/// ones per flush, compresses per mode) seen from real clients on real sockets: what reaches the
/// wire is the same messages in every compression mode and over TLS, an `ack` never precedes the
/// changes it waits for, and the close handshake completes.
@Suite("Write path")
struct WritePathTests {
    static let memo = String(repeating: "a memo long enough to be worth compressing; ", count: 3)

    /// A raw client's messages, inflated as its negotiation says (a context-takeover stream keeps
    /// one inflater for the whole connection; otherwise each message has its own).
    struct Reader {
        let socket: RawWebSocket
        let contextTakeover: Bool
        private var inflater: ZlibInflater?
        var compressedFrames = 0

        init(_ socket: RawWebSocket) {
            self.socket = socket
            let head = socket.responseHead.lowercased()
            contextTakeover = head.contains("permessage-deflate") && !head.contains("server_no_context_takeover")
        }

        /// The next text message (pings are answered; nil when the connection ends).
        mutating func next() async throws -> String? {
            while let frame = try await socket.next() {
                switch frame.opcode {
                case 0x9: try await socket.send(opcode: 0xA, payload: frame.payload)
                case 0x1: return try text(frame)
                case 0x8: return nil
                default: continue
                }
            }
            return nil
        }

        private mutating func text(_ frame: RawWebSocket.Frame) throws -> String {
            #expect(frame.fin, "the server sends whole messages")
            guard frame.rsv1 else { return frame.text }
            compressedFrames += 1
            if inflater == nil || !contextTakeover { inflater = ZlibInflater() }
            let inflater = try #require(inflater)
            var output = ByteBuffer()
            #expect(inflater.inflate(ByteBuffer(bytes: frame.payload + [0, 0, 0xFF, 0xFF]), into: &output, limit: 1 << 24) == .ok)
            return String(buffer: output)
        }
    }

    static func hello(_ socket: RawWebSocket, _ id: String, sub: String = "alice") async throws -> Reader {
        try await socket.sendText(TestClient.encode(["type": "hello", "client_id": id, "token": TestClient.unsignedToken(sub)]))
        var reader = Reader(socket)
        let welcome = try #require(try await reader.next())
        #expect(welcome.contains("\"welcome\""))
        return reader
    }

    /// Reads until the snapshot is done and the feed is live.
    static func subscribe(_ reader: inout Reader) async throws {
        try await reader.socket.sendText(ChangeFeedTests.subscribeChecking)
        var done = false, live = false
        while !(done && live) {
            let text = try #require(try await reader.next())
            let message = try JSONParser.parse(text)
            if message["type"]?.stringValue == "snapshot", message["done"] == .bool(true) { done = true }
            if message["type"]?.stringValue == "changes", message["live"] == .bool(true) { live = true }
        }
    }

    /// The live changes of inserted rows (by memo), in arrival order, as JSON values.
    static func changes(_ reader: inout Reader, count: Int) async throws -> [JSONValue] {
        var changes: [JSONValue] = []
        while changes.count < count {
            let next: String?
            do { next = try await reader.next() } catch {
                Issue.record("after \(changes.count) of \(count) changes: \(error)")
                throw error
            }
            let text = try #require(next, "the connection ended after \(changes.count) changes")
            let message = try JSONParser.parse(text)
            guard message["type"]?.stringValue == "changes", case .array(let list)? = message["changes"] else { continue }
            changes.append(contentsOf: list.filter { $0["row"]?["memo"]?.stringValue?.hasPrefix("wp ") == true })
        }
        return changes
    }

    @Test("each compression mode delivers the same messages as an uncompressed connection",
          arguments: [WebSocketCompression.Mode.off, .shared, .contextTakeover])
    func compressionModes(mode: WebSocketCompression.Mode) async throws {
        try await TestServer.with(configure: {
            $0.server.heartbeatMilliseconds = 60_000
            $0.server.webSocketCompression = WebSocketCompression(mode: mode)
        }) { server in
            let offering = try await RawWebSocket.connect(port: server.port, extensions: "permessage-deflate; client_max_window_bits")
            let plain = try await RawWebSocket.connect(port: server.port)
            #expect(offering.responseHead.lowercased().contains("permessage-deflate") == (mode != .off))
            var compressed = try await Self.hello(offering, "wp-compressed")
            var uncompressed = try await Self.hello(plain, "wp-plain")
            #expect(compressed.contextTakeover == (mode == .contextTakeover))
            try await Self.subscribe(&compressed)
            try await Self.subscribe(&uncompressed)
            // Short and long rows, one and several per commit: small frames go through the
            // coalescing buffer, long ones compress, batches share bodies.
            let rows = 30
            for n in 0..<rows {
                let memo = n % 3 == 0 ? "wp \(n)" : "wp \(n) " + Self.memo
                if n % 5 == 4 {
                    let second = memo + " second"
                    try await server.database.execute(
                        "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(n), \(memo)), ('alice-checking', \(n), \(second))")
                } else {
                    try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(n), \(memo))")
                }
            }
            let expected = rows + rows / 5
            let fromCompressed = try await Self.changes(&compressed, count: expected)
            let fromPlain = try await Self.changes(&uncompressed, count: expected)
            #expect(fromCompressed == fromPlain)
            #expect(fromPlain.count == expected)
            if mode == .off {
                #expect(compressed.compressedFrames == 0)
            } else {
                #expect(compressed.compressedFrames > 0)
            }
            #expect(uncompressed.compressedFrames == 0)
            await offering.close()
            await plain.close()
        }
    }

    @Test("wss: live changes reach compressed and uncompressed clients over TLS")
    func secureDelivery() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("syncline-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let cert = directory.appendingPathComponent("cert.pem").path, key = directory.appendingPathComponent("key.pem").path
        try await JWTMint.openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                             "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        try await TestServer.with(configure: {
            $0.server.tlsCertificatePath = cert
            $0.server.tlsKeyPath = key
        }) { server in
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(cert))
            let compressed = try await TestClient.open(server, compression: true, tls: tls)
            let plain = try await TestClient.open(server, tls: tls)
            var feeds = [FeedCollector(sub: "t"), FeedCollector(sub: "t")]
            for (i, client) in [compressed, plain].enumerated() {
                client.send(ChangeFeedTests.subscribeChecking)
                try await feeds[i].collect(from: client) { $0.snapshotDone }
            }
            for n in 0..<5 {
                let memo = "tls \(n) " + Self.memo
                try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(n), \(memo))")
            }
            for (i, client) in [compressed, plain].enumerated() {
                try await feeds[i].collect(from: client) { $0.rows.values.filter { $0["memo"]?.stringValue?.hasPrefix("tls ") == true }.count == 5 }
            }
            #expect(feeds[0].rows == feeds[1].rows)
            await compressed.close()
            await plain.close()
        }
    }

    @Test("an ack is never on the wire before the changes it waits for (pipelined mutations, two feeds)",
          arguments: [WebSocketCompression.Mode.off, .shared])
    func ackAfterChanges(mode: WebSocketCompression.Mode) async throws {
        try await TestServer.with(configure: {
            $0.server.heartbeatMilliseconds = 60_000
            $0.server.webSocketCompression = WebSocketCompression(mode: mode)
        }) { server in
            let socket = try await RawWebSocket.connect(port: server.port, extensions: "permessage-deflate")
            var reader = try await Self.hello(socket, "wp-acks")
            try await Self.subscribe(&reader)
            try await socket.sendText(TestClient.encode([
                "type": "subscribe", "id": "s", "collection": "transactions", "where": ["account_id": "alice-savings"],
            ]))
            // Every transfer writes to both feeds; its ack may leave only after both were sent the
            // changes through its cursor.
            let count = 20
            for mid in 1...count {
                try await socket.sendText(MutationTests.transfer(Int64(mid), from: "alice-checking", to: "alice-savings", amount: "1.00",
                                                                 memo: "ack \(mid)"))
            }
            var delivered: [String: Int64] = [:]
            var liveS = false
            var acks = 0
            while acks < count {
                let text = try #require(try await reader.next())
                let message = try JSONParser.parse(text)
                switch message["type"]?.stringValue {
                case "changes":
                    let sub = try #require(message["sub"]?.stringValue)
                    delivered[sub] = position(message["cursor"]?.stringValue)
                    if sub == "s", message["live"] == .bool(true) { liveS = true }
                case "ack":
                    acks += 1
                    let cursor = position(message["cursor"]?.stringValue)
                    #expect((delivered["t"] ?? 0) >= cursor, "ack \(message["mid"]!) at \(cursor) before feed t reached it")
                    if liveS {
                        #expect((delivered["s"] ?? 0) >= cursor, "ack \(message["mid"]!) at \(cursor) before feed s reached it")
                    }
                case "reject", "error":
                    Issue.record("unexpected \(text)")
                    acks = count
                default:
                    break
                }
            }
            await socket.close()
        }
    }

    @Test("close handshake: a client's close is echoed and TCP closes; after the server's close, nothing but the client's close is read")
    func closeHandshake() async throws {
        try await TestServer.with(configure: { $0.server.heartbeatMilliseconds = 60_000 }) { server in
            // Client-initiated: the server answers with the same code and closes TCP.
            let first = try await RawWebSocket.connect(port: server.port)
            _ = try await Self.hello(first, "wp-close-1")
            try await first.send(opcode: 0x8, payload: [0x03, 0xE8] + Array("bye".utf8))
            let echoed = try await first.closeFrame()
            #expect(echoed?.closeCode == 1000)
            #expect(try await first.next(timeout: .seconds(5)) == nil)
            #expect(first.isClosed)

            // Server-initiated (a binary message: 1003): no data after its close frame, even for a
            // message the client sends meanwhile; TCP closes when the client answers.
            let second = try await RawWebSocket.connect(port: server.port)
            _ = try await Self.hello(second, "wp-close-2")
            try await second.send(opcode: 0x2, payload: [1, 2, 3])
            let close = try #require(try await second.next())
            #expect(close.opcode == 0x8)
            #expect(close.closeCode == 1003)
            // (On a loaded machine the server's 3 s close timer may end TCP first: then these fail
            // to send, and what is checked below still holds.)
            try? await second.sendText(ChangeFeedTests.subscribeChecking)
            try? await second.send(opcode: 0x9, payload: [7])
            try? await second.send(opcode: 0x8, payload: [0x03, 0xEB])
            #expect(try await second.next(timeout: .seconds(5)) == nil, "nothing after the server's close")
            #expect(second.isClosed)

            await first.close()
            await second.close()
        }
    }
}
