import Foundation
import SynclineClient
import Testing

/// `syncline tail` (on SynclineClient) against `syncline serve --demo`, with rows written by `psql`.
@Suite("syncline tail", .serialized)
struct ClientTailTests {
    static func tail(_ server: ServerProcess, _ arguments: [String]) throws -> ChildProcess {
        try ChildProcess(ChildProcess.binary("syncline"), ["tail", "transactions", "--where", "account_id=alice-checking", "--url", server.url] + arguments,
                         name: "syncline tail")
    }

    static func json(_ lines: [String]) throws -> [JSONValue] {
        try lines.filter { $0.hasPrefix("{") }.map { try JSONParser.parse($0) }
    }

    @Test("rows inserted with psql appear as JSON lines; --after resumes exactly; --follow keeps going; --cursor-file")
    func tailResumesExactly() async throws {
        let server = try await ServerProcess()
        try await server.start()
        // Without --after: the snapshot's rows, then {"cursor": …} once caught up, and exit.
        let first = try Self.tail(server, [])
        #expect(try await first.waitForExit() == 0)
        let firstLines = try Self.json(first.lines)
        let snapshot = firstLines.dropLast()
        #expect(snapshot.count == 1, "\(first.lines)")  // the seed's opening balance
        #expect(snapshot.allSatisfy { $0["op"] == "insert" && $0["key"]?["id"] != nil && $0["cursor"] != nil })
        #expect(snapshot.first?["row"]?["amount"]?.numberText == "1250.00")
        let cursor = try #require(firstLines.last?["cursor"]?.stringValue)

        _ = try await server.database.psql("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 1.10, 'tail-1'), ('alice-checking', -2.20, 'tail-2')")
        _ = try await server.database.psql("INSERT INTO transactions (account_id, amount, memo) VALUES ('bob-checking', 3, 'not-mine')")
        _ = try await server.database.psql("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 3.30, 'tail-3')")

        // --after: exactly the rows committed since, in commit order, digits kept. "Caught up" is
        // relative to the server's change tail, which may see the last commit a moment later, so
        // chain runs (each resuming from the previous one's last line) until all three are in:
        // together they must hold each row exactly once.
        var printed: [JSONValue] = []
        var next = cursor
        for _ in 0..<20 where printed.count < 3 {
            let run = try Self.tail(server, ["--after", next])
            #expect(try await run.waitForExit() == 0)
            let lines = try Self.json(run.lines)
            printed += lines.dropLast()
            next = try #require(lines.last?["cursor"]?.stringValue)
        }
        #expect(printed.map { $0["row"]?["memo"]?.stringValue } == ["tail-1", "tail-2", "tail-3"], "\(printed.map(\.jsonText))")
        #expect(printed.map { $0["row"]?["amount"]?.numberText } == ["1.10", "-2.20", "3.30"])
        #expect(next != cursor)

        // Resuming from the last line's cursor prints nothing new.
        let third = try Self.tail(server, ["--after", next])
        #expect(try await third.waitForExit() == 0)
        #expect(try Self.json(third.lines).count == 1)

        // --follow: a psql insert appears while it runs; the cursor file follows it.
        let cursorFile = NSTemporaryDirectory() + "syncline-tail-\(UUID().uuidString).cursor"
        defer { try? FileManager.default.removeItem(atPath: cursorFile) }
        try (next + "\n").write(toFile: cursorFile, atomically: true, encoding: .utf8)
        let follower = try Self.tail(server, ["--follow", "--cursor-file", cursorFile])
        try await Task.sleep(for: .milliseconds(800))
        _ = try await server.database.psql("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 4.40, 'tail-4')")
        let line = try await follower.waitForLine(containing: "tail-4")
        let change = try JSONParser.parse(line)
        #expect(change["op"] == "insert")
        let afterFour = try #require(change["cursor"]?.stringValue)
        try await eventually("the cursor file") {
            (try? String(contentsOfFile: cursorFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) == afterFour
        }
        // It keeps going across a server restart.
        try await server.stop(SIGKILL)
        try await server.start()
        _ = try await server.database.psql("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 5.50, 'tail-5')")
        let five = try JSONParser.parse(try await follower.waitForLine(containing: "tail-5"))
        #expect(follower.lines.filter { $0.contains("tail-4") }.count == 1)
        // The file is rewritten right after the line is printed; stop once it holds tail-5's cursor.
        let afterFive = try #require(five["cursor"]?.stringValue)
        try await eventually("the cursor file after tail-5") {
            (try? String(contentsOfFile: cursorFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) == afterFive
        }
        follower.signal(SIGTERM)
        try await follower.waitForExit()

        // --cursor-file alone resumes from the file.
        let fromFile = try Self.tail(server, ["--cursor-file", cursorFile])
        #expect(try await fromFile.waitForExit() == 0)
        #expect(try Self.json(fromFile.lines).dropLast().compactMap { $0["row"]?["memo"]?.stringValue } == [])
        try await server.stop()
    }

    @Test("--where values parse as JSON, else as strings")
    func whereValues() {
        #expect(FilterArguments.parse(["a=7", "b=true", "c=null", "d=alice", "e=\"7\"", "f=x=y"]) == [
            "a": 7, "b": true, "c": .null, "d": "alice", "e": "7", "f": "x=y",
        ])
    }
}
