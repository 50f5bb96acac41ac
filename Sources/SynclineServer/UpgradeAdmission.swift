import Foundation
import NIOCore
import NIOHTTP1

/// The checks of a `/v1/sync` upgrade that come before the subprotocol and the token: the browser's
/// `Origin` against `--allowed-origins`, then the client address's upgrade rate and open connections
/// (`ConnectionLimits`). The first refusal wins; nothing is taken when one is refused.
enum UpgradeAdmission {
    struct Refusal {
        var status: HTTPResponseStatus
        var code: String
        var message: String
        var headers: [(String, String)] = []
    }

    static func check(_ channel: any Channel, _ head: HTTPRequestHead, environment: SyncEnvironment, proxied: IPAddress?) -> Refusal? {
        let configuration = environment.configuration
        if let allowed = configuration.allowedOrigins, let origin = head.headers["Origin"].first,
           !isAllowed(origin: origin, allowed) {
            SynclineLimitMetrics.refused(.origin)
            return Refusal(status: .forbidden, code: "forbidden_origin", message: "this server does not accept WebSocket upgrades from this Origin")
        }
        let address = ClientAddress.resolve(peer: IPAddress(channel.remoteAddress), proxied: proxied, headers: head.headers,
                                            trusted: configuration.trustedProxies)
        guard let address else { return nil }  // a Unix socket: nothing to count by
        switch environment.limits.admitUpgrade(address, channel: channel) {
        case .admitted:
            return nil
        case .refused(let kind, let retryAfter):
            let message = switch kind {
            case .addressUpgradeRate: "too many WebSocket upgrades from this address; retry later"
            case .addressConnections: "too many open connections from this address"
            default: "the server is tracking too many addresses; retry later"
            }
            return Refusal(status: .tooManyRequests, code: "too_many_requests", message: message,
                           headers: [("Retry-After", "\(retryAfter)")])
        }
    }

    /// `Origin` is `scheme://host[:port]` (or `null`); compared case-insensitively, without a
    /// trailing slash. An allow-list entry `*` accepts any origin.
    static func isAllowed(origin: String, _ allowed: [String]) -> Bool {
        let normalized = normalize(origin)
        return allowed.contains { $0 == "*" || normalize($0) == normalized }
    }

    static func normalize(_ origin: String) -> String {
        var text = origin.trimmingCharacters(in: .whitespaces).lowercased()
        while text.hasSuffix("/") { text.removeLast() }
        return text
    }
}
