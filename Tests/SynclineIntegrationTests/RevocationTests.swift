import Foundation
import PostgresNIO
import SynclineProtocol
@testable import SynclineServer
import Testing

/// Authorization follows the data (protocol §3.7, design invariant 4, docs/security.md): the demo
/// declares that the transactions and accounts policies read `accounts.owner`; a commit changing it
/// holds the feeds it maps until they are re-checked. Real server, real Postgres, real clients.
@Suite("Authorization follows the data")
struct RevocationTests {
    static func subscribe(_ client: TestClient, id: String, account: String, after: String? = nil) {
        var message: [String: Any] = ["type": "subscribe", "id": id, "collection": "transactions", "where": ["account_id": account]]
        if let after { message["after"] = after }
        client.send(message)
    }

    /// The hub's re-check counters once `done` holds: they are updated just after the loops
    /// carried out the answer, so a client may see `revoked` a moment before.
    static func stats(_ server: TestServer, until done: (PolicyRecheck.Stats) -> Bool) async throws -> PolicyRecheck.Stats {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let stats = server.app.hub.policy.stats
            if done(stats) || ContinuousClock.now > deadline { return stats }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Everything one connection received, by feed, plus the order of arrival.
    struct Inbox {
        var feeds: [String: FeedCollector] = [:]
        var all: [JSONValue] = []

        init(_ subs: [String]) {
            for sub in subs { feeds[sub] = FeedCollector(sub: sub) }
        }

        mutating func read(from client: TestClient, timeout: Duration = .seconds(20), until done: (Inbox) -> Bool) async throws {
            let deadline = ContinuousClock.now + timeout
            while !done(self) {
                guard ContinuousClock.now < deadline else { throw TestFailure("incomplete after \(timeout): \(all.map(\.jsonText))") }
                take(try await client.next(timeout: max(.milliseconds(100), deadline - ContinuousClock.now)))
            }
        }

        mutating func take(_ message: JSONValue) {
            all.append(message)
            for sub in feeds.keys { feeds[sub]!.apply(message) }
        }

        func revoked(_ sub: String) -> JSONValue? {
            all.first { $0["type"]?.stringValue == "revoked" && $0["sub"]?.stringValue == sub }
        }

        /// Whether any `changes` of feed `sub` carried a row with this memo.
        func delivered(_ sub: String, memo: String) -> Bool {
            all.contains { $0["type"]?.stringValue == "changes" && $0["sub"]?.stringValue == sub && $0.jsonText.contains(memo) }
        }

        /// Index of the first message of feed `sub` carrying `memo`, or of the revoke of `sub`.
        func index(of sub: String, memo: String? = nil) -> Int? {
            all.firstIndex { m in
                guard m["sub"]?.stringValue == sub else { return false }
                if let memo { return m["type"]?.stringValue == "changes" && m.jsonText.contains(memo) }
                return m["type"]?.stringValue == "revoked"
            }
        }
    }

    @Test("an account given to another user ends the old owner's feed with `revoked`: no row of that commit or a later one",
          arguments: [false, true])
    func accountGivenAway(refreshAuth: Bool) async throws {
        try await TestServer.with { server in
            let alice = try await TestClient.open(server, sub: "alice")
            Self.subscribe(alice, id: "savings", account: "alice-savings")
            Self.subscribe(alice, id: "checking", account: "alice-checking")
            var inbox = Inbox(["savings", "checking"])
            try await inbox.read(from: alice) { $0.feeds.values.allSatisfy(\.snapshotDone) }
            let savedCursor = try #require(inbox.feeds["savings"]!.cursor)
            let before = server.app.hub.policy.stats

            // One commit: the account changes hands AND gets a row; the neighbour gets one too.
            try await server.database.psql("""
                BEGIN;
                UPDATE accounts SET owner = 'bob' WHERE id = 'alice-savings';
                INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-savings', 1, 'same-commit');
                INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 2, 'neighbour-1');
                COMMIT;
                """)
            if refreshAuth { alice.send(["type": "auth", "token": TestClient.unsignedToken("alice")]) }
            try await server.database.execute(
                "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-savings', 3, 'later')",
                "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 4, 'neighbour-2')")
            try await inbox.read(from: alice) { $0.revoked("savings") != nil && $0.delivered("checking", memo: "neighbour-2") }
            inbox.all += try await alice.drain(for: .milliseconds(400))

            let revoked = try #require(inbox.revoked("savings"))
            #expect(revoked["code"]?.stringValue == "forbidden")
            #expect(!inbox.delivered("savings", memo: "same-commit"), "a row of the revoking commit reached the old owner")
            #expect(!inbox.delivered("savings", memo: "later"), "a later row reached the old owner")
            #expect(!inbox.all.contains { $0["sub"]?.stringValue == "savings" && $0["type"]?.stringValue == "changes"
                                          && inbox.all.firstIndex(of: revoked)! < inbox.all.firstIndex(of: $0)! },
                    "something of the revoked feed came after `revoked`")
            // The unrelated feed was not held: its row of the same commit went out before the
            // held feed's re-check answered (the same socket keeps the order). With `auth`, the
            // session's re-check may hold it too.
            let neighbour = try #require(inbox.index(of: "checking", memo: "neighbour-1"))
            if !refreshAuth { #expect(neighbour < inbox.index(of: "savings")!) }
            let after = try await Self.stats(server) { $0.revoked > before.revoked }
            #expect(after.revoked - before.revoked == 1)

            // A resume from before the revocation is refused, and a fresh subscribe too.
            Self.subscribe(alice, id: "savings-again", account: "alice-savings", after: savedCursor)
            let refused = try await alice.next("error", skipping: ["changes", "snapshot", "subscribed"])
            #expect(refused["code"]?.stringValue == "forbidden")
            #expect(refused["ref"]?.stringValue == "savings-again")

            // The new owner can subscribe and sees both rows.
            let bob = try await TestClient.open(server, sub: "bob")
            Self.subscribe(bob, id: "bob-savings", account: "alice-savings")
            var bobs = Inbox(["bob-savings"])
            try await bobs.read(from: bob) { $0.feeds["bob-savings"]!.snapshotDone }
            let memos = Set(bobs.feeds["bob-savings"]!.rows.values.compactMap { $0["memo"]?.stringValue })
            #expect(memos.isSuperset(of: ["same-commit", "later"]))
            await alice.close()
            await bob.close()
        }
    }

    @Test("`auth` re-checks every feed of the session with the new claims, without a declared dependency")
    func authRefreshRechecks() async throws {
        try await TestServer.with { server in
            // Without the dependency, only the `auth` re-check can notice.
            try await server.database.execute(
                "SELECT syncline.undepend_policy('transactions', 'public.accounts', 'account_id')")
            let alice = try await TestClient.open(server, sub: "alice")
            Self.subscribe(alice, id: "savings", account: "alice-savings")
            Self.subscribe(alice, id: "checking", account: "alice-checking")
            var inbox = Inbox(["savings", "checking"])
            try await inbox.read(from: alice) { $0.feeds.values.allSatisfy(\.snapshotDone) }
            let before = server.app.hub.policy.stats
            try await server.database.execute("UPDATE accounts SET owner = 'bob' WHERE id = 'alice-savings'")
            alice.send(["type": "auth", "token": TestClient.unsignedToken("alice")])
            try await inbox.read(from: alice) { $0.revoked("savings") != nil }
            try await server.database.execute(
                "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-savings', 3, 'after-auth')",
                "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', 4, 'still-mine')")
            try await inbox.read(from: alice) { $0.delivered("checking", memo: "still-mine") }
            inbox.all += try await alice.drain(for: .milliseconds(300))
            #expect(!inbox.delivered("savings", memo: "after-auth"))
            #expect(inbox.revoked("checking") == nil)
            let after = try await Self.stats(server) { $0.rechecks >= before.rechecks + 2 && $0.revoked > before.revoked }
            #expect(after.rechecks - before.rechecks == 2)  // both feeds of the session
            #expect(after.revoked - before.revoked == 1)
            await alice.close()
        }
    }

    @Test("a transfer (balance only) re-checks nothing; an owner change re-checks only the feeds it maps")
    func transferRechecksNothing() async throws {
        try await TestServer.with { server in
            let alice = try await TestClient.open(server, sub: "alice")
            let bob = try await TestClient.open(server, sub: "bob")
            Self.subscribe(alice, id: "checking", account: "alice-checking")
            Self.subscribe(alice, id: "savings", account: "alice-savings")
            Self.subscribe(bob, id: "bob", account: "bob-checking")
            var alices = Inbox(["checking", "savings"]), bobs = Inbox(["bob"])
            try await alices.read(from: alice) { $0.feeds.values.allSatisfy { $0.liveMarkers > 0 } }
            try await bobs.read(from: bob) { $0.feeds["bob"]!.liveMarkers > 0 }
            let head = try await server.database.psql("SELECT max(pos) FROM syncline.changes")
                .split(separator: "\n").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }.first ?? 0
            let before = server.app.hub.policy.stats

            alice.send(["type": "mutate", "mid": 1, "name": "transfer",
                        "args": ["from": "alice-checking", "to": "bob-checking", "amount": 5, "memo": "rent-share"]])
            try await alices.read(from: alice) { inbox in
                inbox.delivered("checking", memo: "rent-share") && inbox.all.contains { $0["type"]?.stringValue == "ack" }
            }
            let ack = try #require(alices.all.first { $0["type"]?.stringValue == "ack" })
            #expect(ack["mid"] == .number("1"))
            try await bobs.read(from: bob) { $0.delivered("bob", memo: "rent-share") }
            #expect(server.app.hub.policy.stats == before, "a balance-only commit held or re-checked something")
            let records = try await server.database.psql("SELECT count(*) FROM syncline.changes WHERE op = 'a' AND pos > \(head)")
            #expect(records.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "a balance-only commit wrote a policy record: \(records)")

            // The positive control: an owner change of alice-savings re-checks the one feed that
            // pins it (alice's savings), not alice-checking's or bob's.
            try await server.database.execute("UPDATE accounts SET owner = 'carol' WHERE id = 'alice-savings'")
            try await alices.read(from: alice) { $0.revoked("savings") != nil }
            let after = try await Self.stats(server) { $0.rechecks > before.rechecks }
            #expect(after.holds - before.holds == 1)
            #expect(after.rechecks - before.rechecks == 1)
            await alice.close()
            await bob.close()
        }
    }

    @Test("held feeds that still pass get every row exactly once; hold-to-release latency (printed, never asserted)")
    func holdLatency() async throws {
        try await TestServer.with { server in
            // Feeds of `accounts` filtered on owner do not pin `id`: every new account maps them,
            // and they pass (the owner filter is the caller's own).
            let clients = 8, accounts = 200
            var open: [TestClient] = []
            for _ in 0..<clients {
                let client = try await TestClient.open(server, sub: "dave")
                client.send(["type": "subscribe", "id": "mine", "collection": "accounts", "where": ["owner": "dave"]])
                open.append(client)
            }
            var inboxes = [Inbox](repeating: Inbox(["mine"]), count: clients)
            for i in 0..<clients { try await inboxes[i].read(from: open[i]) { $0.feeds["mine"]!.snapshotDone } }
            let before = server.app.hub.policy.stats
            let skipped = server.app.hub.policy.latencies.count
            try await server.database.withConnection { connection in
                for n in 0..<accounts {
                    try await connection.query(
                        "INSERT INTO accounts (id, owner, name) VALUES (\("dave-\(n)"), 'dave', 'D')", logger: TestCluster.logger)
                }
            }
            for i in 0..<clients {
                try await inboxes[i].read(from: open[i], timeout: .seconds(60)) { $0.feeds["mine"]!.rows.count == accounts }
                inboxes[i].all += try await open[i].drain(for: .milliseconds(100))
                #expect(inboxes[i].feeds["mine"]!.inserted.values.allSatisfy { $0 == 1 }, "a held row was delivered twice")
                #expect(inboxes[i].revoked("mine") == nil)
            }
            let after = try await Self.stats(server) { $0.rechecks >= before.rechecks + clients }
            #expect(after.holds - before.holds >= 1)
            #expect(after.rechecks - before.rechecks >= clients)
            let latencies = Array(server.app.hub.policy.latencies.dropFirst(skipped)).sorted()
            if !latencies.isEmpty {
                func p(_ q: Double) -> Double { latencies[min(latencies.count - 1, Int(Double(latencies.count) * q))] * 1000 }
                print("policy hold-to-release, \(latencies.count) holds of up to \(clients) feeds: "
                      + String(format: "p50 %.2f ms, p99 %.2f ms, max %.2f ms", p(0.5), p(0.99), latencies.last! * 1000))
            }
            for client in open { await client.close() }
        }
    }
}
