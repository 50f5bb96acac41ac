import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import SynclineWebClient

/// A file served as is: its bytes, content type and a strong validator.
struct StaticAsset: Sendable {
    let body: ByteBuffer
    let contentType: String
    /// `"<32 hex digits of the content's SHA-256>"`, quoted as HTTP wants: two files with the
    /// same bytes share it, any other byte changes it.
    let etag: String

    init(_ data: Data, contentType: String) {
        self.body = ByteBuffer(bytes: data)
        self.contentType = contentType
        let digest = SHA256.hash(data: data).prefix(16).map { String(format: "%02x", $0) }.joined()
        self.etag = "\"\(digest)\""
    }

    /// Whether the request's `If-None-Match` names this asset (or is `*`): the client's copy is
    /// current and gets `304`. Weak comparison, as RFC 9110 §13.1.2 asks of `If-None-Match`.
    func isCurrent(for headers: HTTPHeaders) -> Bool {
        for value in headers["If-None-Match"] {
            for tag in value.split(separator: ",") {
                var tag = tag.trimmingCharacters(in: .whitespaces)
                if tag == "*" { return true }
                if tag.hasPrefix("W/") { tag.removeFirst(2) }
                if tag == etag { return true }
            }
        }
        return false
    }
}

/// The fixed files `syncline serve` ships, loaded once at start: the client library at
/// `/client/syncline.js` and `/client/syncline.d.ts` (always), and with `--demo` the dashboard
/// at `/` and its service worker at `/sw.js`. All are revalidated by clients (`no-cache` + ETag),
/// so a new server version is picked up at once and an unchanged file costs a `304`.
struct StaticAssets: Sendable {
    private var byPath: [String: StaticAsset] = [:]
    /// `--static-dir`, served at `/app/<path>`.
    let directory: StaticDirectory?

    init(directory: StaticDirectory? = nil) {
        self.directory = directory
    }

    func asset(at path: String) -> StaticAsset? { byPath[path] }

    /// Reads the shipped files. `dashboard` overrides the bundled dashboard's path.
    static func load(demo: Bool, dashboard: String?, staticDirectory: StaticDirectory?) throws -> StaticAssets {
        var assets = StaticAssets(directory: staticDirectory)
        for name in SynclineWebClient.fileNames {
            guard let url = SynclineWebClient.url(of: name) else {
                throw StaticAssetError("the client library's \(name) is missing from the server's resources")
            }
            assets.byPath["/client/" + name] = StaticAsset(try Data(contentsOf: url), contentType: StaticDirectory.contentType(of: name))
        }
        if demo {
            guard let page = dashboard.map({ URL(fileURLWithPath: $0) })
                    ?? Bundle.module.url(forResource: "dashboard", withExtension: "html"),
                  let worker = Bundle.module.url(forResource: "dashboard-sw", withExtension: "js") else {
                throw StaticAssetError("the dashboard is missing from the server's resources")
            }
            assets.byPath["/"] = StaticAsset(try Data(contentsOf: page), contentType: "text/html; charset=utf-8")
            assets.byPath["/sw.js"] = StaticAsset(try Data(contentsOf: worker), contentType: "text/javascript; charset=utf-8")
        }
        return assets
    }
}

struct StaticAssetError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// `--static-dir DIR`: the regular files under one folder, served at `/app/<path>` (`/app/` is
/// `index.html`). Meant for development and tests (e.g. a page using `/client/syncline.js` from
/// the same origin), not as a web server: each request reads its file again.
///
/// A path is served only when every segment is a plain name (no `..`, `.`, empty segment or
/// dotfile, after percent-decoding), the file it resolves to (symlinks followed) lies inside DIR,
/// and it is a regular file of at most `maximumFileBytes`. Everything else is a `404`, without
/// saying which rule refused it.
struct StaticDirectory: Sendable {
    /// DIR with every symlink resolved.
    let root: String
    let maximumFileBytes: Int

    init(path: String, maximumFileBytes: Int) throws {
        guard let resolved = Self.realPath(path) else {
            throw StaticAssetError("--static-dir \(path): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard stat(resolved, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw StaticAssetError("--static-dir \(path) is not a folder")
        }
        self.root = resolved
        self.maximumFileBytes = maximumFileBytes
    }

    enum Outcome: Sendable {
        case file(StaticAsset)
        case notFound
        case tooLarge
    }

    /// The file for the URL path after `/app/` (still percent-encoded). Blocking file I/O: call
    /// off the event loop.
    func read(_ encoded: String) -> Outcome {
        guard let path = resolve(encoded) else { return .notFound }
        // O_NONBLOCK: a FIFO swapped in after `resolve` must not block the open.
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return .notFound }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return .notFound }
        guard info.st_size <= maximumFileBytes else { return .tooLarge }
        // Read up to one byte past the limit: the file may have grown since fstat.
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
        guard let data = try? handle.read(upToCount: maximumFileBytes + 1) ?? Data() else { return .notFound }
        guard data.count <= maximumFileBytes else { return .tooLarge }
        return .file(StaticAsset(data, contentType: Self.contentType(of: path)))
    }

    /// The absolute path of the regular file the URL path names, or nil when it is refused.
    func resolve(_ encoded: String) -> String? {
        guard let decoded = encoded.removingPercentEncoding, !decoded.contains("\0"), !decoded.contains("\\") else { return nil }
        var segments = decoded.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        if segments.last == "" {
            segments.removeLast()
            segments.append("index.html")
        }
        guard !segments.isEmpty, segments.allSatisfy({ !$0.isEmpty && !$0.hasPrefix(".") }) else { return nil }
        guard let resolved = Self.realPath(root + "/" + segments.joined(separator: "/")),
              resolved.hasPrefix(root == "/" ? "/" : root + "/") else { return nil }
        var info = stat()
        guard stat(resolved, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
        return resolved
    }

    private static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// The content type for a file name's extension; `application/octet-stream` when unknown.
    static func contentType(of name: String) -> String {
        let lower = name.lowercased()
        if lower.hasSuffix(".d.ts") { return "application/typescript; charset=utf-8" }
        let ext = lower.split(separator: "/").last.flatMap { $0.contains(".") ? $0.split(separator: ".").last : nil } ?? ""
        switch ext {
        case "html", "htm": return "text/html; charset=utf-8"
        case "js", "mjs": return "text/javascript; charset=utf-8"
        case "ts": return "application/typescript; charset=utf-8"
        case "css": return "text/css; charset=utf-8"
        case "json", "map": return "application/json"
        case "webmanifest": return "application/manifest+json"
        case "txt", "md": return "text/plain; charset=utf-8"
        case "svg": return "image/svg+xml"
        case "png": return "image/png"
        case "jpg", "jpeg": return "image/jpeg"
        case "gif": return "image/gif"
        case "webp": return "image/webp"
        case "ico": return "image/x-icon"
        case "wasm": return "application/wasm"
        case "woff": return "font/woff"
        case "woff2": return "font/woff2"
        default: return "application/octet-stream"
        }
    }
}
