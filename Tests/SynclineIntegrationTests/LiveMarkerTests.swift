import Foundation
import SynclineProtocol
import Testing

/// The `"live": true` marker (protocol §3.4): every start of a feed — snapshot, resume from the
/// ring or the change log, reset, restart — is followed by exactly one `changes` carrying it, after
/// every catch-up message and before anything live.
@Suite("Live marker")
struct LiveMarkerTests {
    static func subscribe(_ id: String = "t", account: String = "alice-checking", after: String? = nil) -> String {
        var message: [String: Any] = ["type": "subscribe", "id": id, "collection": "transactions", "where": ["account_id": account]]
        if let after { message["after"] = after }
        return TestClient.encode(message)
    }

    static func insert(_ server: TestServer, _ n: Int, memo: String, account: String = "alice-checking") async throws {
        for i in 0..<n {
            try await server.database.execute(
                "INSERT INTO transactions (account_id, amount, memo) VALUES (\(account), \(i), \(memo))")
        }
    }

    /// Feeds `feed` what arrives within `window`, then checks that nothing more was marked live.
    static func expectNoSecondMarker(_ feed: inout FeedCollector, _ client: TestClient,
                                     window: Duration = .milliseconds(400)) async throws {
        for message in try await client.drain(for: window) { feed.apply(message) }
        #expect(feed.liveMarkers == 1, "feed \(feed.sub): \(feed.liveMarkers) live markers")
    }

    @Test("a fresh snapshot is followed at once by one empty live `changes` at the snapshot's cursor")
    func afterSnapshot() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server)
            client.send(Self.subscribe())
            _ = try await client.next("subscribed")
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            // Nothing commits meanwhile, so the marker is the very next message (not an idle
            // advance seconds later).
            let marker = try await client.next(timeout: .seconds(5))
            #expect(marker["type"] == .string("changes"))
            #expect(marker["live"] == .bool(true))
            #expect(marker["changes"] == .array([]))
            #expect(marker["cursor"]?.stringValue == feed.cursor)
            feed.apply(marker)

            try await Self.insert(server, 2, memo: "live")
            try await feed.collect(from: client) { $0.log.count >= 3 }  // snapshot row + 2
            try await Self.expectNoSecondMarker(&feed, client)
            #expect(feed.atLive?.snapshotDone == true)
            #expect(feed.atLive?.ops == 1)  // the marker came after the snapshot, before the inserts
            await client.close()
        }
    }

    /// Resumes `t` after a cursor with `missed` changes and returns the collector once caught up
    /// and one live change more has arrived.
    static func resume(_ server: TestServer, missed: Int) async throws -> FeedCollector {
        var client = try await TestClient.open(server, clientID: "live-resumer")
        client.send(subscribe())
        var first = FeedCollector(sub: "t")
        try await first.collect(from: client) { $0.liveMarkers == 1 }
        let cursor = try #require(first.cursor)
        await client.close()

        try await insert(server, missed, memo: "missed")
        try await insert(server, 1, memo: "other feed", account: "alice-savings")
        try await Task.sleep(for: .milliseconds(200))  // the tail moves on (out of a tiny ring)

        client = try await TestClient.open(server, clientID: "live-resumer")
        client.send(subscribe(after: cursor))
        let subscribed = try await client.next("subscribed")
        #expect(subscribed["mode"] == .string("resume"))
        var feed = FeedCollector(sub: "t")
        try await feed.collect(from: client) { $0.liveMarkers >= 1 }
        try await insert(server, 1, memo: "after")
        try await feed.collect(from: client) { $0.log.count >= missed + 1 }
        try await expectNoSecondMarker(&feed, client)
        #expect(feed.log.count == missed + 1)
        #expect(feed.inserted.values.allSatisfy { $0 == 1 })
        await client.close()
        return feed
    }

    @Test("resume from the ring: the catch-up's changes, the last of them marked live, then live changes")
    func resumeFromRing() async throws {
        try await TestServer.with { server in
            let feed = try await Self.resume(server, missed: 5)
            #expect(feed.atLive?.ops == 5)  // every missed change at or before the marker, none after
        }
    }

    @Test("resume from the change log over several pages: the marker follows the last page")
    func resumeFromLog() async throws {
        try await TestServer.with(configure: {
            $0.server.ringCapacity = 1
            $0.server.catchUpPageRecords = 2
        }) { server in
            let feed = try await Self.resume(server, missed: 7)
            #expect(feed.atLive?.ops == 7)
            // Pages of two records: the catch-up took several `changes` before the marked one.
            #expect((feed.atLive?.changesMessages ?? 0) >= 3)
        }
    }

    @Test("resume with nothing missed: one empty live `changes` at the `after` cursor")
    func resumeAtHead() async throws {
        try await TestServer.with { server in
            var client = try await TestClient.open(server, clientID: "at-head")
            client.send(Self.subscribe())
            var first = FeedCollector(sub: "t")
            try await first.collect(from: client) { $0.liveMarkers == 1 }
            let cursor = try #require(first.cursor)
            await client.close()

            client = try await TestClient.open(server, clientID: "at-head")
            client.send(Self.subscribe(after: cursor))
            _ = try await client.next("subscribed")
            let marker = try await client.next(timeout: .seconds(5))
            #expect(marker["type"] == .string("changes"))
            #expect(marker["live"] == .bool(true))
            #expect(marker["changes"] == .array([]))
            #expect(marker["cursor"] == .string(cursor))
            var feed = FeedCollector(sub: "t")
            feed.apply(marker)
            try await Self.expectNoSecondMarker(&feed, client)
            await client.close()
        }
    }

    @Test("topic feeds: marked live after the empty snapshot, and after replayed messages on resume")
    func topic() async throws {
        try await TestServer.with { server in
            var client = try await TestClient.open(server, clientID: "live-topic")
            client.send(["type": "subscribe", "id": "me", "topic": "user:alice"])
            var feed = FeedCollector(sub: "me")
            try await feed.collect(from: client) { $0.liveMarkers == 1 }
            #expect(feed.atLive?.snapshotDone == true)
            try await server.database.execute(#"SELECT syncline.publish('user:alice', '{"n": 0}')"#)
            try await feed.collect(from: client) { $0.payloads.count == 1 }
            try await Self.expectNoSecondMarker(&feed, client)
            let cursor = try #require(feed.cursor)
            await client.close()

            for n in 1...3 {
                try await server.database.execute("SELECT syncline.publish('user:alice', jsonb_build_object('n', \(n)))")
            }
            client = try await TestClient.open(server, clientID: "live-topic")
            client.send(TestClient.encode(["type": "subscribe", "id": "me", "topic": "user:alice", "after": cursor]))
            var resumed = FeedCollector(sub: "me")
            try await resumed.collect(from: client) { $0.liveMarkers == 1 }
            #expect(resumed.modes == ["resume"])
            #expect(resumed.payloads == [#"{"n":1}"#, #"{"n":2}"#, #"{"n":3}"#])
            #expect(resumed.atLive?.payloads == 3)
            try await server.database.execute(#"SELECT syncline.publish('user:alice', '{"n": 4}')"#)
            try await resumed.collect(from: client) { $0.payloads.count == 4 }
            try await Self.expectNoSecondMarker(&resumed, client)
            await client.close()
        }
    }

    @Test("reset (a cursor of another epoch): marked live after the fresh snapshot")
    func reset() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server)
            client.send(Self.subscribe(after: "0d5e3b9a7c1f2e84.1"))
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.liveMarkers == 1 }
            #expect(feed.modes == ["reset"])
            #expect(feed.atLive?.snapshotDone == true)
            try await Self.expectNoSecondMarker(&feed, client)
            await client.close()
        }
    }

    @Test("a restart of a live feed (TRUNCATE) is marked live again, once")
    func restart() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server)
            client.send(["type": "subscribe", "id": "n", "collection": "notifications", "where": ["user_id": "alice"]])
            var feed = FeedCollector(sub: "n")
            try await feed.collect(from: client) { $0.liveMarkers == 1 }
            _ = try await server.database.psql("TRUNCATE notifications")
            try await feed.collect(from: client) { $0.modes.count == 2 && $0.liveMarkers == 1 }
            #expect(feed.modes == ["snapshot", "reset"])
            #expect(feed.atLive?.snapshotDone == true)
            try await server.database.execute("INSERT INTO notifications (user_id, body) VALUES ('alice', 'after')")
            try await feed.collect(from: client) { $0.rows.count == 1 }
            try await Self.expectNoSecondMarker(&feed, client)
            await client.close()
        }
    }
}
