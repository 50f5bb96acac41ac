import ArgumentParser
import Foundation
import SynclineClient

/// `syncline tail`: print a feed's changes as JSON lines, on SynclineClient.
struct Tail: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a collection's (or topic's) changes as JSON lines: one per change, then {\"cursor\": …}.",
        discussion: """
            Each line is {"op","key","row","cursor"} (topics: {"op":"message","topic","payload","cursor"}); \
            a reset prints {"op":"reset"} before the new rows. Without --follow it exits once every feed has \
            caught up, printing {"cursor": …} last; resume with --after that cursor (or --cursor-file).
            """)

    @Argument(help: "The collection (omit with --topic only).")
    var collection: String?

    @Option(name: .customLong("where"), help: "col=value (repeatable); the value parses as JSON, else it is a string.")
    var filters: [String] = []

    @Option(help: "The collection's key columns (repeatable; default id).")
    var key: [String] = []

    @Option(help: "A topic to follow too (repeatable).")
    var topic: [String] = []

    @Option(help: "Resume after this cursor (no snapshot).")
    var after: String?

    @Option(help: "The server's /v1/sync URL.")
    var url = "ws://127.0.0.1:8080/v1/sync"

    @Option(help: "A JWT. Without it, a demo token for --sub from the server's /demo/token.")
    var token: String?

    @Option(help: "User of the demo token.")
    var sub = "alice"

    @Flag(help: "Keep following (across reconnects) instead of exiting once caught up.")
    var follow = false

    @Option(name: .customLong("cursor-file"), help: "Read the cursor from this file at start; rewrite it (atomically) as changes are printed.")
    var cursorFile: String?

    func validate() throws {
        if collection == nil && topic.isEmpty { throw ValidationError("give a collection, --topic, or both") }
        for filter in filters where !filter.contains("=") { throw ValidationError("--where takes col=value, got '\(filter)'") }
    }

    func run() async throws {
        let filter = FilterArguments.parse(filters)
        var start = after
        if start == nil, let cursorFile, let text = try? String(contentsOfFile: cursorFile, encoding: .utf8) {
            let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
            start = trimmed.isEmpty ? nil : trimmed
        }
        // The feeds start at the given cursor: a store holding only that cursor makes the client resume.
        var specs: [FeedSpec] = topic.map { .topic($0) }
        if let collection { specs.insert(.collection(name: collection, filter: filter), at: 0) }
        let store = MemoryClientStore(StoredState(clientID: "tail-" + UUID().uuidString.prefix(8).lowercased(), feeds: start.map { cursor in
            specs.map { StoredFeed(spec: $0, keyColumns: [], cursor: cursor, rows: []) }
        } ?? []))
        let token = self.token
        let tokenURL = url.replacingOccurrences(of: "ws://", with: "http://").replacingOccurrences(of: "wss://", with: "https://")
            .replacingOccurrences(of: "/v1/sync", with: "/demo/token")
        let sub = self.sub
        var configuration = SynclineClient.Configuration()
        configuration.logger.logLevel = .error
        let keyColumns = key.isEmpty ? ["id"] : key
        if let collection { configuration.keyColumns[collection] = keyColumns }
        let client = SynclineClient(url: url, tokenProvider: {
            if let token { return token }
            return try await DevToken.fromDemoServer(tokenURL, sub: sub)
        }, store: store, configuration: configuration)

        let printer = LinePrinter(cursorFile: cursorFile)
        let follow = self.follow
        let feedCount = specs.count
        let caughtUp = CaughtUp(feeds: feedCount)
        try await withThrowingTaskGroup(of: Void.self) { group in
            if let collection {
                let query = try await client.subscribe(collection: collection, where: filter)
                group.addTask {
                    var lines: [JSONValue] = []
                    var first = true
                    for await event in query.events(limit: 1 << 20) {
                        switch event {
                        case .snapshot(let rows):
                            // The first .snapshot is the (empty) stored state; a later one is the server's.
                            if first { first = false; if rows.isEmpty { continue } }
                            lines += rows.map { ["op": "insert", "key": Self.key(of: $0, columns: keyColumns), "row": $0] }
                        case .reset(let rows), .resynced(let rows):
                            lines.append(["op": "reset"])
                            lines += rows.map { ["op": "insert", "key": Self.key(of: $0, columns: keyColumns), "row": $0] }
                        case .changes(let changes):
                            lines += changes.map { ["op": .string($0.op.rawValue), "key": $0.key, "row": $0.row ?? .null] }
                        case .cursor(let cursor):
                            printer.print(lines, cursor: cursor)
                            lines = []
                        case .live:
                            if caughtUp.feedIsLive(), !follow { return }
                        case .ended(let code, let message):
                            throw ValidationError("the feed ended: \(code): \(message)")
                        }
                    }
                }
            }
            for name in topic {
                let subscription = try await client.subscribe(topic: name, limit: 1 << 20)
                group.addTask {
                    for await event in subscription.events {
                        switch event {
                        case .message(let message):
                            printer.print([["op": "message", "topic": .string(message.topic), "payload": message.payload]], cursor: message.cursor)
                        case .cursor(let cursor):
                            printer.print([], cursor: cursor)
                        case .reset:
                            printer.print([["op": "reset"]], cursor: nil)
                        case .live:
                            if caughtUp.feedIsLive(), !follow { return }
                        case .dropped(let n):
                            throw ValidationError("fell behind: \(n) messages dropped")
                        case .ended(let code, let message):
                            throw ValidationError("the feed ended: \(code): \(message)")
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        printer.finish()
        await client.close()
    }

    /// A snapshot row's key: its key columns.
    static func key(of row: JSONValue, columns: [String]) -> JSONValue {
        .object(columns.map { ($0, row[$0] ?? .null) })
    }
}

/// Counts feeds that have caught up; true once all have.
final class CaughtUp: @unchecked Sendable {
    private let lock = NSLock()
    private var remaining: Int
    init(feeds: Int) { remaining = feeds }
    func feedIsLive() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        remaining -= 1
        return remaining <= 0
    }
}

/// Prints lines with their cursor and keeps the cursor file current (written to a temporary file,
/// then renamed over the old one, so a crash leaves the old cursor or the new one).
final class LinePrinter: @unchecked Sendable {
    private let lock = NSLock()
    private let cursorFile: String?
    private var cursor: String?

    init(cursorFile: String?) { self.cursorFile = cursorFile }

    func print(_ lines: [JSONValue], cursor: String?) {
        lock.lock()
        defer { lock.unlock() }
        var out = ""
        for line in lines {
            var members = line.members ?? []
            if let cursor, line["op"] != "reset" { members.append(("cursor", .string(cursor))) }
            out += JSONValue.object(members).jsonText + "\n"
        }
        if !out.isEmpty { FileHandle.standardOutput.write(Data(out.utf8)) }
        guard let cursor else { return }
        self.cursor = cursor
        if let cursorFile {
            let temporary = cursorFile + ".tmp"
            if FileManager.default.createFile(atPath: temporary, contents: Data((cursor + "\n").utf8)),
               let handle = FileHandle(forWritingAtPath: temporary) {
                try? handle.synchronize()
                try? handle.close()
                _ = rename(temporary, cursorFile)
            }
        }
    }

    func finish() {
        lock.lock()
        defer { lock.unlock() }
        if let cursor { FileHandle.standardOutput.write(Data((JSONValue.object([("cursor", .string(cursor))]).jsonText + "\n").utf8)) }
    }
}
