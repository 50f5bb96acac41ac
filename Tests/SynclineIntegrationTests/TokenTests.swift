import Foundation
import SynclineProtocol
import SynclineServer
import Testing

/// Token verification through a real server and real WebSocket clients (issue 14): `alg: none`,
/// HS/RS confusion, `aud`/`iss`, `exp`/`nbf` with the configured leeway, and the session's expiry.
/// Tokens are made by `JWTMint` (openssl), never by the verifier under test.
@Suite("Tokens")
struct TokenTests {
    enum Outcome: Equatable {
        case welcome
        case closed(UInt16?, String)

        var reason: String {
            if case .closed(_, let reason) = self { return reason }
            return ""
        }
    }

    /// hello with `token`: welcomed, or closed with which code and reason.
    static func hello(_ server: TestServer, _ token: String) async throws -> Outcome {
        let client = try await TestClient.connect(server)
        client.send(["type": "hello", "client_id": "c-\(UUID().uuidString.prefix(12))", "token": token])
        guard let first = try? await client.next(), first["type"]?.stringValue == "welcome" else {
            let (code, reason) = try await client.closeFrame()
            return .closed(code, reason)
        }
        await client.close()
        return .welcome
    }

    static let secret = Data(TestServer.secret.utf8)

    static func claims(sub: String = "alice", _ extra: (String, JSONValue)...) -> [(String, JSONValue)] {
        [("sub", .string(sub)), ("exp", JWTMint.now(600))] + extra
    }

    @Test("alg none, in any spelling, is refused unless unsigned dev tokens are enabled")
    func algNone() async throws {
        try await TestServer.with(configure: { $0.server.insecureDevAuth = false }) { server in
            let valid = try await JWTMint.hs256(key: Self.secret, claims: Self.claims())
            #expect(try await Self.hello(server, valid) == .welcome)
            let signature = String(valid.split(separator: ".")[2])
            for alg in ["none", "None", "NONE", "nOnE"] {
                let input = JWTMint.signingInput(header: [("alg", .string(alg)), ("typ", "JWT")], claims: Self.claims())
                for token in [input + ".", input + "." + signature] {
                    let outcome = try await Self.hello(server, token)
                    #expect(outcome == .closed(4001, "unsigned tokens (alg none) are not accepted"), "\(alg): \(outcome)")
                }
            }
            // No alg at all is malformed.
            let noAlg = JWTMint.signingInput(header: [("typ", "JWT")], claims: Self.claims()) + "." + signature
            #expect(try await Self.hello(server, noAlg).reason.contains("no 'alg'"))
        }
    }

    @Test("HS256 signed with the RSA public key's bytes is refused when a JWKS is configured", arguments: [false, true])
    func hsRsConfusion(withSecret: Bool) async throws {
        let withAlg = try await RSATestKey(kid: "rsa-1")
        let inferred = try await RSATestKey(kid: "rsa-2")  // its JWK has no alg: RS256 comes from kty RSA
        defer { withAlg.remove(); inferred.remove() }
        try await TestServer.with(configure: {
            $0.server.insecureDevAuth = false
            $0.server.jwtSecret = withSecret ? TestServer.secret : nil
            $0.server.jwksJSON = RSATestKey.jwks([withAlg.jwk(), inferred.jwk(withAlgorithm: false)])
        }) { server in
            // The real keys work (so the refusals below are about the algorithm).
            #expect(try await Self.hello(server, JWTMint.rs256(withAlg, claims: Self.claims())) == .welcome)
            #expect(try await Self.hello(server, JWTMint.rs256(inferred, claims: Self.claims())) == .welcome)
            let untrusted = try await RSATestKey(kid: "rsa-1")  // same kid, attacker's key
            defer { untrusted.remove() }
            #expect(try await Self.hello(server, JWTMint.rs256(untrusted, claims: Self.claims())) == .closed(4001, "token signature invalid"))

            for key in [withAlg, inferred] {
                for secret in [Data(key.publicPEM.utf8), key.modulus] {
                    // Naming the RSA key: the key's algorithm is RS256, not the header's HS256.
                    let named = try await JWTMint.hs256(key: secret, header: [("kid", .string(key.kid))], claims: Self.claims())
                    #expect(try await Self.hello(server, named) == .closed(4001, "token alg \"HS256\" is not the algorithm of its key (RS256)"))
                    // Naming no key: only an HS256 secret could verify it, and this is not it.
                    let unnamed = try await JWTMint.hs256(key: secret, claims: Self.claims())
                    #expect(try await Self.hello(server, unnamed)
                            == Outcome.closed(4001, withSecret ? "token signature invalid" : "token alg \"HS256\" matches no configured key"))
                    // The same token as an Authorization header: 401 at the upgrade.
                    let answer = try await RawHTTP.request(port: server.port, Self.upgrade(bearer: named))
                    #expect(answer.hasPrefix("HTTP/1.1 401"), "\(answer.prefix(60))")
                }
            }
            // An unknown kid is not silently replaced by another key.
            let unknown = try await JWTMint.hs256(key: Self.secret, header: [("kid", "nope")], claims: Self.claims())
            #expect(try await Self.hello(server, unknown) == (withSecret ? Outcome.welcome : Outcome.closed(4001, "token kid is not a configured key")))
            if withSecret {
                #expect(try await Self.hello(server, JWTMint.hs256(key: Self.secret, claims: Self.claims())) == .welcome)
            }
        }
    }

    @Test("--jwt-audience and --jwt-issuer: a token without the right aud (string or array) or iss is refused")
    func audienceAndIssuer() async throws {
        let iss: (String, JSONValue) = ("iss", "https://idp.test/")
        try await TestServer.with(configure: {
            $0.server.insecureDevAuth = false
            $0.server.jwtAudience = "syncline-test"
            $0.server.jwtIssuer = "https://idp.test/"
        }) { server in
            func outcome(_ claims: [(String, JSONValue)]) async throws -> Outcome {
                try await Self.hello(server, JWTMint.hs256(key: Self.secret, claims: claims))
            }
            #expect(try await outcome(Self.claims(("aud", "syncline-test"), iss)) == .welcome)
            #expect(try await outcome(Self.claims(("aud", ["other", "syncline-test"]), iss)) == .welcome)
            let wrongAudience = Outcome.closed(4001, "token 'aud' does not include this server's audience \"syncline-test\"")
            #expect(try await outcome(Self.claims(("aud", "other"), iss)) == wrongAudience)
            #expect(try await outcome(Self.claims(("aud", ["a", "b"]), iss)) == wrongAudience)
            #expect(try await outcome(Self.claims(("aud", 7), iss)) == wrongAudience)
            #expect(try await outcome(Self.claims(iss))
                    == .closed(4001, "token has no 'aud'; this server requires the audience \"syncline-test\""))
            #expect(try await outcome(Self.claims(("aud", "syncline-test"), ("iss", "https://evil.test/")))
                    == .closed(4001, "token 'iss' is not this server's issuer \"https://idp.test/\""))
            #expect(try await outcome(Self.claims(("aud", "syncline-test")))
                    == .closed(4001, "token has no 'iss'; this server requires the issuer \"https://idp.test/\""))
            // In-band `auth` meets the same checks: a refresh without the audience ends the session.
            let client = try await TestClient.connect(server)
            client.send(["type": "hello", "client_id": "aud-refresh",
                         "token": try await JWTMint.hs256(key: Self.secret, claims: Self.claims(("aud", "syncline-test"), iss))])
            #expect(try await client.next()["type"] == "welcome")
            client.send(["type": "auth", "token": try await JWTMint.hs256(key: Self.secret, claims: Self.claims(iss))])
            let (code, reason) = try await client.closeFrame()
            #expect(code == 4001)
            #expect(reason.contains("no 'aud'"))
        }
    }

    @Test("exp and nbf are checked with --jwt-leeway-seconds", arguments: [10, 60])
    func leeway(seconds: Int) async throws {
        try await TestServer.with(configure: {
            $0.server.insecureDevAuth = false
            $0.server.jwtLeewaySeconds = Double(seconds)
        }) { server in
            func outcome(_ claims: [(String, JSONValue)]) async throws -> Outcome {
                try await Self.hello(server, JWTMint.hs256(key: Self.secret, claims: claims))
            }
            // 8 s either side of the leeway: minting and the server's check may be seconds apart
            // on a loaded machine, and whole seconds truncate.
            let inside = seconds - 8, outside = seconds + 8
            #expect(try await outcome([("sub", "alice"), ("exp", JWTMint.now(-inside))]) == .welcome)
            #expect(try await outcome([("sub", "alice"), ("exp", JWTMint.now(-outside))]) == .closed(4001, "token expired"))
            #expect(try await outcome(Self.claims(("nbf", JWTMint.now(inside)))) == .welcome)
            #expect(try await outcome(Self.claims(("nbf", JWTMint.now(outside)))) == .closed(4001, "token not yet valid (nbf)"))
            #expect(try await outcome([("sub", "alice"), ("exp", "tomorrow")]) == .closed(4001, "token 'exp' is not a number"))
            #expect(try await outcome(Self.claims(("nbf", "now"))) == .closed(4001, "token 'nbf' is not a number"))
            // A token expired beyond the leeway is refused in the Authorization header too.
            let expired = try await JWTMint.hs256(key: Self.secret, claims: [("sub", "alice"), ("exp", JWTMint.now(-outside))])
            #expect(try await RawHTTP.request(port: server.port, Self.upgrade(bearer: expired)).hasPrefix("HTTP/1.1 401"))
        }
    }

    @Test("an open session ends with 4001 once exp plus the leeway has passed, not before")
    func sessionExpiry() async throws {
        try await TestServer.with(configure: { $0.server.jwtLeewaySeconds = 1 }) { server in
            // Valid for 8 s more: the hello must be checked before it expires, even on a loaded machine.
            let exp = Int(Date().timeIntervalSince1970) + 8
            let client = try await TestClient.connect(server)
            client.send(["type": "hello", "client_id": "expiring",
                         "token": try await JWTMint.hs256(key: Self.secret, claims: [("sub", "alice"), ("exp", .number("\(exp)"))])])
            #expect(try await client.next()["type"] == "welcome")
            let (code, reason) = try await client.closeFrame(timeout: .seconds(30))
            let closedAt = Date().timeIntervalSince1970
            #expect(code == 4001)
            #expect(reason == "token expired")
            // The leeway (1 s) is added to exp; the close may be late but never early.
            #expect(closedAt >= Double(exp + 1) - 0.05, "closed \(Double(exp + 1) - closedAt) s early")
        }
    }

    static func upgrade(bearer token: String) -> String {
        """
        GET /v1/sync HTTP/1.1
        Host: 127.0.0.1
        Upgrade: websocket
        Connection: Upgrade
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==
        Sec-WebSocket-Version: 13
        Authorization: Bearer \(token)


        """
    }
}
