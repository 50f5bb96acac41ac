import Foundation
import NIOCore
import NIOHTTP1
import Prometheus
import SynclineProtocol
import SynclineWebSocket

/// What the upgrade check decided for one connection, read by the router when the upgrade is
/// refused (so the refusal carries the right status) and by the WebSocket handler when it is not.
final class UpgradeDecision {
    var refusal: (HTTPResponseStatus, String, String)?
    /// Headers of the refusal (`Retry-After`).
    var refusalHeaders: [(String, String)] = []
    /// The client address a trusted proxy's PROXY v2 header gave (`ProxyProtocolHandler`).
    var proxiedAddress: IPAddress?
    var identity: Identity?
    var deflate: PerMessageDeflateParameters?
}

/// The plain HTTP routes beside `/v1/sync`: health, readiness, metrics, demo tokens, and the
/// static files (`StaticAssets`: the client library, the demo dashboard, `--static-dir`). A small
/// NIOHTTP1 handler rather than a framework: it shares the port with the WebSocket upgrade, which
/// stays on the hot path (see docs/adr/0002). NIO's pipeline handler holds a pipelined request back
/// until the previous response has ended, so the per-request fields stay right across the
/// asynchronous answers (demo tokens, `--static-dir` files).
final class HTTPRouter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let environment: SyncEnvironment
    private let decision: NIOLoopBound<UpgradeDecision>
    private let assets: StaticAssets
    private var head: HTTPRequestHead?
    /// A `HEAD` request: its response carries the headers of a `GET`, and no body.
    private var headOnly = false
    private var bodyBytes = 0
    /// Whether the current request lets the connection stay open (HTTP/1.1 default, or
    /// HTTP/1.0 with `keep-alive`); `Connection: close` is honoured after the response.
    private var keepAlive = true

    init(environment: SyncEnvironment, decision: NIOLoopBound<UpgradeDecision>, assets: StaticAssets) {
        self.environment = environment
        self.decision = decision
        self.assets = assets
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            keepAlive = head.isKeepAlive
            headOnly = head.method == .HEAD
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
        if let asset = assets.asset(at: path) {
            return respond(context, asset, request: head)
        }
        if path.hasPrefix("/app/"), let directory = assets.directory {
            return serveFile(context, String(path.dropFirst(5)), from: directory, request: head)
        }
        switch path {
        case "/v1/sync":
            if let (status, code, message) = decision.value.refusal {
                decision.value.refusal = nil
                respond(context, status, json: error(code, message), close: true, extraHeaders: decision.value.refusalHeaders)
            } else {
                respond(context, .upgradeRequired, json: error("upgrade_required", "/v1/sync speaks WebSocket (RFC 6455), subprotocol syncline.v1"),
                        extraHeaders: [("Upgrade", "websocket")])
            }
        case "/healthz":
            respond(context, .ok, json: "{\"status\":\"ok\"}")
        case "/readyz":
            // Ready means delivering: the tail is connected and this node's canary comes back in
            // time (DeliveryHealth), and the node is not draining.
            let health = environment.health
            let lag = health.lagMilliseconds.map { ",\"canary_lag_ms\":\($0)" } ?? ""
            switch health.verdict(tailConnected: environment.hub.isListening) {
            case .ready:
                respond(context, .ok, json: "{\"status\":\"ready\"\(lag)}")
            case .readyEveryNodeLate:
                respond(context, .ok, json: "{\"status\":\"ready\",\"alert\":\"every node's canary is late (a slow Postgres?)\"\(lag)}")
            case .notReady(let reason):
                respond(context, .serviceUnavailable, json: "{\"status\":\"not_ready\",\"reason\":\(JSONValue.quoted(reason))\(lag)}")
            }
        case "/metrics":
            // Refreshes the health gauges (the canary lag grows between canary rounds).
            _ = environment.health.verdict(tailConnected: environment.hub.isListening)
            var out: [UInt8] = []
            SynclineMetrics.registry.emit(into: &out)
            respond(context, .ok, body: context.channel.allocator.buffer(bytes: out), contentType: "text/plain; version=0.0.4")
        case "/":  // with --demo, the dashboard (an asset)
            respond(context, .ok, json: "{\"server\":\(JSONValue.quoted(SynclineServer.serverName)),\"endpoint\":\"/v1/sync\"}")
        case "/demo/token" where environment.configuration.demo:
            // Anyone who reaches it is anyone they like: only this machine may ask, and not through
            // a proxy (behind one on the same host, every peer is loopback).
            guard Self.isLocalPeer(context.channel.remoteAddress, head.headers) else {
                return respond(context, .forbidden, json: error("forbidden", "demo tokens are issued to loopback peers only"))
            }
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

    /// A static file: `304` when the client's copy is current, else the file; both with the ETag
    /// and `no-cache` (use it, but revalidate first).
    private func respond(_ context: ChannelHandlerContext, _ asset: StaticAsset, request: HTTPRequestHead) {
        let validators = [("ETag", asset.etag), ("X-Content-Type-Options", "nosniff")]
        if asset.isCurrent(for: request.headers) {
            respond(context, .notModified, body: nil, contentType: asset.contentType, cacheControl: "no-cache", extraHeaders: validators)
        } else {
            respond(context, .ok, body: asset.body, contentType: asset.contentType, cacheControl: "no-cache", extraHeaders: validators)
        }
    }

    /// A file of `--static-dir`, read off the event loop.
    private func serveFile(_ context: ChannelHandlerContext, _ relative: String, from directory: StaticDirectory,
                           request: HTTPRequestHead) {
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        Task {
            let outcome = directory.read(relative)
            loop.execute {
                let (router, context) = bound.value
                switch outcome {
                case .file(let asset):
                    router.respond(context, asset, request: request)
                case .notFound:
                    router.respond(context, .notFound, json: router.error("not_found", "no file /app/\(relative)"))
                case .tooLarge:
                    router.respond(context, .notFound, json: router.error(
                        "not_found", "/app/\(relative) is larger than --static-max-file-bytes (\(directory.maximumFileBytes))"))
                }
            }
        }
    }

    private func respond(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, json: String, close: Bool = false,
                         extraHeaders: [(String, String)] = []) {
        respond(context, status, body: context.channel.allocator.buffer(string: json + "\n"), contentType: "application/json",
                close: close, extraHeaders: extraHeaders)
    }

    /// Writes a response; `body` nil for a `304` (no body, no length). A `HEAD` request gets the
    /// headers only.
    private func respond(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, body: ByteBuffer?, contentType: String,
                         close: Bool = false, cacheControl: String = "no-store", extraHeaders: [(String, String)] = []) {
        let close = close || !keepAlive
        var headers = HTTPHeaders([("Content-Type", contentType), ("Cache-Control", cacheControl)])
        if let body { headers.add(name: "Content-Length", value: "\(body.readableBytes)") }
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        if close { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if let body, !headOnly {
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if close {
            done.whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
        }
    }

    /// A peer on this machine (127.0.0.0/8, ::1, a Unix socket) that did not come through a proxy
    /// (no `Forwarded`, `X-Forwarded-For` or `X-Real-IP`).
    static func isLocalPeer(_ address: SocketAddress?, _ headers: HTTPHeaders) -> Bool {
        for proxyHeader in ["Forwarded", "X-Forwarded-For", "X-Real-IP"] where headers.contains(name: proxyHeader) {
            return false
        }
        switch address {
        case .v4?: return address?.ipAddress?.hasPrefix("127.") ?? false
        case .v6?:
            guard let ip = address?.ipAddress?.lowercased() else { return false }
            return ip == "::1" || ip.hasPrefix("::ffff:127.")
        case .unixDomainSocket?: return true
        case nil: return false
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
