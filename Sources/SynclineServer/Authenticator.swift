import Foundation
import JWTKit
import NIOConcurrencyHelpers
import SynclineProtocol

/// Who a connection is, as its token says: `sub` plus every claim, handed to Postgres verbatim.
public struct Identity: Sendable, Equatable {
    public var sub: String
    /// The token's payload as a JSON object text (set as `request.jwt.claims`).
    public var claims: String
    public var expiresAt: Date?
}

/// Why a token was refused. Never carries key material or the token itself.
public struct AuthenticationError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// Verifies JWTs: HS256 with a shared secret, RS/PS/ES/EdDSA keys from a JWKS, and — only when
/// explicitly enabled — unsigned development tokens.
///
/// The algorithm comes from the key, never from the token: a token's `alg` must equal the
/// algorithm of the key it names (`kid`, else the default key), so an HS256 token "signed" with an
/// RSA public key's bytes is refused. `exp` and `nbf` are checked with `leeway` seconds of clock
/// skew; `aud` and `iss` when configured. The JWKS can be replaced while running (`reloadJWKS`,
/// on SIGHUP): verifications in flight finish with the keys they started with.
public final class Authenticator: Sendable {
    /// Clock skew tolerated on `exp` and `nbf`; the connection's expiry timer uses it too.
    public let leeway: TimeInterval
    /// When set, a token's `aud` (a string, or an array of strings) must contain it.
    public let audience: String?
    /// When set, a token's `iss` must equal it.
    public let issuer: String?

    private let keys: NIOLockedValueBox<VerificationKeys?>
    private let hmacSecret: String?
    private let allowUnsigned: Bool

    public init(hmacSecret: String?, jwksJSON: String?, allowUnsigned: Bool,
                leeway: TimeInterval = 60, audience: String? = nil, issuer: String? = nil) async throws {
        if let hmacSecret, hmacSecret.utf8.count < 32 {
            throw AuthenticationError(message: "the JWT secret must be at least 32 bytes (HS256)")
        }
        guard leeway >= 0, leeway <= 3600 else {
            throw AuthenticationError(message: "the JWT leeway must be 0–3600 seconds")
        }
        self.hmacSecret = hmacSecret
        self.allowUnsigned = allowUnsigned
        self.leeway = leeway
        self.audience = audience.flatMap { $0.isEmpty ? nil : $0 }
        self.issuer = issuer.flatMap { $0.isEmpty ? nil : $0 }
        keys = NIOLockedValueBox(try await VerificationKeys.make(hmacSecret: hmacSecret, jwksJSON: jwksJSON))
    }

    /// Unsigned development tokens only, made without `async`: for `FanoutCostHarness`, which
    /// runs without Swift concurrency (valgrind 3.19 cannot run its thread pool).
    init(unsignedOnly: Void) {
        keys = NIOLockedValueBox(nil)
        hmacSecret = nil
        allowUnsigned = true
        leeway = 60
        audience = nil
        issuer = nil
    }

    /// Whether any token at all can be accepted.
    public var acceptsTokens: Bool { keys.withLockedValue { $0 != nil } || allowUnsigned }

    /// The key ids of the current JWKS (for logs and tests; never key material).
    public var keyIDs: [String] { keys.withLockedValue { $0?.kids.sorted() ?? [] } }

    /// Replaces the JWKS keys (the HS256 secret stays). A JWKS that does not load throws and
    /// leaves the current keys in place.
    public func reloadJWKS(_ json: String) async throws {
        let fresh = try await VerificationKeys.make(hmacSecret: hmacSecret, jwksJSON: json)
        keys.withLockedValue { $0 = fresh }
    }

    public func authenticate(_ token: String) async throws(AuthenticationError) -> Identity {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard token.utf8.count <= 16 << 10, parts.count == 3,
              let headerData = Self.base64URLDecode(parts[0]),
              let header = try? JSONParser.parse(Array(headerData)), case .object = header,
              let payloadData = Self.base64URLDecode(parts[1]),
              let payloadText = String(data: payloadData, encoding: .utf8),
              let payload = try? JSONParser.parse(payloadText), case .object = payload
        else { throw AuthenticationError(message: "malformed token") }
        guard let algorithm = header["alg"]?.stringValue else {
            throw AuthenticationError(message: "malformed token: the header has no 'alg'")
        }

        // "none" in any spelling is the unsigned development token (RFC 7518 names it "none";
        // other spellings are a known way around case-sensitive checks).
        if algorithm.lowercased() == "none" {
            guard allowUnsigned else { throw AuthenticationError(message: "unsigned tokens (alg none) are not accepted") }
            guard parts[2].isEmpty else { throw AuthenticationError(message: "malformed token") }
        } else {
            guard let keys = keys.withLockedValue({ $0 }) else {
                throw AuthenticationError(message: "no signing key is configured")
            }
            try await keys.verify(token, algorithm: algorithm, kid: header["kid"])
        }
        guard let sub = payload["sub"]?.stringValue, !sub.isEmpty, sub.utf8.count <= 256 else {
            throw AuthenticationError(message: "token has no 'sub'")
        }
        let expiresAt = try checkTimes(payload, now: Date())
        try checkAudienceAndIssuer(payload)
        return Identity(sub: sub, claims: payload.jsonText, expiresAt: expiresAt)
    }

    /// `exp` and `nbf` (NumericDate, RFC 7519 §4.1.4–5) with `leeway`; returns the expiry.
    private func checkTimes(_ payload: JSONValue, now: Date) throws(AuthenticationError) -> Date? {
        func seconds(_ name: String) throws(AuthenticationError) -> Date? {
            guard let value = payload[name] else { return nil }
            guard case .number(let text) = value, let seconds = Double(text), seconds.isFinite else {
                throw AuthenticationError(message: "token '\(name)' is not a number")
            }
            return Date(timeIntervalSince1970: seconds)
        }
        let expiresAt = try seconds("exp")
        if let expiresAt, expiresAt.addingTimeInterval(leeway) <= now {
            throw AuthenticationError(message: "token expired")
        }
        if let notBefore = try seconds("nbf"), notBefore.addingTimeInterval(-leeway) > now {
            throw AuthenticationError(message: "token not yet valid (nbf)")
        }
        return expiresAt
    }

    private func checkAudienceAndIssuer(_ payload: JSONValue) throws(AuthenticationError) {
        if let audience {
            let audiences: [String]
            switch payload["aud"] {
            case .string(let one)?: audiences = [one]
            case .array(let many)?: audiences = many.compactMap(\.stringValue)
            case nil: throw AuthenticationError(message: "token has no 'aud'; this server requires the audience \(JSONValue.quoted(audience))")
            default: audiences = []
            }
            guard audiences.contains(audience) else {
                throw AuthenticationError(message: "token 'aud' does not include this server's audience \(JSONValue.quoted(audience))")
            }
        }
        if let issuer {
            guard let iss = payload["iss"] else {
                throw AuthenticationError(message: "token has no 'iss'; this server requires the issuer \(JSONValue.quoted(issuer))")
            }
            guard iss.stringValue == issuer else {
                throw AuthenticationError(message: "token 'iss' is not this server's issuer \(JSONValue.quoted(issuer))")
            }
        }
    }

    /// Signs an HS256 token (the demo's `/demo/token`).
    public func sign(sub: String, lifetime: TimeInterval = 3600) async throws -> String {
        guard let hmac = keys.withLockedValue({ $0?.hmac }) else {
            throw AuthenticationError(message: "no HS256 secret to sign with")
        }
        return try await hmac.collection.sign(
            DemoClaims(sub: SubjectClaim(value: sub), exp: ExpirationClaim(value: Date().addingTimeInterval(lifetime))))
    }

    /// An unsigned development token for `sub` (accepted only with `--insecure-dev-auth`).
    public static func unsignedToken(sub: String, extraClaims: [(String, JSONValue)] = []) -> String {
        let header = base64URLEncode(Data(#"{"alg":"none","typ":"JWT"}"#.utf8))
        let payload = base64URLEncode(Data(JSONValue.object([("sub", .string(sub))] + extraClaims).jsonText.utf8))
        return header + "." + payload + "."
    }

    static func base64URLDecode(_ part: Substring) -> Data? {
        var s = part.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s)
    }

    static func base64URLEncode(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}

/// The claims jwt-kit decodes while verifying the signature; times, `aud` and `iss` are checked by
/// `Authenticator` (with leeway, and with messages that say which claim failed).
struct VerifiedClaims: JWTPayload {
    var sub: SubjectClaim?
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

private struct DemoClaims: JWTPayload {
    var sub: SubjectClaim
    var exp: ExpirationClaim
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}
