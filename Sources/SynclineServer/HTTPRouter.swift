import Foundation
import NIOCore
import NIOHTTP1
import Prometheus
import SynclineProtocol

/// What the upgrade check decided for one connection, read by the router when the upgrade is
/// refused (so the refusal carries the right status) and by the WebSocket handler when it is not.
final class UpgradeDecision {
    var refusal: (HTTPResponseStatus, String, String)?
    var identity: Identity?
    var deflate: PerMessageDeflateParameters?
}

/// The plain HTTP routes beside `/v1/sync`: health, readiness, metrics, the demo dashboard and demo
/// tokens. A small NIOHTTP1 handler rather than a framework: it shares the port with the WebSocket
/// upgrade, which stays on the hot path (see docs/adr/0002).
final class HTTPRouter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let environment: SyncEnvironment
    private let decision: NIOLoopBound<UpgradeDecision>
    private let dashboard: ByteBuffer?
    private var head: HTTPRequestHead?
    private var bodyBytes = 0
    /// Whether the current request lets the connection stay open (HTTP/1.1 default, or
    /// HTTP/1.0 with `keep-alive`); `Connection: close` is honoured after the response.
    private var keepAlive = true

    init(environment: SyncEnvironment, decision: NIOLoopBound<UpgradeDecision>, dashboard: ByteBuffer?) {
        self.environment = environment
        self.decision = decision
        self.dashboard = dashboard
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            keepAlive = head.isKeepAlive
            bodyBytes = 0
        case .body(let body):
            bodyBytes += body.readableBytes
            if bodyBytes > 64 << 10 {
                respond(context, .payloadTooLarge, json: error("too_large", "request bodies are limited to 64 KiB"), close: true)
                head = nil
            }
        case .end:
            guard let head else { return }
            self.head = nil
            route(context, head)
        }
    }

    private func error(_ code: String, _ message: String) -> String {
        "{\"error\":\(JSONValue.quoted(code)),\"message\":\(JSONValue.quoted(message))}"
    }

    private func route(_ context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        let (path, query) = Self.split(head.uri)
        guard head.method == .GET || head.method == .HEAD else {
            return respond(context, .methodNotAllowed, json: error("method_not_allowed", "only GET is served"))
        }
        switch path {
        case "/v1/sync":
            if let (status, code, message) = decision.value.refusal {
                decision.value.refusal = nil
                respond(context, status, json: error(code, message), close: true)
            } else {
                respond(context, .upgradeRequired, json: error("upgrade_required", "/v1/sync speaks WebSocket (RFC 6455), subprotocol syncline.v1"),
                        extraHeaders: [("Upgrade", "websocket")])
            }
        case "/healthz":
            respond(context, .ok, json: "{\"status\":\"ok\"}")
        case "/readyz":
            if environment.hub.isListening {
                respond(context, .ok, json: "{\"status\":\"ready\"}")
            } else {
                respond(context, .serviceUnavailable, json: "{\"status\":\"waiting for the change tail's LISTEN connection\"}")
            }
        case "/metrics":
            var out: [UInt8] = []
            SynclineMetrics.registry.emit(into: &out)
            respond(context, .ok, body: context.channel.allocator.buffer(bytes: out), contentType: "text/plain; version=0.0.4")
        case "/":
            if let dashboard {
                respond(context, .ok, body: dashboard, contentType: "text/html; charset=utf-8")
            } else {
                respond(context, .ok, json: "{\"server\":\(JSONValue.quoted(SynclineServer.serverName)),\"endpoint\":\"/v1/sync\"}")
            }
        case "/demo/token" where environment.configuration.demo:
            let sub = query["sub"] ?? "alice"
            guard (1...64).contains(sub.utf8.count), sub.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }) else {
                return respond(context, .badRequest, json: error("bad_request", "sub must be 1–64 characters of [A-Za-z0-9_-]"))
            }
            let authenticator = environment.authenticator
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            let unsignedAllowed = environment.configuration.insecureDevAuth
            Task {
                let token = try? await authenticator.sign(sub: sub)
                loop.execute {
                    let (router, context) = bound.value
                    if let token = token ?? (unsignedAllowed ? Authenticator.unsignedToken(sub: sub) : nil) {
                        router.respond(context, .ok, json: "{\"token\":\(JSONValue.quoted(token)),\"sub\":\(JSONValue.quoted(sub))}")
                    } else {
                        router.respond(context, .serviceUnavailable,
                                       json: router.error("no_signing_key", "demo tokens need an HS256 secret (--jwt-secret) or --insecure-dev-auth"))
                    }
                }
            }
        default:
            respond(context, .notFound, json: error("not_found", "no route \(path)"))
        }
    }

    private func respond(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, json: String, close: Bool = false,
                         extraHeaders: [(String, String)] = []) {
        respond(context, status, body: context.channel.allocator.buffer(string: json + "\n"), contentType: "application/json",
                close: close, extraHeaders: extraHeaders)
    }

    private func respond(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, body: ByteBuffer, contentType: String,
                         close: Bool = false, extraHeaders: [(String, String)] = []) {
        let close = close || !keepAlive
        var headers = HTTPHeaders([("Content-Type", contentType), ("Content-Length", "\(body.readableBytes)"),
                                   ("Cache-Control", "no-store")])
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        if close { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if close {
            done.whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
        }
    }

    static func split(_ uri: String) -> (String, [String: String]) {
        guard let q = uri.firstIndex(of: "?") else { return (uri, [:]) }
        var query: [String: String] = [:]
        for pair in uri[uri.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            let key = String(kv[0]).removingPercentEncoding ?? String(kv[0])
            let value = kv.count > 1 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""
            query[key] = value
        }
        return (String(uri[..<q]), query)
    }
}

/// The process's Prometheus registry; the executable bootstraps swift-metrics with it.
public enum SynclineMetrics {
    public static let registry = PrometheusCollectorRegistry()
}
