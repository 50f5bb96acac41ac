import Foundation
import PostgresNIO
import SynclineProtocol
import Testing

/// The read path end to end: real Postgres, real server, real WebSocket client.
@Suite("Change feeds")
struct ChangeFeedTests {
    static let subscribeChecking = TestClient.encode([
        "type": "subscribe", "id": "t", "collection": "transactions", "where": ["account_id": "alice-checking"],
    ])

    @Test("snapshot, then live changes as they commit")
    func snapshotThenLive() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server)
            client.send(Self.subscribeChecking)
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            #expect(feed.modes == ["snapshot"])
            #expect(feed.rows.count == 1)  // the seed's opening balance
            try await server.database.execute(
                "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 12.30, 'live')",
                "INSERT INTO transactions (account_id, amount, memo) VALUES ('bob-checking', 1, 'not alice')")
            try await feed.collect(from: client) { $0.rows.count == 2 }
            let live = try #require(feed.rows.values.first { $0["memo"]?.stringValue == "live" })
            #expect(live["amount"] == .number("12.30"))  // numeric digits survive, never through a Double
            #expect(live["account_id"] == .string("alice-checking"))
            let extra = try await client.drain(for: .milliseconds(300))
            #expect(!extra.contains { $0["type"]?.stringValue == "changes" && $0.jsonText.contains("not alice") })
            await client.close()
        }
    }

    @Test("snapshot→live handoff with writers committing concurrently: no gap, no duplicate")
    func handoffUnderConcurrentWriters() async throws {
        try await TestServer.with { server in
            let writers = 4, perWriter = 120
            let started = Task {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for w in 0..<writers {
                        group.addTask {
                            try await server.database.withConnection { connection in
                                for n in 0..<perWriter {
                                    try await connection.query(
                                        "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(n), \("w\(w)-\(n)"))",
                                        logger: TestCluster.logger)
                                }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            }
            // Subscribe while the writers are in full flow.
            try await Task.sleep(for: .milliseconds(150))
            let client = try await TestClient.open(server)
            client.send(Self.subscribeChecking)
            try await started.value
            let expected = writers * perWriter + 1
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client, timeout: .seconds(30)) { $0.snapshotDone && $0.rows.count >= expected }
            _ = try await client.drain(for: .milliseconds(500)).map { feed.apply($0) }
            #expect(feed.rows.count == expected)
            #expect(feed.inserted.values.allSatisfy { $0 == 1 }, "a row was delivered twice")
            #expect(feed.inserted.count == expected)
            let ids = try await server.database.withConnection { connection in
                var ids = Set<String>()
                for try await id in try await connection.query(
                    "SELECT id::text FROM transactions WHERE account_id = 'alice-checking'", logger: TestCluster.logger).decode(String.self) {
                    ids.insert(uuidKey(id))
                }
                return ids
            }
            #expect(Set(feed.rows.keys) == ids)
            await client.close()
        }
    }

    @Test("an update out of a filter arrives as delete, into it as insert; a key change as delete + insert")
    func filterMembership() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server)
            client.send(["type": "subscribe", "id": "a", "collection": "accounts", "where": ["owner": "alice"]])
            var accounts = FeedCollector(sub: "a")
            try await accounts.collect(from: client) { $0.snapshotDone }
            #expect(accounts.rows.count == 2)

            try await server.database.execute("UPDATE accounts SET owner = 'bob' WHERE id = 'alice-savings'")
            try await accounts.collect(from: client) { $0.rows.count == 1 }
            #expect(accounts.log.last! == ("delete", #"{"id":"alice-savings"}"#))

            try await server.database.execute("UPDATE accounts SET owner = 'alice', name = 'back' WHERE id = 'alice-savings'")
            try await accounts.collect(from: client) { $0.rows.count == 2 }
            #expect(accounts.log.last! == ("insert", #"{"id":"alice-savings"}"#))
            #expect(accounts.rows[#"{"id":"alice-savings"}"#]?["name"] == .string("back"))

            try await server.database.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 'alice-checking'")
            try await accounts.collect(from: client) { $0.log.last?.0 == "update" }

            client.send(["type": "subscribe", "id": "n", "collection": "notifications", "where": ["user_id": "alice"]])
            var notes = FeedCollector(sub: "n")
            try await notes.collect(from: client) { $0.snapshotDone }
            try await server.database.execute("INSERT INTO notifications (id, user_id, body) VALUES (100, 'alice', 'hi')")
            try await notes.collect(from: client) { $0.rows.count == 1 }
            try await server.database.execute("UPDATE notifications SET id = 101 WHERE id = 100")
            try await notes.collect(from: client) { $0.log.count >= 3 }
            #expect(notes.log.suffix(2).map { $0.0 } == ["delete", "insert"])
            #expect(notes.log.suffix(2).map { $0.1 } == [#"{"id":100}"#, #"{"id":101}"#])
            #expect(notes.rows.keys.sorted() == [#"{"id":101}"#])
            await client.close()
        }
    }

    @Test("transactions that commit in another order than they started arrive in commit order, none lost")
    func commitOrder() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server)
            client.send(Self.subscribeChecking)
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            let url = server.database
            try await url.withConnection { first in
                try await url.withConnection { second in
                    try await url.withConnection { third in
                        try await first.query("BEGIN", logger: TestCluster.logger)
                        try await first.query("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 1, 'started first')", logger: TestCluster.logger)
                        try await third.query("BEGIN", logger: TestCluster.logger)
                        try await third.query("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 3, 'rolled back')", logger: TestCluster.logger)
                        try await second.query("BEGIN", logger: TestCluster.logger)
                        try await second.query("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 2, 'started second')", logger: TestCluster.logger)
                        try await second.query("COMMIT", logger: TestCluster.logger)
                        try await third.query("ROLLBACK", logger: TestCluster.logger)
                        try await first.query("COMMIT", logger: TestCluster.logger)
                    }
                }
            }
            try await feed.collect(from: client) { $0.rows.count == 3 }
            _ = try await client.drain(for: .milliseconds(300)).map { feed.apply($0) }
            let memos = feed.log.filter { $0.0 == "insert" }.compactMap { feed.rows[$0.1]?["memo"]?.stringValue }
            #expect(memos == ["started second", "started first"])
            #expect(feed.rows.count == 3)
            await client.close()
        }
    }

    @Test("the LISTEN connection killed mid-stream: nothing lost, nothing doubled")
    func listenConnectionKilled() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server)
            client.send(Self.subscribeChecking)
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            let total = 200
            let writer = Task {
                try await server.database.withConnection { connection in
                    for n in 0..<total {
                        try await connection.query("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(n), 'stream')", logger: TestCluster.logger)
                        if n % 20 == 0 { try await Task.sleep(for: .milliseconds(10)) }
                    }
                }
            }
            var killed = 0
            for _ in 0..<3 {
                try await Task.sleep(for: .milliseconds(60))
                killed += try await server.database.withConnection { connection in
                    var n = 0
                    for try await ok in try await connection.query("""
                        SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                        WHERE application_name = 'syncline-tail' AND datname = current_database()
                        """, logger: TestCluster.logger).decode(Bool.self) where ok { n += 1 }
                    return n
                }
            }
            try await writer.value
            #expect(killed >= 1)
            try await feed.collect(from: client, timeout: .seconds(30)) { $0.rows.count == total + 1 }
            _ = try await client.drain(for: .milliseconds(500)).map { feed.apply($0) }
            #expect(feed.inserted.count == total + 1)
            #expect(feed.inserted.values.allSatisfy { $0 == 1 })
            await client.close()
        }
    }

    @Test("a row larger than NOTIFY's 8,000-byte payload limit is delivered whole")
    func largeRow() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server)
            client.send(Self.subscribeChecking)
            client.send(["type": "subscribe", "id": "topic", "topic": "user:alice"])
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            let memo = String(repeating: "ü0123456789", count: 2_000)  // 24,000 bytes of UTF-8
            try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 1, \(memo))")
            try await feed.collect(from: client) { $0.rows.count == 2 }
            #expect(feed.rows.values.contains { $0["memo"] == .string(memo) })
            try await server.database.execute("SELECT syncline.publish('user:alice', jsonb_build_object('blob', repeat('x', 20000)))")
            var message: JSONValue
            repeat { message = try await client.next() } while message["type"]?.stringValue != "message"
            #expect(message["payload"]?["blob"]?.stringValue?.count == 20_000)
            #expect(message["topic"] == .string("user:alice"))
            await client.close()
        }
    }

    @Test("writes by any Postgres client (psql) reach subscribers: insert, update, delete")
    func psqlWrites() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server)
            client.send(Self.subscribeChecking)
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            _ = try await server.database.psql("INSERT INTO transactions (id, account_id, amount, memo) VALUES ('6f1c2a4e-0000-4000-8000-000000000001', 'alice-checking', 5.5, 'psql')")
            try await feed.collect(from: client) { $0.log.last?.0 == "insert" }
            _ = try await server.database.psql("UPDATE transactions SET memo = 'psql edit' WHERE id = '6f1c2a4e-0000-4000-8000-000000000001'")
            try await feed.collect(from: client) { $0.log.last?.0 == "update" }
            #expect(feed.rows[uuidKey("6f1c2a4e-0000-4000-8000-000000000001")]?["memo"] == .string("psql edit"))
            _ = try await server.database.psql("DELETE FROM transactions WHERE id = '6f1c2a4e-0000-4000-8000-000000000001'")
            try await feed.collect(from: client) { $0.log.last?.0 == "delete" }
            #expect(feed.rows.count == 1)
            _ = try await server.database.psql("TRUNCATE notifications")  // other collection: no effect on this feed
            await client.close()
        }
    }

    @Test("TRUNCATE of a tracked table restarts its feeds with a reset snapshot")
    func truncateResets() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server)
            client.send(["type": "subscribe", "id": "n", "collection": "notifications", "where": ["user_id": "alice"]])
            var feed = FeedCollector(sub: "n")
            try await feed.collect(from: client) { $0.snapshotDone }
            try await server.database.execute("INSERT INTO notifications (user_id, body) VALUES ('alice', 'one')")
            try await feed.collect(from: client) { $0.rows.count == 1 }
            _ = try await server.database.psql("TRUNCATE notifications")
            try await feed.collect(from: client) { $0.modes.count == 2 && $0.snapshotDone }
            #expect(feed.modes == ["snapshot", "reset"])
            #expect(feed.rows.isEmpty)
            await client.close()
        }
    }

    @Test("topics: an empty snapshot, then published messages; another user's topic is forbidden")
    func topics() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server)
            client.send(["type": "subscribe", "id": "me", "topic": "user:alice"])
            let subscribed = try await client.next("subscribed")
            #expect(subscribed["mode"] == .string("snapshot"))
            let snapshot = try await client.next("snapshot")
            #expect(snapshot["rows"] == .array([]))
            #expect(snapshot["done"] == .bool(true))
            #expect(try await client.next("changes")["live"] == .bool(true))  // caught up (protocol §3.4)
            try await server.database.execute(#"SELECT syncline.publish('user:alice', '{"n": 1.50}')"#)
            let message = try await client.next("message")
            #expect(message["sub"] == .string("me"))
            #expect(message["payload"]?["n"] == .number("1.50"))
            client.send(["type": "subscribe", "id": "them", "topic": "user:bob"])
            let refused = try await client.next("error")
            #expect(refused["code"] == .string("forbidden"))
            #expect(refused["ref"] == .string("them"))
            await client.close()
        }
    }

    @Test("subscribers of the same feed share one encoded body")
    func sharedFeed() async throws {
        try await TestServer.with { server in
            let one = try await TestClient.open(server)
            let two = try await TestClient.open(server)
            for client in [one, two] {
                client.send(Self.subscribeChecking)
                _ = try await client.next("subscribed")
                _ = try await client.next("snapshot")
            }
            try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 7, 'both')")
            let a = try await one.next("changes")
            let b = try await two.next("changes")
            #expect(a == b)
            await one.close()
            await two.close()
        }
    }

    @Test("a large snapshot is chunked; after `unsubscribed` nothing more is sent for that feed")
    func unsubscribeDuringSnapshot() async throws {
        try await TestServer.with(configure: { $0.server.snapshotChunkRows = 50 }) { server in
            try await server.database.execute("""
                INSERT INTO transactions (account_id, amount, memo)
                SELECT 'alice-checking', n, repeat('x', 200) FROM generate_series(1, 5000) AS n
                """)
            let client = try await TestClient.open(server)
            client.send(Self.subscribeChecking)
            _ = try await client.next("subscribed")
            let first = try await client.next("snapshot")
            #expect(first["done"] == .bool(false))
            client.send(["type": "unsubscribe", "id": "t"])
            // Chunks already queued may come first (under load, for seconds); then nothing more.
            _ = try await client.next("unsubscribed", timeout: .seconds(30), skipping: ["snapshot", "changes"])
            let afterUnsubscribed = try await client.drain(for: .seconds(2)).filter {
                ["snapshot", "changes"].contains($0["type"]?.stringValue ?? "")
            }
            #expect(afterUnsubscribed.isEmpty, "\(afterUnsubscribed.count) messages after `unsubscribed`")

            // A full read of the same feed: every row once, in chunks of 50, only the last done.
            client.send(["type": "subscribe", "id": "again", "collection": "transactions", "where": ["account_id": "alice-checking"]])
            var feed = FeedCollector(sub: "again")
            var chunks = 0
            let deadline = ContinuousClock.now + .seconds(30)
            while !feed.snapshotDone && ContinuousClock.now < deadline {
                let message = try await client.next()
                if message["type"]?.stringValue == "snapshot" {
                    chunks += 1
                    if case .array(let rows)? = message["rows"] { #expect(rows.count <= 50) }
                }
                feed.apply(message)
            }
            #expect(feed.rows.count == 5001)
            #expect(feed.inserted.values.allSatisfy { $0 == 1 })
            #expect(chunks >= 100)
            await client.close()
        }
    }
}
