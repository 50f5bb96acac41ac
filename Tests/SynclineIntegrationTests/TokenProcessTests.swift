import Foundation
import SynclineProtocol
import Testing

/// The real `syncline serve` binary with a JWKS file: SIGHUP reloads the keys without dropping
/// connections, and no token material reaches its log even at debug level.
@Suite("Tokens (syncline serve process)")
struct TokenProcessTests {
    /// `syncline serve --demo --jwks-file` at debug level on a free port, ready.
    static func start(jwksFile: String, extra: [String] = []) async throws -> (ChildProcess, port: Int) {
        let database = try await TestDatabase(url: TestCluster.makeDatabase())
        let port = try freePort()
        let child = try ChildProcess(ChildProcess.binary("syncline"), [
            "serve", "--database-url", database.url, "--port", "\(port)", "--demo", "--no-demo-generator",
            "--jwks-file", jwksFile, "--event-loop-threads", "1", "--log-level", "debug",
        ] + extra, name: "syncline serve :\(port)")
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if !child.isRunning { throw TestFailure("the server exited:\n" + child.lines.joined(separator: "\n")) }
            if let answer = try? await RawHTTP.request(port: port, "GET /readyz HTTP/1.1\nHost: x\nConnection: close\n\n"),
               answer.hasPrefix("HTTP/1.1 200") {
                return (child, port)
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestFailure("the server never became ready:\n" + child.lines.joined(separator: "\n"))
    }

    static func claims(_ sub: String = "alice", exp: Int = 600) -> [(String, JSONValue)] {
        [("sub", .string(sub)), ("exp", JWTMint.now(exp))]
    }

    /// Opens a session with `token`; the client when welcomed, else nil (closed with 4001).
    static func open(port: Int, _ token: String) async throws -> TestClient? {
        let client = try await TestClient.connect(url: "ws://127.0.0.1:\(port)/v1/sync")
        client.send(["type": "hello", "client_id": "c-\(UUID().uuidString.prefix(12))", "token": token])
        if let first = try? await client.next(), first["type"]?.stringValue == "welcome" { return client }
        #expect(try await client.closeCode() == 4001)
        return nil
    }

    static func ping(_ client: TestClient, _ tag: String) async throws -> Bool {
        client.send(["type": "ping", "t": tag])
        let pong = try await client.next("pong", skipping: ["cursor"])
        return pong["t"]?.stringValue == tag
    }

    @Test("SIGHUP reloads the JWKS file; open connections stay; a bad file keeps the old keys and logs an error")
    func reloadOnSIGHUP() async throws {
        let first = try await RSATestKey(kid: "first"), second = try await RSATestKey(kid: "second")
        let file = NSTemporaryDirectory() + "syncline-jwks-\(UUID().uuidString).json"
        defer { first.remove(); second.remove(); try? FileManager.default.removeItem(atPath: file) }
        try RSATestKey.jwks([first.jwk()]).write(toFile: file, atomically: true, encoding: .utf8)
        let (server, port) = try await Self.start(jwksFile: file)
        defer { server.signal(SIGKILL) }

        let old = try #require(try await Self.open(port: port, JWTMint.rs256(first, claims: Self.claims())))
        #expect(try await Self.open(port: port, JWTMint.rs256(second, claims: Self.claims())) == nil)

        // Rotate: only the second key.
        try RSATestKey.jwks([second.jwk()]).write(toFile: file, atomically: true, encoding: .utf8)
        server.signal(SIGHUP)
        try await server.waitForLine(containing: "JWKS reloaded")
        #expect(try await Self.open(port: port, JWTMint.rs256(first, claims: Self.claims())) == nil)
        let fresh = try #require(try await Self.open(port: port, JWTMint.rs256(second, claims: Self.claims())))
        // The connection opened with the first key is still served, and can refresh with the new one.
        #expect(try await Self.ping(old, "after-reload"))
        old.send(["type": "auth", "token": try await JWTMint.rs256(second, claims: Self.claims())])
        #expect(try await Self.ping(old, "after-auth"))

        // A file that does not load: an error in the log, the second key still works.
        try "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"x\", \"k\": \"c2VjcmV0\"}]}".write(toFile: file, atomically: true, encoding: .utf8)
        server.signal(SIGHUP)
        let failed = try await server.waitForLine(containing: "JWKS reload failed")
        #expect(failed.contains("error"))
        #expect(failed.contains("second"), "the log names the keys kept: \(failed)")
        try "not json".write(toFile: file, atomically: true, encoding: .utf8)
        server.signal(SIGHUP)
        try await eventually("a second reload failure") { server.lines.filter { $0.contains("JWKS reload failed") }.count >= 2 }
        let later = try #require(try await Self.open(port: port, JWTMint.rs256(second, claims: Self.claims())))
        #expect(try await Self.ping(old, "after-bad-file"))
        #expect(try await Self.ping(fresh, "fresh"))
        #expect(server.isRunning)
        await later.close()
        await fresh.close()
        await old.close()
        server.signal(SIGTERM)
        try await server.waitForExit()
    }

    @Test("no token, nor any token's signature or payload part, appears in the debug log")
    func noTokenMaterialInLogs() async throws {
        let key = try await RSATestKey(kid: "log-key")
        let file = NSTemporaryDirectory() + "syncline-jwks-\(UUID().uuidString).json"
        defer { key.remove(); try? FileManager.default.removeItem(atPath: file) }
        try RSATestKey.jwks([key.jwk()]).write(toFile: file, atomically: true, encoding: .utf8)
        let (server, port) = try await Self.start(jwksFile: file, extra: ["--jwt-audience", "log-test"])
        defer { server.signal(SIGKILL) }

        let aud: (String, JSONValue) = ("aud", "log-test")
        let valid = try await JWTMint.rs256(key, claims: Self.claims() + [aud])
        let refresh = try await JWTMint.rs256(key, claims: Self.claims(exp: 900) + [aud])
        let expired = try await JWTMint.rs256(key, claims: Self.claims(exp: -3600) + [aud])
        let wrongAudience = try await JWTMint.rs256(key, claims: Self.claims())
        let forged = String(valid.dropLast(6)) + "AAAAAA"
        let confused = try await JWTMint.hs256(key: Data(key.publicPEM.utf8), header: [("kid", "log-key")], claims: Self.claims() + [aud])
        let garbage = "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2lnbmF0dXJlLXBhcnQtb2YtZ2FyYmFnZQ"
        let tokens = [valid, refresh, expired, wrongAudience, forged, confused, garbage]

        let session = try #require(try await Self.open(port: port, valid))
        session.send(["type": "auth", "token": refresh])
        #expect(try await Self.ping(session, "refreshed"))
        for token in [expired, wrongAudience, forged, confused, garbage] {
            #expect(try await Self.open(port: port, token) == nil)
        }
        // The same tokens as Authorization headers.
        for token in tokens {
            _ = try await RawHTTP.request(port: port, TokenTests.upgrade(bearer: token))
        }
        // And a refresh that fails closes the session.
        session.send(["type": "auth", "token": forged])
        #expect(try await session.closeCode() == 4001)

        server.signal(SIGTERM)
        try await server.waitForExit()
        let log = server.lines.joined(separator: "\n")
        #expect(log.contains("closing"), "debug logging was on (the close reasons are logged)")
        for (index, token) in tokens.enumerated() {
            let parts = token.split(separator: ".").map(String.init)
            // Booleans first: a failure names the token, not the whole log.
            let leaks = (token: log.contains(token), signature: log.contains(parts[2]), payload: log.contains(parts[1]))
            #expect(!leaks.token, "token #\(index) is in the log")
            #expect(!leaks.signature, "the signature of token #\(index) is in the log")
            #expect(!leaks.payload, "the payload part of token #\(index) is in the log")
        }
    }
}
