import Foundation
import SynclineProtocol

/// Tokens made outside the server, the way an identity provider would: the header and claims a
/// test chooses, signed by the real `openssl` (HMAC-SHA256, RSA-SHA256). Nothing here shares code
/// with the verifier under test.
enum JWTMint {
    static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// `header.payload` of a token, before its signature.
    static func signingInput(header: [(String, JSONValue)], claims: [(String, JSONValue)]) -> String {
        base64URL(Data(JSONValue.object(header).jsonText.utf8)) + "." + base64URL(Data(JSONValue.object(claims).jsonText.utf8))
    }

    /// An HS256 token with `key` (any bytes) as the secret.
    static func hs256(key: Data, header: [(String, JSONValue)] = [], claims: [(String, JSONValue)]) async throws -> String {
        let input = signingInput(header: [("alg", "HS256"), ("typ", "JWT")] + header, claims: claims)
        let hex = key.map { String(format: "%02x", $0) }.joined()
        let mac = try await openssl(["dgst", "-sha256", "-mac", "HMAC", "-macopt", "hexkey:\(hex)", "-binary"], input: Data(input.utf8))
        return input + "." + base64URL(mac)
    }

    /// An RS256 token signed with `key`.
    static func rs256(_ key: RSATestKey, header: [(String, JSONValue)] = [], claims: [(String, JSONValue)]) async throws -> String {
        let input = signingInput(header: [("alg", "RS256"), ("typ", "JWT"), ("kid", .string(key.kid))] + header, claims: claims)
        let signature = try await openssl(["dgst", "-sha256", "-sign", key.privateKeyPath, "-binary"], input: Data(input.utf8))
        return input + "." + base64URL(signature)
    }

    static func now(_ offset: Int = 0) -> JSONValue { .number("\(Int(Date().timeIntervalSince1970) + offset)") }

    /// Runs /usr/bin/openssl (through `Spawn`, not Foundation's `Process`, and waited for off the
    /// cooperative pool); returns its stdout.
    @discardableResult
    static func openssl(_ arguments: [String], input: Data = Data()) async throws -> Data {
        let (status, out, err) = try await Thread.run { try Spawn.run("/usr/bin/openssl", arguments, input: Array(input)) }
        guard status == 0 else {
            throw TestFailure("openssl \(arguments.first ?? "") failed: \(String(decoding: err, as: UTF8.self))")
        }
        return Data(out)
    }
}

/// A fresh 2048-bit RSA key pair in a temporary file, with its public half as a JWK.
struct RSATestKey: Sendable {
    let kid: String
    let privateKeyPath: String
    /// The public key as PEM text (what an HS/RS confusion attacker uses as the HMAC secret).
    let publicPEM: String
    /// The modulus, big-endian bytes.
    let modulus: Data

    init(kid: String) async throws {
        self.kid = kid
        privateKeyPath = NSTemporaryDirectory() + "syncline-rsa-\(UUID().uuidString).pem"
        try await JWTMint.openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", privateKeyPath])
        publicPEM = String(decoding: try await JWTMint.openssl(["pkey", "-in", privateKeyPath, "-pubout"]), as: UTF8.self)
        let text = String(decoding: try await JWTMint.openssl(["rsa", "-in", privateKeyPath, "-noout", "-modulus"]), as: UTF8.self)
        let hex = Array(text.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "Modulus=", with: ""))
        modulus = Data(stride(from: 0, to: hex.count, by: 2).map { UInt8(String(hex[$0..<$0 + 2]), radix: 16)! })
    }

    /// The public JWK; `alg` left out when `withAlgorithm` is false (the server infers RS256).
    func jwk(withAlgorithm: Bool = true) -> JSONValue {
        var members: [(String, JSONValue)] = [("kty", "RSA"), ("kid", .string(kid)), ("use", "sig"),
                                              ("n", .string(JWTMint.base64URL(modulus))), ("e", "AQAB")]
        if withAlgorithm { members.append(("alg", "RS256")) }
        return .object(members)
    }

    static func jwks(_ keys: [JSONValue]) -> String { JSONValue.object([("keys", .array(keys))]).jsonText }

    func remove() { try? FileManager.default.removeItem(atPath: privateKeyPath) }
}
