import Foundation
import SynclineProtocol
import Testing

/// `syncline serve --log-format json`, the real binary: every line it writes is one JSON object
/// with time, level, label, message and metadata, and the lines about a session carry its
/// connection, session, client and request ids.
@Suite("JSON logs (syncline serve process)")
struct JSONLogTests {
    @Test("hello, subscribe and mutate at debug level: every line parses, and each names its connection, session, client and request")
    func everyLineIsJSONWithTheIDs() async throws {
        let database = try await TestDatabase(url: TestCluster.makeDatabase())
        let port = try freePort()
        let child = try ChildProcess(ChildProcess.binary("syncline"), [
            "serve", "--database-url", database.url, "--port", "\(port)", "--demo", "--no-demo-generator",
            "--insecure-dev-auth", "--event-loop-threads", "1", "--log-level", "debug", "--log-format", "json",
        ], name: "syncline serve :\(port)")
        defer { child.signal(SIGKILL) }
        try await eventually("the server is ready", timeout: .seconds(60)) {
            guard child.isRunning else { throw TestFailure("the server exited:\n" + child.lines.joined(separator: "\n")) }
            let answer = try? await RawHTTP.request(port: port, "GET /readyz HTTP/1.1\nHost: x\nConnection: close\n\n")
            return answer?.hasPrefix("HTTP/1.1 200") == true
        }

        let client = try await TestClient.connect(url: "ws://127.0.0.1:\(port)/v1/sync")
        client.send(["type": "hello", "client_id": "json-log-device", "token": TestClient.unsignedToken("alice")])
        let welcome = try await client.next("welcome")
        let session = try #require(welcome["session"]?.stringValue)
        client.send(["type": "subscribe", "id": "acct-feed", "collection": "accounts", "where": ["owner": "alice"]])
        _ = try await client.next("subscribed", skipping: ["cursor"])
        client.send(MutationTests.transfer(1, amount: "1.00", memo: "json log"))
        #expect(try await MutationTests.answer(client)["type"] == .string("ack"))
        client.send(MutationTests.transfer(2, amount: "100000", memo: "too much"))
        #expect(try await MutationTests.answer(client)["type"] == .string("reject"))
        await client.close()
        try await eventually("the close is logged") { child.lines.contains { $0.contains("\"connection closed\"") } }
        child.signal(SIGTERM)
        try await child.waitForExit()

        let lines = child.lines.filter { !$0.isEmpty }
        #expect(lines.count >= 8)
        var objects: [JSONValue] = []
        for line in lines {
            guard let object = try? JSONParser.parse(line), case .object = object else {
                Issue.record("not a JSON object: \(line)")
                continue
            }
            for field in ["time", "level", "label", "message"] {
                #expect(object[field]?.stringValue != nil, "\(field) missing: \(line)")
            }
            guard case .object = object["metadata"] else {
                Issue.record("metadata missing: \(line)")
                continue
            }
            objects.append(object)
        }
        #expect(objects.contains { $0["message"]?.stringValue == "syncline listening" })
        let mine = objects.filter { $0["metadata"]?["session"]?.stringValue == session }
        #expect(mine.allSatisfy { $0["metadata"]?["connection"]?.stringValue != nil })
        #expect(mine.allSatisfy { $0["metadata"]?["client_id"]?.stringValue == "json-log-device" })
        #expect(mine.allSatisfy { $0["metadata"]?["sub"]?.stringValue == "alice" })
        #expect(Set(mine.compactMap { $0["metadata"]?["connection"]?.stringValue }).count == 1, "one connection")
        func named(_ message: String) -> [JSONValue] { mine.filter { $0["message"]?.stringValue == message } }
        #expect(named("session opened").count == 1)
        #expect(named("subscribed").map { $0["metadata"]?["subscription"]?.stringValue } == ["acct-feed"])
        #expect(named("mutation submitted").compactMap { $0["metadata"]?["mid"]?.stringValue } == ["1", "2"])
        #expect(Set(named("mutation decided").compactMap { $0["metadata"]?["mid"]?.stringValue }) == ["1", "2"])
        #expect(Set(named("mutation decided").compactMap { $0["metadata"]?["outcome"]?.stringValue }) == ["ack", "reject"])
        #expect(named("connection closed").count == 1)
    }
}
