import Foundation
import Testing

/// One HTTP answer taken apart: status, headers (lowercased names) and body.
struct HTTPAnswer {
    var status: Int
    var headers: [String: String]
    var body: String

    init(_ text: String) {
        let parts = text.components(separatedBy: "\r\n\r\n")
        let lines = (parts.first ?? "").components(separatedBy: "\r\n")
        status = lines.first.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        self.headers = headers
        body = parts.dropFirst().joined(separator: "\r\n\r\n")
    }

    static func get(_ server: TestServer, _ path: String, method: String = "GET", headers: [String] = []) async throws -> HTTPAnswer {
        let extra = headers.map { $0 + "\n" }.joined()
        return HTTPAnswer(try await RawHTTP.request(port: server.port, "\(method) \(path) HTTP/1.1\nHost: x\n\(extra)\n"))
    }
}

/// The files `syncline serve` serves: the client library, the dashboard and its service worker,
/// and `--static-dir`.
@Suite("Static assets")
struct StaticAssetTests {
    @Test("the client library: content types, a strong ETag, no-cache, 304 on a matching If-None-Match")
    func clientLibrary() async throws {
        try await TestServer.with { server in
            let js = try await HTTPAnswer.get(server, "/client/syncline.js")
            #expect(js.status == 200)
            #expect(js.headers["content-type"] == "text/javascript; charset=utf-8")
            #expect(js.headers["cache-control"] == "no-cache")
            #expect(js.body == (try String(contentsOfFile: repositoryRoot + "/clients/js/syncline.js", encoding: .utf8)))
            let etag = try #require(js.headers["etag"])
            #expect(etag.hasPrefix("\"") && etag.hasSuffix("\"") && etag.count == 34)

            let dts = try await HTTPAnswer.get(server, "/client/syncline.d.ts")
            #expect(dts.status == 200)
            #expect(dts.headers["content-type"] == "application/typescript; charset=utf-8")
            #expect(dts.headers["etag"] != nil && dts.headers["etag"] != etag)

            for header in ["If-None-Match: \(etag)", "If-None-Match: W/\(etag)", "If-None-Match: \"other\", \(etag)", "If-None-Match: *"] {
                let cached = try await HTTPAnswer.get(server, "/client/syncline.js", headers: [header])
                #expect(cached.status == 304, "\(header)")
                #expect(cached.body.isEmpty)
                #expect(cached.headers["etag"] == etag)
                #expect(cached.headers["cache-control"] == "no-cache")
            }
            let stale = try await HTTPAnswer.get(server, "/client/syncline.js", headers: ["If-None-Match: \"0123\""])
            #expect(stale.status == 200)
            #expect(stale.body == js.body)

            let head = try await HTTPAnswer.get(server, "/client/syncline.js", method: "HEAD")
            #expect(head.status == 200)
            #expect(head.headers["content-length"] == "\(js.body.utf8.count)")
            #expect(head.body.isEmpty)

            // Without --demo there is neither a dashboard nor its worker.
            #expect(try await HTTPAnswer.get(server, "/sw.js").status == 404)
            #expect(try await HTTPAnswer.get(server, "/").headers["content-type"] == "application/json")
        }
    }

    @Test("with --demo: the dashboard at / and its service worker at /sw.js, revalidated by ETag")
    func dashboard() async throws {
        try await TestServer.with(configure: { $0.server.demo = true }) { server in
            for (path, type, file) in [("/", "text/html; charset=utf-8", "dashboard.html"),
                                       ("/sw.js", "text/javascript; charset=utf-8", "dashboard-sw.js")] {
                let answer = try await HTTPAnswer.get(server, path)
                #expect(answer.status == 200)
                #expect(answer.headers["content-type"] == type)
                #expect(answer.headers["cache-control"] == "no-cache")
                #expect(answer.body == (try String(contentsOfFile: repositoryRoot + "/Sources/SynclineServer/Resources/" + file, encoding: .utf8)))
                let etag = try #require(answer.headers["etag"])
                #expect(try await HTTPAnswer.get(server, path, headers: ["If-None-Match: \(etag)"]).status == 304)
            }
            // A query string does not change the file (the page is /?user=bob).
            #expect(try await HTTPAnswer.get(server, "/?user=bob").headers["content-type"] == "text/html; charset=utf-8")
        }
    }

    @Test("--static-dir serves regular files inside it by extension; traversal, dotfiles, escaping links and non-files get 404")
    func staticDirectory() async throws {
        let fm = FileManager.default
        let base = NSTemporaryDirectory() + "syncline-static-\(getpid())-\(UUID().uuidString.prefix(8))"
        let root = base + "/site"
        try fm.createDirectory(atPath: root + "/sub", withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: base) }
        let files = [
            "index.html": "<!doctype html><p>hi</p>", "app.js": "export const x = 1;\n", "style.css": "p{}",
            "data.json": "{\"n\":1}", "sub/x.txt": "text", ".secret": "hidden", "sub/.env": "hidden",
            "big.bin": String(repeating: "x", count: 2_000),
        ]
        for (name, text) in files { try text.write(toFile: root + "/" + name, atomically: true, encoding: .utf8) }
        try "outside".write(toFile: base + "/outside.txt", atomically: true, encoding: .utf8)
        try fm.createSymbolicLink(atPath: root + "/link-out", withDestinationPath: base + "/outside.txt")
        try fm.createSymbolicLink(atPath: root + "/sub/link-in.js", withDestinationPath: root + "/app.js")
        try fm.createSymbolicLink(atPath: root + "/sub/etc", withDestinationPath: "/etc")
        #expect(mkfifo(root + "/pipe.txt", 0o644) == 0)

        try await TestServer.with(configure: {
            $0.server.staticDirectory = root
            $0.server.staticMaximumFileBytes = 1_000
        }) { server in
            let served: [(String, String, String)] = [
                ("/app/", "text/html; charset=utf-8", files["index.html"]!),
                ("/app/index.html", "text/html; charset=utf-8", files["index.html"]!),
                ("/app/app.js", "text/javascript; charset=utf-8", files["app.js"]!),
                ("/app/style.css", "text/css; charset=utf-8", files["style.css"]!),
                ("/app/data.json", "application/json", files["data.json"]!),
                ("/app/sub/x.txt", "text/plain; charset=utf-8", "text"),
                ("/app/sub/link-in.js", "text/javascript; charset=utf-8", files["app.js"]!),
                ("/app/%61pp.js", "text/javascript; charset=utf-8", files["app.js"]!),
            ]
            for (path, type, body) in served {
                let answer = try await HTTPAnswer.get(server, path)
                #expect(answer.status == 200, "\(path)")
                #expect(answer.headers["content-type"] == type, "\(path)")
                #expect(answer.body == body, "\(path)")
                #expect(answer.headers["cache-control"] == "no-cache")
                let etag = try #require(answer.headers["etag"])
                #expect(try await HTTPAnswer.get(server, path, headers: ["If-None-Match: \(etag)"]).status == 304, "\(path)")
            }
            let refused = [
                "/app/../outside.txt", "/app/%2e%2e/outside.txt", "/app/sub/..%2f..%2foutside.txt", "/app/sub/%2E%2E/%2e%2e/outside.txt",
                "/app/..%2Foutside.txt", "/app/./app.js", "/app//app.js", "/app/.secret", "/app/sub/.env", "/app/%2esecret",
                "/app/link-out", "/app/sub/etc/passwd", "/app/pipe.txt", "/app/sub", "/app/sub/", "/app/missing.js",
                "/app/big.bin", "/app/app.js%00.txt", "/app/sub%5c..%5capp.js",
            ]
            for path in refused {
                let answer = try await HTTPAnswer.get(server, path)
                #expect(answer.status == 404, "\(path) → \(answer.status) \(answer.body)")
                #expect(answer.headers["content-type"] == "application/json", "\(path)")
                #expect(answer.body.contains("\"error\":\"not_found\""), "\(path)")
            }
            // The server still answers after all that (the FIFO did not block a thread for good).
            #expect(try await HTTPAnswer.get(server, "/healthz").status == 200)
        }
    }

    @Test("--static-dir that is not a folder fails at start with a clear error")
    func staticDirectoryMissing() async throws {
        let missing = NSTemporaryDirectory() + "syncline-no-such-\(UUID().uuidString)"
        await #expect(throws: (any Error).self) {
            try await TestServer.with(configure: { $0.server.staticDirectory = missing }) { _ in }
        }
    }
}
