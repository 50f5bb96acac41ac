import Foundation
import PostgresNIO
import SynclineProtocol
import Testing

/// Resuming with `after`: from the ring, from the change log (shared scans, page boundaries), and
/// after the history was pruned.
extension ChangeFeedTests {
    @Test("resume with `after` delivers exactly the missed changes", arguments: [20_000, 1])
    func resumeDeliversExactlyMissed(ringCapacity: Int) async throws {
        try await TestServer.with(configure: { $0.server.ringCapacity = ringCapacity }) { server in
            var client = try await TestClient.open(server, clientID: "resumer")
            client.send(Self.subscribeChecking)
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            let cursor = try #require(feed.cursor)
            await client.close()

            for n in 0..<5 {
                try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(n), 'missed')")
            }
            try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-savings', 1, 'other feed')")
            try await Task.sleep(for: .milliseconds(200))  // let the tail move on, out of the ring when it is tiny

            client = try await TestClient.open(server, clientID: "resumer")
            client.send(TestClient.encode([
                "type": "subscribe", "id": "t", "collection": "transactions", "where": ["account_id": "alice-checking"], "after": cursor,
            ]))
            let subscribed = try await client.next("subscribed")
            #expect(subscribed["mode"] == .string("resume"))
            #expect(subscribed["cursor"] == .string(cursor))
            var resumed = FeedCollector(sub: "t")
            try await resumed.collect(from: client) { $0.log.count >= 5 }
            _ = try await client.drain(for: .milliseconds(400)).map { resumed.apply($0) }
            #expect(resumed.log.count == 5)
            #expect(resumed.log.allSatisfy { $0.0 == "insert" })
            #expect(resumed.rows.values.allSatisfy { $0["memo"] == .string("missed") })
            #expect(position(resumed.cursor) > position(cursor))

            try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 9, 'live again')")
            try await resumed.collect(from: client) { $0.log.count == 6 }
            await client.close()
        }
    }

    @Test("many clients resuming from cursors older than the ring share the log scan: each gets exactly its missed rows")
    func resumeStormFromChangeLog() async throws {
        // A one-record ring sends every resume to the change log, and three-record pages make the
        // scan cross many pages with members on three feeds and two cursors.
        try await TestServer.with(configure: {
            $0.server.ringCapacity = 1
            $0.server.catchUpPageRecords = 3
        }) { server in
            let feeds = [("alice", "alice-checking"), ("alice", "alice-savings"), ("bob", "bob-checking")]
            func subscribe(_ account: String, after cursor: String? = nil) -> String {
                var message: [String: Any] = [
                    "type": "subscribe", "id": "t", "collection": "transactions", "where": ["account_id": account],
                ]
                if let cursor { message["after"] = cursor }
                return TestClient.encode(message)
            }
            func insert(_ memo: String) async throws {
                for (_, account) in feeds {
                    try await server.database.execute(
                        "INSERT INTO transactions (account_id, amount, memo) VALUES (\(account), 1, \(memo))")
                }
            }
            // Two cohorts per feed: the early one misses 7 rows, the late one the last 4.
            var cursors: [(sub: String, account: String, cursor: String, missed: Int)] = []
            for (cohort, missed) in [(0, 7), (1, 4)] {
                for (sub, account) in feeds {
                    for _ in 0..<4 {
                        let client = try await TestClient.open(server, sub: sub)
                        client.send(subscribe(account))
                        var feed = FeedCollector(sub: "t")
                        try await feed.collect(from: client) { $0.snapshotDone }
                        cursors.append((sub, account, try #require(feed.cursor), missed))
                        await client.close()
                    }
                }
                for n in 0..<(cohort == 0 ? 3 : 4) { try await insert("missed \(cohort)-\(n)") }
            }
            try await Task.sleep(for: .milliseconds(200))  // the tail moves on; the ring holds one record

            // All 24 reconnect at once.
            var clients: [TestClient] = []
            for entry in cursors { clients.append(try await TestClient.open(server, sub: entry.sub)) }
            for (client, entry) in zip(clients, cursors) { client.send(subscribe(entry.account, after: entry.cursor)) }
            for (client, entry) in zip(clients, cursors) {
                var resumed = FeedCollector(sub: "t")
                try await resumed.collect(from: client) { $0.log.count >= entry.missed }
                _ = try await client.drain(for: .milliseconds(200)).map { resumed.apply($0) }
                #expect(resumed.modes == ["resume"])
                #expect(resumed.log.count == entry.missed, "\(entry.account) from \(entry.cursor)")
                #expect(Set(resumed.log.map(\.1)).count == entry.missed, "a row was delivered twice")
                #expect(resumed.rows.values.allSatisfy { $0["account_id"] == .string(entry.account) })
                let memos = resumed.rows.values.compactMap { $0["memo"]?.stringValue }
                #expect(memos.allSatisfy { $0.hasPrefix("missed") })
                #expect(memos.filter { $0.hasPrefix("missed 1-") }.count == 4)
            }
            // And every one of them is live afterwards.
            try await insert("live")
            for (client, entry) in zip(clients, cursors) {
                var live = FeedCollector(sub: "t")
                try await live.collect(from: client) { $0.log.count == 1 }
                #expect(live.rows.values.first?["account_id"] == .string(entry.account))
                #expect(live.rows.values.first?["memo"] == .string("live"))
            }
            for client in clients { await client.close() }
        }
    }

    @Test("a log catch-up page never ends inside a transaction: its changes come in one message, under its last position")
    func catchUpPagesEndOnTransactions() async throws {
        // Two-record pages and a one-record ring: the 5-row transaction crosses a page boundary.
        // Found by scripts/chaos: a page cut inside it sent two `changes` with a cursor mid-way.
        try await TestServer.with(configure: {
            $0.server.ringCapacity = 1
            $0.server.catchUpPageRecords = 2
        }) { server in
            var client = try await TestClient.open(server, clientID: "paged")
            client.send(Self.subscribeChecking)
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            let cursor = try #require(feed.cursor)
            await client.close()

            try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 1, 'single')")
            try await server.database.execute("""
                INSERT INTO transactions (account_id, amount, memo)
                SELECT 'alice-checking', n, 'bulk' FROM generate_series(1, 5) n
                """)
            try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 2, 'after')")
            try await Task.sleep(for: .milliseconds(200))

            client = try await TestClient.open(server, clientID: "paged")
            client.send(TestClient.encode([
                "type": "subscribe", "id": "t", "collection": "transactions", "where": ["account_id": "alice-checking"], "after": cursor,
            ]))
            var bulkMessages: [Int] = []  // rows of the bulk transaction per `changes` message carrying any
            var rows = 0
            let deadline = ContinuousClock.now + .seconds(20)
            while rows < 7, ContinuousClock.now < deadline {
                let message = try await client.next(timeout: .seconds(5))
                guard message["type"]?.stringValue == "changes", message["sub"]?.stringValue == "t",
                      case .array(let changes)? = message["changes"] else { continue }
                rows += changes.count
                let bulk = changes.filter { $0["row"]?["memo"]?.stringValue == "bulk" }.count
                if bulk > 0 { bulkMessages.append(bulk) }
            }
            #expect(rows == 7)
            #expect(bulkMessages == [5], "the bulk transaction was split across messages: \(bulkMessages)")
            await client.close()
        }
    }

    @Test("a topic and a collection feed on one connection both resume from the change log")
    func resumeTopicAndCollectionFromChangeLog() async throws {
        try await TestServer.with(configure: {
            $0.server.ringCapacity = 1
            $0.server.catchUpPageRecords = 2
        }) { server in
            var client = try await TestClient.open(server, clientID: "mixed")
            client.send(["type": "subscribe", "id": "me", "topic": "user:alice"])
            _ = try await client.next("subscribed")
            let topicCursor = try #require(try await client.next("snapshot")["cursor"]?.stringValue)
            client.send(Self.subscribeChecking)
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            let feedCursor = try #require(feed.cursor)
            await client.close()

            for n in 1...3 {
                try await server.database.execute(
                    "SELECT syncline.publish('user:alice', jsonb_build_object('n', \(n)))",
                    "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(n), 'missed')")
            }
            try await Task.sleep(for: .milliseconds(200))

            client = try await TestClient.open(server, clientID: "mixed")
            client.send(TestClient.encode(["type": "subscribe", "id": "me", "topic": "user:alice", "after": topicCursor]))
            client.send(TestClient.encode([
                "type": "subscribe", "id": "t", "collection": "transactions", "where": ["account_id": "alice-checking"], "after": feedCursor,
            ]))
            var resumed = FeedCollector(sub: "t")
            var payloads: [String] = []
            let deadline = ContinuousClock.now + .seconds(20)
            while resumed.log.count < 3 || payloads.count < 3, ContinuousClock.now < deadline {
                let message = try await client.next(timeout: .seconds(5))
                if message["type"]?.stringValue == "message" { payloads.append(message["payload"]?.jsonText ?? "") }
                resumed.apply(message)
            }
            for message in try await client.drain(for: .milliseconds(300)) {
                if message["type"]?.stringValue == "message" { payloads.append(message["payload"]?.jsonText ?? "") }
                resumed.apply(message)
            }
            #expect(payloads == [#"{"n":1}"#, #"{"n":2}"#, #"{"n":3}"#])
            #expect(resumed.log.count == 3)
            #expect(resumed.rows.values.allSatisfy { $0["memo"] == .string("missed") })
            await client.close()
        }
    }

    @Test("resume after the history was pruned answers `reset` with a fresh snapshot")
    func resetAfterPrune() async throws {
        try await TestServer.with { server in
            var client = try await TestClient.open(server, clientID: "pruned")
            client.send(Self.subscribeChecking)
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            let cursor = try #require(feed.cursor)
            await client.close()
            for n in 0..<3 {
                try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(n), 'gone')")
            }
            try await server.database.execute("SELECT syncline.prune(keep_count => 0)")
            client = try await TestClient.open(server, clientID: "pruned")
            client.send(TestClient.encode([
                "type": "subscribe", "id": "t", "collection": "transactions", "where": ["account_id": "alice-checking"], "after": cursor,
            ]))
            var reset = FeedCollector(sub: "t")
            try await reset.collect(from: client) { $0.snapshotDone }
            #expect(reset.modes == ["reset"])
            #expect(reset.rows.count == 4)
            #expect(position(reset.cursor) > position(cursor))
            await client.close()
        }
    }
}
