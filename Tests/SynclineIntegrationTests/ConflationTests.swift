import Foundation
import SynclineProtocol
import Testing

/// `"conflate": true` on a real server, real Postgres and real sockets: a conflating subscriber
/// that stops reading while thousands of commits change a few rows gets them merged by key, and
/// ends with the same rows and cursor as an exact subscriber of the same feed, which gets every
/// change.
@Suite("Conflation", .serialized)
struct ConflationTests {
    /// A feed as a client keeps it, applied from raw frames (protocol §3.3).
    struct Feed {
        var rows: [JSONValue: JSONValue] = [:]
        var collected: [JSONValue: JSONValue] = [:]
        var cursor: String?
        var changes = 0
        var changeMessages = 0
        var live = false
        var closed: UInt16?
        /// An `ack` and the feed's cursor and rows when it arrived (read-your-writes).
        var ack: JSONValue?
        var cursorAtAck: String?
        var rowsAtAck: [JSONValue: JSONValue] = [:]

        mutating func apply(_ frame: RawWebSocket.Frame) throws {
            if frame.opcode == 0x8 {
                closed = frame.closeCode ?? 1005
                return
            }
            guard frame.opcode == 0x1 else { return }
            let message = try JSONParser.parse(frame.text)
            switch message["type"]?.stringValue {
            case "snapshot":
                if case .array(let chunk)? = message["rows"] {
                    for row in chunk { collected[.object([("id", row["id"] ?? .null)])] = row }
                }
                if message["done"] == .bool(true) {
                    rows = collected
                    collected = [:]
                    cursor = message["cursor"]?.stringValue
                }
            case "changes":
                guard case .array(let list)? = message["changes"] else { throw TestFailure("changes without an array") }
                for change in list {
                    let key = change["key"] ?? .null
                    switch change["op"]?.stringValue {
                    case "insert", "update": rows[key] = change["row"] ?? .null
                    case "delete": rows[key] = nil
                    default: throw TestFailure("unknown op in \(change.jsonText)")
                    }
                }
                changes += list.count
                changeMessages += 1
                cursor = message["cursor"]?.stringValue
                if message["live"] == .bool(true) { live = true }
            case "ack":
                ack = message
                cursorAtAck = cursor
                rowsAtAck = rows
            case "error", "reject":
                throw TestFailure("\(frame.text)")
            default:
                break
            }
        }

        /// Reads frames until `done` holds (or the connection ends).
        mutating func read(_ socket: RawWebSocket, timeout: Duration = .seconds(60), until done: (Feed) -> Bool) async throws {
            while !done(self) {
                guard let frame = try await socket.next(timeout: timeout) else { throw TestFailure("connection ended") }
                try apply(frame)
                if closed != nil { throw TestFailure("closed with \(closed!)") }
            }
        }
    }

    static func subscribe(_ id: String, conflate: Bool) -> String {
        var request: [String: Any] = ["type": "subscribe", "id": id, "collection": "notifications", "where": ["user_id": "alice"]]
        if conflate { request["conflate"] = true }
        return TestClient.encode(request)
    }

    @Test("a slow conflating subscriber gets fewer changes, the same rows and cursor; the exact one gets every change")
    func slowConflatingBesideExact() async throws {
        try await TestServer.with(configure: {
            $0.server.conflateAfterBytes = 64 << 10
            $0.server.heartbeatMilliseconds = 120_000  // the raw clients do not answer pings
        }) { server in
            let exactSocket = try await RawWebSocket.connect(port: server.port)
            // A 4 KiB receive buffer that is not read: the server's writes back up quickly.
            let slowSocket = try await RawWebSocket.connect(port: server.port, receiveBuffer: 4096)
            var exact = Feed(), slow = Feed()
            for (n, socket) in [exactSocket, slowSocket].enumerated() {
                try await socket.sendText(TestClient.encode(["type": "hello", "client_id": "conflate-\(n)", "token": TestClient.unsignedToken("alice")]))
                #expect(try await socket.next()?.text.contains("welcome") == true)
            }
            try await exactSocket.sendText(Self.subscribe("exact", conflate: false))
            try await slowSocket.sendText(Self.subscribe("merged", conflate: true))
            try await exact.read(exactSocket) { $0.live }
            try await slow.read(slowSocket) { $0.live }
            #expect(slow.rows == exact.rows)
            try await slowSocket.setReading(false)

            // Four rows, each through insert, updates, a key change, leaving and re-entering the
            // feed's filter, and delete, one commit per statement, ~2 KB per row image: ~9 MB per
            // subscriber, more than the kernel's buffers (4 MiB send, 4 KiB receive) can hide.
            let cycles = 150, slots = 4
            let body = "repeat('x', 2000) || i::text"
            _ = try await server.database.psql("""
                DO $$
                DECLARE step int; s int; base bigint; moved bigint;
                BEGIN
                  FOR i IN 0..\(cycles * 7 * slots + 2 * slots - 1) LOOP
                    s := i % \(slots); step := (i / \(slots)) % 7; base := 100001 + s; moved := 200001 + s;
                    CASE step
                      WHEN 0 THEN INSERT INTO notifications (id, user_id, body) VALUES (base, 'alice', \(body));
                      WHEN 1 THEN UPDATE notifications SET body = \(body) WHERE id = base;
                      WHEN 2 THEN UPDATE notifications SET id = moved WHERE id = base;
                      WHEN 3 THEN UPDATE notifications SET body = \(body) WHERE id = moved;
                      WHEN 4 THEN UPDATE notifications SET user_id = 'bob' WHERE id = moved;
                      WHEN 5 THEN UPDATE notifications SET user_id = 'alice', body = \(body) WHERE id = moved;
                      ELSE DELETE FROM notifications WHERE id = moved;
                    END CASE;
                    COMMIT;
                  END LOOP;
                END $$;
                """)
            // Per cycle and row: insert 1, update 1, key change 2 (delete + insert), update 1,
            // leave 1 (delete), enter 1 (insert), delete 1; then an insert and an update each.
            // And one more: a mutation sent on the stalled connection, whose ack must not
            // overtake its change, held in the merged set (protocol §5, read-your-writes).
            try await slowSocket.sendText(#"{"type":"mutate","mid":1,"name":"notifications.insert","args":{"row":{"user_id":"alice","body":"mine"}}}"#)
            try await exact.read(exactSocket) { $0.rows.values.contains { $0["body"] == .string("mine") } }
            let expectedChanges = cycles * slots * 8 + slots * 2 + 1
            let head = try await server.database.psql("SELECT max(pos) FROM syncline.changes")
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let epoch = try #require(exact.cursor?.split(separator: ".").first)
            let final = "\(epoch).\(head)"

            try await exact.read(exactSocket) { $0.cursor == final }
            #expect(exact.changes == expectedChanges, "the exact subscriber gets every change")

            try await slowSocket.setReading(true)
            try await slow.read(slowSocket) { $0.cursor == final && $0.ack != nil }
            #expect(slow.closed == nil)
            let ackCursor = try #require(slow.ack?["cursor"]?.stringValue)
            func position(_ cursor: String?) -> Int64 { cursor.flatMap { $0.split(separator: ".").last }.flatMap { Int64($0) } ?? -1 }
            #expect(position(slow.cursorAtAck) >= position(ackCursor), "the ack came after the merged changes through its cursor")
            #expect(slow.rowsAtAck.values.contains { $0["body"] == .string("mine") }, "its row was there when the ack came")
            #expect(slow.changes < exact.changes, "merged: \(slow.changes) changes in \(slow.changeMessages) messages")
            #expect(slow.rows == exact.rows, "same final rows")
            #expect(slow.cursor == exact.cursor, "same final cursor")
            #expect(exact.rows.count == slots + (try await Self.seededAliceNotifications(server)))
            print("conflation: exact \(exact.changes) changes in \(exact.changeMessages) messages; merged \(slow.changes) in \(slow.changeMessages)")

            // Once drained, the conflating feed is exact again: the next commit arrives as is.
            _ = try await server.database.psql("UPDATE notifications SET body = 'after' WHERE id = 100001")
            let before = slow.changes
            try await slow.read(slowSocket) { $0.changes > before }
            #expect(slow.changes == before + 1)
            await exactSocket.close()
            await slowSocket.close()
        }
    }

    static func seededAliceNotifications(_ server: TestServer) async throws -> Int {
        let text = try await server.database.psql("SELECT count(*) FROM notifications WHERE user_id = 'alice' AND id < 100001")
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    @Test("conflate must be a boolean, and applies to collections only")
    func badConflate() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server, sub: "alice")
            client.send(#"{"type":"subscribe","id":"a","collection":"notifications","where":{"user_id":"alice"},"conflate":"yes"}"#)
            let notBool = try await client.next("error")
            #expect(notBool["code"] == .string("bad_request"))
            #expect(notBool["ref"] == .string("a"))
            client.send(#"{"type":"subscribe","id":"t","topic":"user:alice","conflate":true}"#)
            let topic = try await client.next("error")
            #expect(topic["code"] == .string("bad_request"))
            #expect(topic["message"]?.stringValue?.contains("collections") == true)
            // The connection stays open and a proper one works.
            client.send(#"{"type":"subscribe","id":"b","collection":"notifications","where":{"user_id":"alice"},"conflate":true}"#)
            let subscribed = try await client.next("subscribed", skipping: ["snapshot", "changes"])
            #expect(subscribed["id"] == .string("b"))
            await client.close()
        }
    }
}
