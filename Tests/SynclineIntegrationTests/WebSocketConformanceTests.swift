import Foundation
import NIOCore
import NIOSSL
import SynclineProtocol
import Testing
@testable import SynclineServer
@testable import SynclineWebSocket

/// The WebSocket layer on `/v1/sync` over real sockets: compression beside plain clients,
/// decompression bombs, wss, and liveness. (RFC 6455/7692 conformance as a whole is
/// scripts/autobahn's business.)
@Suite("WebSocket conformance on /v1/sync")
struct WebSocketConformanceTests {
    static let memo = String(repeating: "a memo long enough to be worth compressing; ", count: 4)

    /// Inflates a server frame (RSV1) as a permessage-deflate message.
    static func payload(_ frame: RawWebSocket.Frame) throws -> String {
        guard frame.rsv1 else { return frame.text }
        let inflater = try #require(ZlibInflater())
        var output = ByteBuffer()
        #expect(inflater.inflate(ByteBuffer(bytes: frame.payload + [0, 0, 0xFF, 0xFF]), into: &output, limit: 1 << 24) == .ok)
        return String(buffer: output)
    }

    @Test("compressed and uncompressed clients on the same feed receive the same rows")
    func compressedBesidePlain() async throws {
        // The raw client answers pings only while it reads; a long heartbeat keeps it open meanwhile.
        try await TestServer.with(configure: { $0.server.heartbeatMilliseconds = 60_000 }) { server in
            let plain = try await TestClient.open(server)
            let compressed = try await TestClient.open(server, compression: true)
            // A client that inflates by hand proves what is on the wire.
            let raw = try await RawWebSocket.connect(port: server.port, extensions: "permessage-deflate; client_max_window_bits")
            #expect(raw.responseHead.lowercased().contains("sec-websocket-extensions: permessage-deflate"))
            try await raw.sendText(TestClient.encode(["type": "hello", "client_id": "raw-1", "token": TestClient.unsignedToken("alice")]))
            #expect(try Self.payload(try #require(try await raw.next())).contains("\"welcome\""))
            for client in [plain, compressed] { client.send(ChangeFeedTests.subscribeChecking) }
            try await raw.sendText(ChangeFeedTests.subscribeChecking)
            var plainFeed = FeedCollector(sub: "t"), compressedFeed = FeedCollector(sub: "t")
            try await plainFeed.collect(from: plain) { $0.snapshotDone }
            try await compressedFeed.collect(from: compressed) { $0.snapshotDone }
            let rows = 40
            for n in 0..<rows {
                try await server.database.execute(
                    "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(n), \(Self.memo + String(n)))")
            }
            try await plainFeed.collect(from: plain) { $0.rows.count == rows + 1 }
            try await compressedFeed.collect(from: compressed) { $0.rows.count == rows + 1 }
            #expect(plainFeed.rows == compressedFeed.rows)
            // The raw client: every live change arrives, in compressed frames, inflating to the same rows.
            var memos = Set<String>(), compressedFrames = 0
            while memos.count < rows {
                let frame = try #require(try await raw.next())
                if frame.opcode == 0x9 {
                    try await raw.send(opcode: 0xA, payload: frame.payload)
                    continue
                }
                guard frame.opcode == 0x1 else { continue }
                if frame.rsv1 { compressedFrames += 1 }
                let message = try JSONParser.parse(try Self.payload(frame))
                guard message["type"]?.stringValue == "changes" else { continue }
                guard case .array(let changes)? = message["changes"] else { continue }
                for change in changes {
                    if let memo = change["row"]?["memo"]?.stringValue { memos.insert(memo) }
                }
            }
            #expect(memos == Set((0..<rows).map { Self.memo + String($0) }))
            #expect(compressedFrames > 0)
            let plainMemos = Set(plainFeed.rows.values.compactMap { $0["memo"]?.stringValue })
            #expect(plainMemos.isSuperset(of: memos))
            await plain.close()
            await compressed.close()
            await raw.close()
        }
    }

    @Test("a decompression bomb is refused with 1009 and the server's memory stays bounded")
    func decompressionBomb() async throws {
        try await TestServer.with { server in
            // 256 MiB of spaces deflate to ~256 KiB, under the 1 MiB frame limit.
            let megabyte = ByteBuffer(repeating: 0x20, count: 1 << 20)
            var bomb = ByteBuffer()
            try #require(ZlibDeflater(windowBits: 15, memoryLevel: 8, level: 9)).compress(Array(repeating: megabyte, count: 256), into: &bomb)
            #expect(bomb.readableBytes < 1 << 20)
            let before = Self.residentBytes()
            let raw = try await RawWebSocket.connect(port: server.port, extensions: "permessage-deflate")
            try await raw.send(opcode: 0x1, rsv1: true, payload: Array(bomb.readableBytesView))
            let close = try await raw.closeFrame()
            #expect(close?.closeCode == 1009)
            let grown = Self.residentBytes() - before
            #expect(grown < 64 << 20, "resident memory grew by \(grown >> 20) MiB for a 256 MiB bomb")
            await raw.close()
            // The server is fine afterwards.
            let client = try await TestClient.open(server)
            await client.close()
        }
    }

    @Test("wss: a client connects with a test certificate")
    func secureWebSocket() async throws {
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
            let client = try await TestClient.open(server, compression: true, tls: tls)
            client.send(ChangeFeedTests.subscribeChecking)
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            #expect(feed.rows.count == 1)
            await client.close()
            // Plain ws:// to the TLS port does not upgrade.
            await #expect(throws: (any Error).self) { _ = try await RawWebSocket.connect(port: server.port) }
        }
    }

    @Test("a connection that stops answering pings is closed; one that answers stays")
    func unansweredPings() async throws {
        // 3 s: the answering client must pong within two periods while the whole suite runs in
        // parallel on 2 cores; at 1 s a starved client was closed too.
        let period: Duration = .seconds(3)
        try await TestServer.with(configure: { $0.server.heartbeatMilliseconds = 3_000 }) { server in
            let answering = try await TestClient.open(server, compression: true)
            let silent = try await RawWebSocket.connect(port: server.port)
            // Before the hello, the last frame the server receives: taken after it, a loaded client
            // could resume past the server's read, and the server's silence would start earlier.
            let started = ContinuousClock.now
            try await silent.sendText(TestClient.encode(["type": "hello", "client_id": "silent-1", "token": TestClient.unsignedToken("alice")]))
            var pings = 0
            var close: RawWebSocket.Frame?
            while let frame = try await silent.next(timeout: .seconds(10)) {
                if frame.opcode == 0x9 { pings += 1 }
                if frame.opcode == 0x8 { close = frame; break }
            }
            let elapsed = ContinuousClock.now - started
            #expect(pings >= 1)
            #expect(close?.closeCode == 1000)
            // Silence counts after two periods, never sooner (how much later depends on the load).
            #expect(elapsed >= period * 2, "closed after \(elapsed)")
            print("measured: a client that stopped answering pings was closed after \(elapsed) (heartbeat \(period))")
            // The client that answers pings is still served.
            answering.send(ChangeFeedTests.subscribeChecking)
            #expect(try await answering.next("subscribed")["id"]?.stringValue == "t")
            #expect(!answering.isClosed)
            await answering.close()
            await silent.close()
        }
    }

    static func residentBytes() -> Int {
        guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = statm.split(separator: " ")
        return (fields.count > 1 ? Int(fields[1]) ?? 0 : 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
