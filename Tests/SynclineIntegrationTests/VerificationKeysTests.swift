import Foundation
import SynclineProtocol
@testable import SynclineServer
import Testing

/// Loading a JWKS (no server, no I/O beyond making an RSA key with openssl): every key gets its
/// one algorithm at load time, and a file that is not usable is refused with a reason.
@Suite("JWKS loading")
struct VerificationKeysTests {
    /// RFC 7517, appendix A.1: a P-256 public key, here without `alg`.
    static let ecKey: JSONValue = [
        "kty": "EC", "crv": "P-256", "kid": "ec-1",
        "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
    ]

    static func refusal(_ keys: [JSONValue]) async -> String {
        await refusal(RSATestKey.jwks(keys))
    }

    static func refusal(_ json: String) async -> String {
        do {
            _ = try await VerificationKeys.make(hmacSecret: nil, jwksJSON: json)
            return "loaded"
        } catch {
            return "\(error)"
        }
    }

    @Test("a key without alg gets the algorithm its type implies; encryption keys are skipped")
    func inferredAlgorithms() async throws {
        let rsa = try await RSATestKey(kid: "rsa-1")
        defer { rsa.remove() }
        let encryption: JSONValue = ["kty": "RSA", "kid": "enc-1", "use": "enc", "n": "AQAB", "e": "AQAB"]
        let keys = try #require(try await VerificationKeys.make(
            hmacSecret: nil, jwksJSON: RSATestKey.jwks([Self.ecKey, rsa.jwk(withAlgorithm: false), encryption])))
        #expect(keys.jwks["ec-1"]?.algorithm == "ES256")
        #expect(keys.jwks["rsa-1"]?.algorithm == "RS256")
        #expect(keys.kids == ["ec-1", "rsa-1"])
        #expect(keys.hmac == nil)
    }

    @Test("unusable files are refused, saying why")
    func refusals() async throws {
        #expect(await Self.refusal("not json") == "the JWKS is not a JSON object with a 'keys' array")
        #expect(await Self.refusal(#"{"keys": {}}"#) == "the JWKS is not a JSON object with a 'keys' array")
        #expect(await Self.refusal([["kty": "oct", "kid": "s", "k": "c2VjcmV0"]]).contains("is symmetric (kty oct)"))
        #expect(await Self.refusal([["kty": "EC", "crv": "P-256", "x": "a", "y": "b"]]) == "every JWKS key needs a 'kid'")
        #expect(await Self.refusal([Self.ecKey, Self.ecKey]) == "the JWKS has two keys with kid \"ec-1\"")
        var wrongAlgorithm = Self.ecKey
        if case .object(var members) = wrongAlgorithm { members.append(("alg", "RS256")); wrongAlgorithm = .object(members) }
        #expect(await Self.refusal([wrongAlgorithm]).contains("has no usable kty/alg"))
        var hmacAlgorithm = Self.ecKey
        if case .object(var members) = hmacAlgorithm { members.append(("alg", "HS256")); hmacAlgorithm = .object(members) }
        #expect(await Self.refusal([hmacAlgorithm]).contains("has no usable kty/alg"))
        #expect(await Self.refusal([["kty": "RSA", "kid": "bad", "n": "", "e": ""]]).hasPrefix("the JWKS key \"bad\" does not load"))
        let many = (0...VerificationKeys.maximumKeys).map { n -> JSONValue in
            guard case .object(var members) = Self.ecKey else { return Self.ecKey }
            members.removeAll { $0.0 == "kid" }
            return .object(members + [("kid", .string("k\(n)"))])
        }
        #expect(await Self.refusal(many) == "the JWKS has more than 64 keys")
    }

    @Test("a reload that fails keeps the keys in use")
    func failedReloadKeepsKeys() async throws {
        let authenticator = try await Authenticator(hmacSecret: nil, jwksJSON: RSATestKey.jwks([Self.ecKey]), allowUnsigned: false)
        await #expect(throws: AuthenticationError.self) { try await authenticator.reloadJWKS("{}") }
        #expect(authenticator.keyIDs == ["ec-1"])
        var renamed = Self.ecKey
        if case .object(var members) = renamed { members.removeAll { $0.0 == "kid" }; members.append(("kid", "ec-2")); renamed = .object(members) }
        try await authenticator.reloadJWKS(RSATestKey.jwks([renamed]))
        #expect(authenticator.keyIDs == ["ec-2"])
    }
}
