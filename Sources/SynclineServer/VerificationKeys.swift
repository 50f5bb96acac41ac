import Foundation
import JWTKit
import SynclineProtocol

/// The keys tokens are verified with: the HS256 secret (`--jwt-secret`) and the keys of a JWKS
/// (`--jwks-file`), each with the one algorithm it verifies.
///
/// Each key sits in its own `JWTKeyCollection`, so jwt-kit can never fall back from the key a
/// token names to another one, and a key is used only for tokens whose `alg` is that key's own
/// algorithm (RFC 8725 §3.1: the algorithm comes from the key). A JWK without `alg` gets the
/// algorithm its type implies (RSA → RS256, EC → by curve, OKP → EdDSA) when it is loaded, not
/// when a token arrives.
struct VerificationKeys: Sendable {
    struct Key: Sendable {
        let kid: String?
        let algorithm: String
        let collection: JWTKeyCollection
    }

    /// Most JWKS keys accepted in one file (key rotation needs two or three).
    static let maximumKeys = 64

    let hmac: Key?
    let jwks: [String: Key]
    /// JWKS keys in file order: a token without `kid` tries those of its algorithm in this order.
    let ordered: [Key]

    var kids: Set<String> { Set(jwks.keys) }

    /// nil when neither a secret nor a JWKS is given.
    static func make(hmacSecret: String?, jwksJSON: String?) async throws -> VerificationKeys? {
        guard hmacSecret != nil || jwksJSON != nil else { return nil }
        var hmac: Key?
        if let hmacSecret {
            let collection = JWTKeyCollection()
            await collection.add(hmac: HMACKey(from: hmacSecret), digestAlgorithm: .sha256)
            hmac = Key(kid: nil, algorithm: "HS256", collection: collection)
        }
        var jwks: [String: Key] = [:]
        var ordered: [Key] = []
        if let jwksJSON {
            for (kid, jwk) in try parse(jwksJSON) {
                guard jwks[kid] == nil else { throw AuthenticationError(message: "the JWKS has two keys with kid \(JSONValue.quoted(kid))") }
                let collection = JWTKeyCollection()
                let algorithm: String
                do {
                    try await collection.add(jwksJSON: JSONValue.object([("keys", .array([jwk]))]).jsonText)
                    // Builds the key now: a key that cannot verify is refused at load, not per token.
                    algorithm = try await collection.getKey(for: JWKIdentifier(string: kid)).name
                } catch {
                    // jwt-kit's reasons name what is wrong with the key, not its values.
                    throw AuthenticationError(message: "the JWKS key \(JSONValue.quoted(kid)) does not load: \(String(describing: error).prefix(200))")
                }
                guard algorithm == jwk["alg"]?.stringValue else {
                    throw AuthenticationError(message: "the JWKS key \(JSONValue.quoted(kid)) has an unsupported alg")
                }
                let key = Key(kid: kid, algorithm: algorithm, collection: collection)
                jwks[kid] = key
                ordered.append(key)
            }
        }
        return VerificationKeys(hmac: hmac, jwks: jwks, ordered: ordered)
    }

    /// The signing keys of a JWKS, each with its `alg` made explicit. Encryption keys (`use: enc`)
    /// are skipped; symmetric keys (`kty: oct`) are refused: the HS256 secret is `--jwt-secret`.
    static func parse(_ json: String) throws -> [(String, JSONValue)] {
        guard let document = try? JSONParser.parse(json), case .array(let keys)? = document["keys"] else {
            throw AuthenticationError(message: "the JWKS is not a JSON object with a 'keys' array")
        }
        guard keys.count <= maximumKeys else {
            throw AuthenticationError(message: "the JWKS has more than \(maximumKeys) keys")
        }
        var result: [(String, JSONValue)] = []
        for key in keys {
            guard case .object(var members) = key else { throw AuthenticationError(message: "a JWKS key is not an object") }
            guard let kid = key["kid"]?.stringValue, !kid.isEmpty, kid.utf8.count <= 256 else {
                throw AuthenticationError(message: "every JWKS key needs a 'kid'")
            }
            if key["use"]?.stringValue == "enc" { continue }
            let kty = key["kty"]?.stringValue ?? ""
            let implied: String?
            switch kty {
            case "RSA": implied = "RS256"
            case "EC":
                switch key["crv"]?.stringValue {
                case "P-256": implied = "ES256"
                case "P-384": implied = "ES384"
                case "P-521": implied = "ES512"
                default: implied = nil
                }
            case "OKP": implied = "EdDSA"
            case "oct": throw AuthenticationError(message: "the JWKS key \(JSONValue.quoted(kid)) is symmetric (kty oct): give an HS256 secret with --jwt-secret instead")
            default: implied = nil
            }
            let algorithm = key["alg"]?.stringValue ?? implied
            guard let algorithm, let implied, Self.family(algorithm) == Self.family(implied) else {
                throw AuthenticationError(message: "the JWKS key \(JSONValue.quoted(kid)) has no usable kty/alg (kty \(JSONValue.quoted(kty)))")
            }
            if key["alg"] == nil { members.append(("alg", .string(algorithm))) }
            result.append((kid, .object(members)))
        }
        return result
    }

    /// RS and PS share RSA keys; ES and EdDSA each their own kind.
    private static func family(_ algorithm: String) -> String {
        algorithm.hasPrefix("PS") ? "RS" : String(algorithm.prefix(2))
    }

    /// Verifies the signature with the key the token names (`kid`) or, without `kid`, with the
    /// configured keys whose algorithm is the token's `alg`.
    func verify(_ token: String, algorithm: String, kid: JSONValue?) async throws(AuthenticationError) {
        let candidates: [Key]
        switch kid {
        case nil:
            candidates = ([hmac].compactMap { $0 } + ordered).filter { $0.algorithm == algorithm }
        case .string(let kid)?:
            if let key = jwks[kid] {
                guard key.algorithm == algorithm else {
                    throw AuthenticationError(message: "token alg \(JSONValue.quoted(algorithm)) is not the algorithm of its key (\(key.algorithm))")
                }
                candidates = [key]
            } else if let hmac, hmac.algorithm == algorithm {
                candidates = [hmac]  // HS256 tokens may carry a kid of their issuer's own
            } else {
                throw AuthenticationError(message: "token kid is not a configured key")
            }
        default:
            throw AuthenticationError(message: "malformed token: 'kid' is not a string")
        }
        guard !candidates.isEmpty else {
            throw AuthenticationError(message: "token alg \(JSONValue.quoted(String(algorithm.prefix(16)))) matches no configured key")
        }
        for key in candidates {
            if (try? await key.collection.verify(token, as: VerifiedClaims.self)) != nil { return }
        }
        throw AuthenticationError(message: "token signature invalid")
    }
}
