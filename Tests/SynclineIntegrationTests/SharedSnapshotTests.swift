import Foundation
import PostgresNIO
import SynclineProtocol
import SynclineServer
import Testing

/// Shared snapshots (ADR 0008) end to end: real Postgres, real server, real WebSocket clients.
@Suite("Shared snapshots")
struct SharedSnapshotTests {
    static func subscribe(_ account: String, id: String = "t") -> String {
        TestClient.encode(["type": "subscribe", "id": id, "collection": "transactions", "where": ["account_id": account]])
    }

    /// Connects and says hello with an unsigned token carrying `claims` besides `sub`.
    static func open(_ server: TestServer, sub: String = "alice", claims: [(String, JSONValue)]) async throws -> TestClient {
        let client = try await TestClient.connect(server)
        client.send(["type": "hello", "client_id": "c-\(UUID().uuidString.prefix(12))",
                     "token": Authenticator.unsignedToken(sub: sub, extraClaims: claims)])
        let welcome = try await client.next(timeout: .seconds(20))
        guard welcome["type"]?.stringValue == "welcome" else { throw TestFailure("expected welcome, got \(welcome.jsonText)") }
        return client
    }

    /// Makes every policy check of `transactions` take `seconds` (so a read is in flight long
    /// enough to arrive during it) and refuse tokens whose `jti` is `banned`.
    /// (Async queries, not `psql`: a blocking process wait would hold one of the few cooperative
    /// threads every server of the parallel suite runs on.)
    static func slowPolicy(_ server: TestServer, seconds: Double) async throws {
        try await server.database.execute(PostgresQuery(unsafeSQL: """
            CREATE OR REPLACE FUNCTION demo.transactions_policy(filter jsonb) RETURNS boolean
            LANGUAGE sql VOLATILE AS $$
                SELECT pg_sleep(\(seconds)) IS NOT NULL
                   AND coalesce(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'jti', '') <> 'banned'
                   AND filter ? 'account_id' AND EXISTS (
                       SELECT 1 FROM public.accounts a WHERE a.id = filter ->> 'account_id' AND a.owner = demo.current_sub())
            $$
            """))
    }

    /// Waits until a snapshot read is checking policies in the server's database (so the test
    /// knows a read is in flight, however loaded the machine is).
    static func waitForRead(_ server: TestServer) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        try await server.database.withConnection { connection in
            while true {
                var active = 0
                for try await n in try await connection.query("""
                    SELECT count(*)::int FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'
                       AND query LIKE '%syncline.authorize_many%' AND pid <> pg_backend_pid()
                    """, logger: TestCluster.logger).decode(Int.self) { active = n }
                if active > 0 { return }
                guard ContinuousClock.now < deadline else { throw TestFailure("no snapshot read started") }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    static func keys(_ server: TestServer, account: String) async throws -> Set<String> {
        try await server.database.withConnection { connection in
            var ids = Set<String>()
            for try await id in try await connection.query(
                "SELECT id::text FROM transactions WHERE account_id = \(account)", logger: TestCluster.logger).decode(String.self) {
                ids.insert(uuidKey(id))
            }
            return ids
        }
    }

    @Test("many subscribers of one feed: identical complete snapshots from few reads, then every change once")
    func manySubscribersOneFeed() async throws {
        try await TestServer.with(configure: { $0.server.snapshotShareWindowMilliseconds = 1_000 }) { server in
            let n = 24
            var clients: [TestClient] = []
            for i in 0..<n {
                // Same user, different token identity and age: they share.
                clients.append(try await Self.open(server, claims: [("jti", .string("j\(i)")), ("iat", .number("\(1_700_000_000 + i)"))]))
            }
            // Writers commit while the subscribes arrive and the reads run.
            let writes = 60
            let writer = Task {
                try await server.database.withConnection { connection in
                    for k in 0..<writes {
                        try await connection.query(
                            "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(k), \("live-\(k)"))",
                            logger: TestCluster.logger)
                        try await Task.sleep(for: .milliseconds(10))
                    }
                }
            }
            for client in clients { client.send(Self.subscribe("alice-checking")) }
            try await writer.value
            let expected = try await Self.keys(server, account: "alice-checking")
            var snapshotCursors: [String] = []
            var snapshots: [[String: JSONValue]] = []
            for client in clients {
                var feed = FeedCollector(sub: "t")
                try await feed.collect(from: client, timeout: .seconds(40)) { $0.snapshotDone }
                snapshotCursors.append(feed.cursor ?? "?")
                snapshots.append(feed.rows)
                try await feed.collect(from: client, timeout: .seconds(40)) { $0.rows.count >= expected.count && $0.liveMarkers > 0 }
                _ = try await client.drain(for: .milliseconds(200)).map { feed.apply($0) }
                #expect(feed.modes == ["snapshot"])
                #expect(Set(feed.rows.keys) == expected)
                #expect(feed.inserted.values.allSatisfy { $0 == 1 }, "a row was delivered twice")
                #expect(feed.liveMarkers == 1)
            }
            // Sharers of one read got the same snapshot at the same position: fewer positions
            // than subscribers means reads were shared (the window holds all 24 subscribes).
            let positions = Set(snapshotCursors)
            let reads = server.app.snapshotReads
            #expect(reads.sharers == n)
            #expect(reads.reads < n / 2, "\(reads.reads) reads for \(n) subscribers")
            #expect(positions.count <= reads.reads)
            for (cursor, rows) in zip(snapshotCursors, snapshots) {
                let first = snapshotCursors.firstIndex(of: cursor)!
                #expect(rows == snapshots[first], "sharers of one read saw different rows")
            }
            for client in clients { await client.close() }
        }
    }

    @Test("every sharer's policy is checked: a refused one gets forbidden, the others their rows")
    func policyPerSharer() async throws {
        try await TestServer.with(configure: { $0.server.snapshotShareWindowMilliseconds = 1_000 }) { server in
            try await Self.slowPolicy(server, seconds: 0)
            // Same claims but for `jti`: one read, checked three times.
            let a = try await Self.open(server, claims: [("jti", .string("a"))])
            let banned = try await Self.open(server, claims: [("jti", .string("banned"))])
            let c = try await Self.open(server, claims: [("jti", .string("c"))])
            // Other claims: their own reads; bob may not read alice's feed.
            let bob = try await Self.open(server, sub: "bob", claims: [])
            let bobOwn = try await Self.open(server, sub: "bob", claims: [("jti", .string("x"))])
            for client in [a, banned, c, bob] { client.send(Self.subscribe("alice-checking")) }
            bobOwn.send(Self.subscribe("bob-checking"))
            let before = server.app.snapshotReads

            let refused = try await banned.next("error")
            #expect(refused["code"] == .string("forbidden"))
            #expect(refused["ref"] == .string("t"))
            let bobRefused = try await bob.next("error")
            #expect(bobRefused["code"] == .string("forbidden"))

            var cursors: [String] = []
            let alices = try await Self.keys(server, account: "alice-checking")
            for client in [a, c] {
                var feed = FeedCollector(sub: "t")
                try await feed.collect(from: client) { $0.snapshotDone }
                #expect(Set(feed.rows.keys) == alices)
                cursors.append(feed.cursor ?? "?")
            }
            #expect(cursors[0] == cursors[1])
            var own = FeedCollector(sub: "t")
            try await own.collect(from: bobOwn) { $0.snapshotDone }
            let bobs = try await Self.keys(server, account: "bob-checking")
            #expect(Set(own.rows.keys) == bobs)
            // Three reads: alice's three tokens (one refused) in one, bob on alice's, bob on his own.
            let reads = server.app.snapshotReads
            #expect(reads.reads - before.reads == 3)
            #expect(reads.sharers - before.sharers == 5)
            #expect(own.rows.values.allSatisfy { $0["account_id"] == .string("bob-checking") })

            // Nothing of alice's reached the refused ones.
            for client in [banned, bob] {
                let extra = try await client.drain(for: .milliseconds(300))
                #expect(!extra.contains { ["subscribed", "snapshot", "changes"].contains($0["type"]?.stringValue ?? "") })
            }
            for client in [a, banned, c, bob, bobOwn] { await client.close() }
        }
    }

    @Test("a subscribe during a read waits for the next read of its feed, and misses nothing")
    func lateArrivalGetsTheNextRead() async throws {
        try await TestServer.with(configure: { $0.server.snapshotShareWindowMilliseconds = 0 }) { server in
            try await Self.slowPolicy(server, seconds: 3)
            let early = try await TestClient.open(server)
            let late = try await Self.open(server, claims: [("jti", .string("late"))])
            early.send(Self.subscribe("alice-checking"))
            try await Self.waitForRead(server)  // the read has its position and checks the policy
            try await server.database.execute(
                "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 7, 'between')")
            late.send(Self.subscribe("alice-checking"))
            let expected = try await Self.keys(server, account: "alice-checking")
            var first = FeedCollector(sub: "t"), second = FeedCollector(sub: "t")
            try await first.collect(from: early, timeout: .seconds(30)) { $0.snapshotDone }
            let firstSnapshot = first.rows.count
            try await second.collect(from: late, timeout: .seconds(30)) { $0.snapshotDone }
            // The late one was read after the insert; the early one before it, and gets it live.
            #expect(position(second.cursor) > position(first.cursor))
            #expect(server.app.snapshotReads == SnapshotReadStats(reads: 2, sharers: 2))
            #expect(firstSnapshot == expected.count - 1)
            #expect(Set(second.rows.keys) == expected)
            try await first.collect(from: early) { $0.rows.count == expected.count }
            for (collected, client) in [(first, early), (second, late)] {
                var feed = collected
                _ = try await client.drain(for: .milliseconds(300)).map { feed.apply($0) }
                #expect(Set(feed.rows.keys) == expected)
                #expect(feed.inserted.values.allSatisfy { $0 == 1 })
            }
            await early.close()
            await late.close()
        }
    }

    @Test("unsubscribe and close during a shared read leave the other sharers and the server intact")
    func leavingMidShare() async throws {
        try await TestServer.with(configure: { $0.server.snapshotShareWindowMilliseconds = 1_000 }) { server in
            try await Self.slowPolicy(server, seconds: 1)
            let stays = try await Self.open(server, claims: [("jti", .string("1"))])
            let leaves = try await Self.open(server, claims: [("jti", .string("2"))])
            let closes = try await Self.open(server, claims: [("jti", .string("3"))])
            for client in [stays, leaves, closes] { client.send(Self.subscribe("alice-checking")) }
            try await Self.waitForRead(server)  // window closed: the read is checking policies
            leaves.send(["type": "unsubscribe", "id": "t"])
            await closes.close()
            #expect(try await leaves.next("unsubscribed")["id"] == .string("t"))
            let after = try await leaves.drain(for: .seconds(1))
            #expect(!after.contains { ["subscribed", "snapshot", "changes"].contains($0["type"]?.stringValue ?? "") },
                    "a message for the subscription after `unsubscribed`: \(after.map(\.jsonText))")

            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: stays) { $0.snapshotDone && $0.liveMarkers == 1 }
            let alices = try await Self.keys(server, account: "alice-checking")
            #expect(Set(feed.rows.keys) == alices)
            #expect(server.app.snapshotReads == SnapshotReadStats(reads: 1, sharers: 3))

            // The same id again on the connection that left: a fresh read, then live.
            leaves.send(Self.subscribe("alice-checking"))
            var again = FeedCollector(sub: "t")
            try await again.collect(from: leaves) { $0.snapshotDone && $0.liveMarkers == 1 }
            #expect(server.app.snapshotReads == SnapshotReadStats(reads: 2, sharers: 4))
            try await server.database.execute(
                "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 8, 'after')")
            let expected = try await Self.keys(server, account: "alice-checking")
            try await feed.collect(from: stays) { $0.rows.count == expected.count }
            try await again.collect(from: leaves) { $0.rows.count == expected.count }
            await stays.close()
            await leaves.close()
        }
    }

    @Test("a sharer that stops reading is closed after the stall time; the others get the whole snapshot")
    func stalledSharer() async throws {
        try await TestServer.with(configure: {
            // The two subscribes are sent back to back, but a machine loaded by the whole suite may
            // read them seconds apart: the window must cover that for them to share one read.
            $0.server.snapshotShareWindowMilliseconds = 5_000
            $0.server.snapshotShareStallMilliseconds = 1_000
            $0.server.heartbeatMilliseconds = 120_000  // the stall rule, not the ping timeout, must act
        }) { server in
            // ~8 MB of rows: more than the server's socket send buffer (4 MiB at most here) plus a
            // 4 KiB receive buffer of a client that does not read.
            let rows = 4_000
            try await server.database.execute("""
                INSERT INTO transactions (account_id, amount, memo)
                SELECT 'alice-checking', g, repeat('x', 2000) FROM generate_series(1, \(rows)) AS g
                """)
            let expected = rows + 1
            // Both raw: no JSON decoding of megabytes on the test's threads (other suites share them).
            let reader = try await RawWebSocket.connect(port: server.port)
            let stalled = try await RawWebSocket.connect(port: server.port, receiveBuffer: 4096)
            for (n, client) in [reader, stalled].enumerated() {
                try await client.sendText(TestClient.encode(["type": "hello", "client_id": "raw-\(n)", "token": TestClient.unsignedToken("alice")]))
                #expect(try await client.next()?.text.contains("welcome") == true)
            }
            try await stalled.setReading(false)
            try await stalled.sendText(Self.subscribe("alice-checking"))
            try await reader.sendText(Self.subscribe("alice-checking"))
            // Without the stall limit the reader would wait for the stalled one forever.
            var received = 0
            var done = false
            let deadline = ContinuousClock.now + .seconds(90)
            while !done, ContinuousClock.now < deadline {
                guard let frame = try await reader.next(timeout: .seconds(60)) else { break }
                let text = frame.text
                guard text.hasPrefix(#"{"type":"snapshot""#) else { continue }
                received += text.components(separatedBy: #""alice-checking""#).count - 1  // once per row (its account_id)
                done = text.contains(#""done":true"#)
            }
            #expect(done)
            #expect(received == expected)
            #expect(server.app.snapshotReads == SnapshotReadStats(reads: 1, sharers: 2))
            // The stalled one was closed: 4008 (if its close frame got through before the socket).
            try await stalled.setReading(true)
            let close = try await stalled.closeFrame(timeout: .seconds(30))
            // (closeFrame returns a close frame, or nil only once the server ended the connection.)
            #expect(close == nil || close?.closeCode == 4008, "closed with \(close?.closeCode.map(String.init) ?? "nothing")")
            await reader.close()
            await stalled.close()
        }
    }
}
