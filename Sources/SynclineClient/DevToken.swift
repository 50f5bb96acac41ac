import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import SynclineProtocol

/// Tokens for development servers.
public enum DevToken {
    /// An unsigned development JWT (`alg: none`) for `sub`, valid for `lifetime` seconds. Accepted
    /// only by a server started with `--insecure-dev-auth`.
    public static func unsigned(sub: String, lifetime: TimeInterval = 3600) -> String {
        func b64(_ text: String) -> String {
            Data(text.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-")
                .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        }
        let exp = Int(Date().timeIntervalSince1970 + lifetime)
        return b64("{\"alg\":\"none\",\"typ\":\"JWT\"}") + "." + b64("{\"sub\":\(JSONValue.quoted(sub)),\"exp\":\(exp)}") + "."
    }

    /// A token from the demo server's `GET /demo/token?sub=…` (`serve --demo`); fetched anew on each
    /// call, so a restarted demo server (new signing secret) is handled by the client's 4001 rule.
    public static func fromDemoServer(_ tokenURL: String, sub: String) async throws -> String {
        guard var components = URLComponents(string: tokenURL) else { throw DevTokenError("bad token URL \(tokenURL)") }
        components.queryItems = [URLQueryItem(name: "sub", value: sub)]
        guard let url = components.url else { throw DevTokenError("bad token URL \(tokenURL)") }
        let (data, _) = try await URLSession.shared.data(from: url)
        guard let token = (try? JSONParser.parse(Array(data)))?["token"]?.stringValue else {
            throw DevTokenError("no token in the answer of \(url)")
        }
        return token
    }
}

/// A development token could not be had.
public struct DevTokenError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public var description: String
    init(_ description: String) { self.description = description }
}
