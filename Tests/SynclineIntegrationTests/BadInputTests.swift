import Foundation
import NIOCore
import SynclineProtocol
import SynclineServer
import Testing

/// Bad input gets a clear error or close code and costs nothing: no crash, nothing written,
/// other connections unaffected.
@Suite("Bad input and authentication")
struct BadInputTests {
    /// Sends `text`, expects an `error` with `code` (and `ref` when given).
    private func expectError(_ client: TestClient, _ text: String, code: String, ref: JSONValue? = nil,
                             sourceLocation: SourceLocation = #_sourceLocation) async throws {
        client.send(text)
        let reply = try await client.next("error", skipping: ["pong"])
        #expect(reply["code"] == .string(code), "\(text) → \(reply.jsonText)", sourceLocation: sourceLocation)
        if let ref {
            #expect(reply["ref"] == ref, "\(text) → \(reply.jsonText)", sourceLocation: sourceLocation)
        }
        let message = reply["message"]?.stringValue ?? ""
        #expect(message.count > 3, sourceLocation: sourceLocation)
        #expect(message.contains("syncline.") == false, "leaks SQL: \(reply.jsonText)", sourceLocation: sourceLocation)
        #expect(message.contains("PSQLError") == false, "leaks Postgres: \(reply.jsonText)", sourceLocation: sourceLocation)
    }

    @Test("malformed and invalid requests get errors; the connection and others carry on")
    func malformedRequests() async throws {
        try await TestServer.with { server in
            let bystander = try await TestClient.open(server, sub: "bob")
            bystander.send(["type": "subscribe", "id": "b", "collection": "transactions", "where": ["account_id": "bob-checking"]])
            _ = try await bystander.next("subscribed")
            _ = try await bystander.next("snapshot")

            let client = try await TestClient.open(server)
            try await expectError(client, "{not json", code: "bad_request")
            try await expectError(client, "[1,2,3]", code: "bad_request")
            try await expectError(client, #"{"no_type": 1}"#, code: "bad_request")
            try await expectError(client, #"{"type": 7}"#, code: "bad_request")
            try await expectError(client, #"{"type": "launch_missiles"}"#, code: "unknown_type")
            try await expectError(client, #"{"type": "subscribe", "collection": "accounts"}"#, code: "bad_request")
            try await expectError(client, #"{"type": "subscribe", "id": 5, "collection": "accounts"}"#, code: "bad_request", ref: .number("5"))
            try await expectError(client, #"{"type": "subscribe", "id": "x1"}"#, code: "bad_request", ref: .string("x1"))
            try await expectError(client, #"{"type": "subscribe", "id": "x2", "collection": "nope"}"#, code: "not_found", ref: .string("x2"))
            try await expectError(client, #"{"type": "subscribe", "id": "x3", "collection": "accounts", "where": {"balance": 1}}"#,
                                  code: "bad_request", ref: .string("x3"))
            try await expectError(client, #"{"type": "subscribe", "id": "x4", "collection": "accounts", "where": {"owner": {"$ne": 1}}}"#,
                                  code: "bad_request", ref: .string("x4"))
            try await expectError(client, #"{"type": "subscribe", "id": "x5", "collection": "transactions", "where": {"id": "not-a-uuid"}}"#,
                                  code: "bad_request", ref: .string("x5"))
            try await expectError(client, #"{"type": "subscribe", "id": "x6", "collection": "accounts", "where": {"owner": "alice"}, "after": "garbage"}"#,
                                  code: "bad_request", ref: .string("x6"))
            // A cursor of this database's epoch but from the future.
            let epoch = server.app.hub.epoch
            try await expectError(client, #"{"type": "subscribe", "id": "x7", "collection": "accounts", "where": {"owner": "alice"}, "after": "\#(epoch).999999999"}"#,
                                  code: "bad_request", ref: .string("x7"))
            try await expectError(client, #"{"type": "subscribe", "id": "x8", "topic": "user:bob"}"#, code: "forbidden", ref: .string("x8"))
            try await expectError(client, #"{"type": "subscribe", "id": "x9", "collection": "accounts", "where": {"owner": "bob"}}"#,
                                  code: "forbidden", ref: .string("x9"))
            try await expectError(client, #"{"type": "unsubscribe", "id": "never"}"#, code: "not_found", ref: .string("never"))
            try await expectError(client, #"{"type": "mutate", "mid": 0, "name": "transfer", "args": {}}"#, code: "bad_request", ref: .number("0"))

            // SQL-looking values are values: no match, nothing executed.
            client.send(#"{"type": "subscribe", "id": "sql", "collection": "accounts", "where": {"owner": "alice' OR '1'='1"}}"#)
            let refused = try await client.next("error")
            #expect(refused["code"] == .string("forbidden"))  // the policy sees a user who is not the caller

            // A good subscription, then the same id again.
            client.send(#"{"type": "subscribe", "id": "good", "collection": "accounts", "where": {"owner": "alice"}}"#)
            _ = try await client.next("subscribed")
            let snapshot = try await client.next("snapshot")
            #expect(snapshot["rows"].map { if case .array(let rows) = $0 { rows.count } else { -1 } } == 2)
            #expect(try await client.next("changes")["live"] == .bool(true))  // caught up (protocol §3.4)
            try await expectError(client, #"{"type": "subscribe", "id": "good", "collection": "accounts", "where": {"owner": "alice"}}"#,
                                  code: "duplicate_id", ref: .string("good"))

            // Nothing was written, the tables are intact, and both connections still work.
            let count = try await server.database.psql("SELECT count(*) FROM accounts").trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(count == "3")
            client.send(#"{"type": "ping", "t": 42}"#)
            let pong = try await client.next("pong")
            #expect(pong["t"] == .number("42"))
            try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('bob-checking', 1, 'still here')")
            let change = try await bystander.next("changes")
            #expect(change["sub"] == .string("b"))
            client.send(#"{"type": "unsubscribe", "id": "good"}"#)
            let unsubscribed = try await client.next("unsubscribed", skipping: ["changes"])
            #expect(unsubscribed["id"] == .string("good"))
            await client.close()
            await bystander.close()
        }
    }

    @Test("protocol violations close the connection with the right code", arguments: [
        (#"{"type": "subscribe", "id": "a", "collection": "accounts"}"#, UInt16(4400)),
        (#"{"type": "ping"}"#, UInt16(4400)),
        ("{broken", UInt16(4400)),
        (#"{"type": "hello", "client_id": "has space"}"#, UInt16(4400)),
    ])
    func beforeHello(first: String, code: UInt16) async throws {
        try await TestServer.with { server in
            let client = try await TestClient.connect(server)
            client.send(first)
            #expect(try await client.closeCode() == code)
        }
    }

    @Test("a second hello, an oversized message and a binary frame close the connection")
    func closes() async throws {
        try await TestServer.with(configure: { $0.server.maximumMessageBytes = 64 << 10 }) { server in
            var client = try await TestClient.open(server)
            client.send(["type": "hello", "client_id": "again", "token": TestClient.unsignedToken("alice")])
            #expect(try await client.closeCode() == 4400)

            client = try await TestClient.open(server)
            client.send(String(repeating: " ", count: 70 << 10) + #"{"type":"ping"}"#)
            #expect(try await client.closeCode() == 1009)

            client = try await TestClient.open(server)
            client.sendBinary(Array(#"{"type":"ping"}"#.utf8))
            #expect(try await client.closeCode() == 1003)
        }
    }

    /// A WebSocket upgrade request for /v1/sync with one extra header line.
    static func upgradeRequest(extraHeader: String) -> String {
        """
        GET /v1/sync HTTP/1.1
        Host: 127.0.0.1
        Upgrade: websocket
        Connection: Upgrade
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==
        Sec-WebSocket-Version: 13
        \(extraHeader)


        """
    }

    @Test("tokens: Authorization header, hello token, expiry, another user's client_id")
    func authentication() async throws {
        try await TestServer.with { server in
            // An invalid bearer token is refused at the upgrade with 401.
            let refused = try await RawHTTP.request(port: server.port, Self.upgradeRequest(extraHeader: "Authorization: Bearer not.a.token"))
            #expect(refused.hasPrefix("HTTP/1.1 401"), "\(refused)")

            // A subprotocol list without syncline.v1 is refused with 400.
            let wrongProtocol = try await RawHTTP.request(port: server.port, Self.upgradeRequest(extraHeader: "Sec-WebSocket-Protocol: chat, superchat"))
            #expect(wrongProtocol.hasPrefix("HTTP/1.1 400"), "\(wrongProtocol)")

            // Plain GET: 426.
            let plain = try await RawHTTP.request(port: server.port, "GET /v1/sync HTTP/1.1\nHost: x\n\n")
            #expect(plain.hasPrefix("HTTP/1.1 426"), "\(plain)")

            // A valid HS256 header token opens the session without a hello token.
            let authenticator = try await Authenticator(hmacSecret: TestServer.secret, jwksJSON: nil, allowUnsigned: false)
            let signed = try await authenticator.sign(sub: "alice")
            let viaHeader = try await TestClient.connect(server, headers: [("Authorization", "Bearer \(signed)")])
            viaHeader.send(["type": "hello", "client_id": "header-client"])
            #expect(try await viaHeader.next()["type"] == .string("welcome"))
            await viaHeader.close()

            // No subprotocol offered at all is accepted.
            let bare = try await TestClient.connect(server, subprotocols: [])
            bare.send(["type": "hello", "client_id": "bare", "token": signed])
            #expect(try await bare.next()["type"] == .string("welcome"))
            await bare.close()

            // A forged signature or an expired token in hello closes with 4001.
            let forged = String(signed.dropLast(4)) + "AAAA"
            var client = try await TestClient.connect(server)
            client.send(["type": "hello", "client_id": "forged", "token": forged])
            #expect(try await client.closeCode() == 4001)

            let expired = Authenticator.unsignedToken(sub: "alice", extraClaims: [("exp", .number("\(Int(Date().timeIntervalSince1970) - 120)"))])
            client = try await TestClient.connect(server)
            client.send(["type": "hello", "client_id": "expired", "token": expired])
            #expect(try await client.closeCode() == 4001)

            client = try await TestClient.connect(server)
            client.send(["type": "hello", "client_id": "no-token"])
            #expect(try await client.closeCode() == 4001)

            // A client_id belongs to its first user.
            let alice = try await TestClient.open(server, sub: "alice", clientID: "shared-device")
            await alice.close()
            client = try await TestClient.connect(server)
            client.send(["type": "hello", "client_id": "shared-device", "token": TestClient.unsignedToken("bob")])
            #expect(try await client.closeCode() == 4003)

            // `auth` with another user's token closes with 4003.
            client = try await TestClient.open(server, sub: "alice")
            client.send(["type": "auth", "token": TestClient.unsignedToken("bob")])
            #expect(try await client.closeCode() == 4003)
        }
    }

    @Test("a server without --insecure-dev-auth refuses unsigned tokens")
    func unsignedRefused() async throws {
        try await TestServer.with(configure: { $0.server.insecureDevAuth = false }) { server in
            let client = try await TestClient.connect(server)
            client.send(["type": "hello", "client_id": "dev", "token": TestClient.unsignedToken("alice")])
            #expect(try await client.closeCode() == 4001)
        }
    }

    @Test("health, readiness, metrics; graceful shutdown closes WebSockets with 1001")
    func operations() async throws {
        let server = try await TestServer.start()
        let health = try await RawHTTP.request(port: server.port, "GET /healthz HTTP/1.1\nHost: x\n\n")
        #expect(health.hasPrefix("HTTP/1.1 200"))
        let ready = try await RawHTTP.request(port: server.port, "GET /readyz HTTP/1.1\nHost: x\n\n")
        #expect(ready.hasPrefix("HTTP/1.1 200"))
        let metrics = try await RawHTTP.request(port: server.port, "GET /metrics HTTP/1.1\nHost: x\n\n")
        #expect(metrics.hasPrefix("HTTP/1.1 200"))
        let missing = try await RawHTTP.request(port: server.port, "GET /nope HTTP/1.1\nHost: x\n\n")
        #expect(missing.hasPrefix("HTTP/1.1 404"))
        let client = try await TestClient.open(server)
        await server.stop()
        #expect(try await client.closeCode() == 1001)
    }
}
