import Foundation
import JWTKit
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

/// Verifies JWTs: HS256 with a shared secret, RS256/ES256 from a JWKS, and — only when explicitly
/// enabled — unsigned development tokens. Clock skew up to 60 s is tolerated.
public final class Authenticator: Sendable {
    public static let leeway: TimeInterval = 60

    private let keys: JWTKeyCollection?
    private let allowUnsigned: Bool
    private let canSign: Bool

    public init(hmacSecret: String?, jwksJSON: String?, allowUnsigned: Bool) async throws {
        if hmacSecret == nil && jwksJSON == nil {
            keys = nil
        } else {
            let collection = JWTKeyCollection()
            if let hmacSecret {
                guard hmacSecret.utf8.count >= 32 else {
                    throw AuthenticationError(message: "the JWT secret must be at least 32 bytes (HS256)")
                }
                await collection.add(hmac: HMACKey(from: hmacSecret), digestAlgorithm: .sha256)
            }
            if let jwksJSON {
                try await collection.add(jwksJSON: jwksJSON)
            }
            keys = collection
        }
        self.allowUnsigned = allowUnsigned
        self.canSign = hmacSecret != nil
    }

    /// Unsigned development tokens only, made without `async`: for `FanoutCostHarness`, which
    /// runs without Swift concurrency (valgrind 3.19 cannot run its thread pool).
    init(unsignedOnly: Void) {
        keys = nil
        allowUnsigned = true
        canSign = false
    }

    /// Whether any token at all can be accepted.
    public var acceptsTokens: Bool { keys != nil || allowUnsigned }

    public func authenticate(_ token: String) async throws(AuthenticationError) -> Identity {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard token.utf8.count <= 16 << 10, parts.count == 3,
              let headerData = Self.base64URLDecode(parts[0]),
              case .object? = try? JSONParser.parse(Array(headerData)),
              let header = try? JSONParser.parse(Array(headerData)),
              let payloadData = Self.base64URLDecode(parts[1]),
              let payloadText = String(data: payloadData, encoding: .utf8),
              let payload = try? JSONParser.parse(payloadText), case .object = payload
        else { throw AuthenticationError(message: "malformed token") }

        if header["alg"]?.stringValue == "none" {
            guard allowUnsigned else { throw AuthenticationError(message: "unsigned tokens are not accepted") }
            guard parts[2].isEmpty else { throw AuthenticationError(message: "malformed token") }
        } else {
            guard let keys else { throw AuthenticationError(message: "no signing key is configured") }
            do {
                _ = try await keys.verify(token, as: VerifiedClaims.self)
            } catch let error as AuthenticationError {
                throw error
            } catch {
                throw AuthenticationError(message: "token signature or claims invalid")
            }
        }
        guard let sub = payload["sub"]?.stringValue, !sub.isEmpty, sub.utf8.count <= 256 else {
            throw AuthenticationError(message: "token has no 'sub'")
        }
        let now = Date()
        var expiresAt: Date?
        if let exp = payload["exp"] {
            guard case .number(let text) = exp, let seconds = Double(text) else {
                throw AuthenticationError(message: "token 'exp' is not a number")
            }
            expiresAt = Date(timeIntervalSince1970: seconds)
            guard expiresAt!.addingTimeInterval(Self.leeway) > now else {
                throw AuthenticationError(message: "token expired")
            }
        }
        if case .number(let text)? = payload["nbf"], let seconds = Double(text),
           Date(timeIntervalSince1970: seconds).addingTimeInterval(-Self.leeway) > now {
            throw AuthenticationError(message: "token not yet valid")
        }
        return Identity(sub: sub, claims: payload.jsonText, expiresAt: expiresAt)
    }

    /// Signs an HS256 token (the demo's `/demo/token`).
    public func sign(sub: String, lifetime: TimeInterval = 3600) async throws -> String {
        guard let keys, canSign else { throw AuthenticationError(message: "no HS256 secret to sign with") }
        return try await keys.sign(DemoClaims(sub: SubjectClaim(value: sub),
                                              exp: ExpirationClaim(value: Date().addingTimeInterval(lifetime))))
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

/// The claims jwt-kit checks while verifying the signature; expiry is checked by us with leeway.
private struct VerifiedClaims: JWTPayload {
    var sub: SubjectClaim?
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

private struct DemoClaims: JWTPayload {
    var sub: SubjectClaim
    var exp: ExpirationClaim
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}
