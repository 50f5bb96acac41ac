@testable import SynclineServer
import SynclineCore
import SynclinePostgres
import SynclineProtocol
import Testing

/// The hub's policy hold without PostgreSQL (ConnectionHarness): a batch carrying a policy record
/// holds the feeds it maps until the re-check answers, while other feeds get it at once; a feed
/// that passes then gets what it was held from, in order, once; one that fails ends with
/// `revoked` and gets none of it. The re-check is gated so that a later batch arrives while held.
@Suite struct PolicyHoldTests {
    typealias H = ConnectionHarness

    /// The in-memory feed, with re-checks that wait for `gate` (a SnapshotHold's release).
    struct GatedReader: FeedReading {
        let feed: InMemoryFeed
        let gate: SnapshotHold

        func feedKey(collection: String, filter: [String: JSONValue]) async throws -> FeedKey {
            try await feed.feedKey(collection: collection, filter: filter)
        }
        func head() async throws -> (head: Int64, prunedThrough: Int64) { try await feed.head() }
        func authorize(_ key: FeedKey, claims: String) async throws -> Bool { try await feed.authorize(key, claims: claims) }
        func authorizeEach(_ checks: [(key: FeedKey, claims: String)]) async throws -> [Bool] {
            gate.started(at: Int64(checks.count))
            await gate.waitForRelease()
            var out: [Bool] = []
            for check in checks { out.append(try await feed.authorize(check.key, claims: check.claims)) }
            return out
        }
        func sharedSnapshot(
            _ key: FeedKey, claims: [String], chunkRows: Int, chunkBytes: Int,
            onAuthorized: @Sendable ([Bool], Int64) async throws -> Bool,
            onChunk: @Sendable ([String], Bool, Int64) async throws -> Bool
        ) async throws -> Int64 {
            try await feed.sharedSnapshot(key, claims: claims, chunkRows: chunkRows, chunkBytes: chunkBytes,
                                          onAuthorized: onAuthorized, onChunk: onChunk)
        }
        func changeLogPage(after: Int64, through: Int64, limit: Int, scope: ChangeLogReader.Scope) async throws -> ChangeLogReader.Page {
            try await feed.changeLogPage(after: after, through: through, limit: limit, scope: scope)
        }
    }

    static func insert(_ n: Int, account: String, at position: Int64) -> ChangeRecord {
        ChangeRecord(
            position: position, transaction: UInt64(position), operation: .insert, collection: "transactions", topic: nil,
            key: #"{"id":"\#(H.id(n))"}"#, oldKey: nil, row: H.row(n, account: account),
            newMatch: ["account_id": .string(account)], oldMatch: nil)
    }

    /// One commit: a policy record for `account`, a row of it and a row of `bob-checking`.
    static func policyCommit(_ h: H) async {
        let after = h.hub.head
        let policy = ChangeRecord(
            position: after + 1, transaction: UInt64(after + 1), operation: .policy, collection: "transactions", topic: nil,
            key: nil, oldKey: nil, row: nil, newMatch: ["account_id": .string("alice-savings")], oldMatch: nil)
        var records = [policy, insert(11, account: "alice-savings", at: after + 2), insert(12, account: "bob-checking", at: after + 3)]
        for i in records.indices { records[i].transaction = UInt64(after + 1) }
        h.feed.state.withLockedValue { s in
            s.head = after + 3
            s.log += records
        }
        await h.hub.handle(.changes(records, after: after, through: after + 3))
    }

    static func ids(_ message: JSONValue) -> [String] {
        guard case .array(let changes)? = message["changes"] else { return [] }
        return changes.compactMap { $0["key"]?["id"]?.stringValue }
    }

    @Test(arguments: [true, false])
    func aHeldFeedGetsItsBatchesAfterTheRecheckOrNoneOfThem(stillAllowed: Bool) async throws {
        try await H.with { h in
            let gate = SnapshotHold()
            h.hub.policy.use(GatedReader(feed: h.feed, gate: gate))
            try await h.open()
            try await h.subscribeLive("savings", account: "alice-savings")
            try await h.subscribeLive("bob", account: "bob-checking")

            await Self.policyCommit(h)
            // The unmapped feed gets its row at once; the held one nothing yet.
            let bob = try await h.next("changes")
            #expect(bob["sub"] == .string("bob"))
            #expect(Self.ids(bob) == [H.id(12)])
            #expect(try await gate.waitUntilStarted() == 1)  // one check: the savings feed
            let later = await h.commit(13, account: "alice-savings")
            try await h.expectNothingMore()

            if !stillAllowed { h.feed.state.withLockedValue { _ = $0.forbidden.insert(H.key("alice-savings")) } }
            gate.release()
            if stillAllowed {
                let first = try await h.next("changes")
                #expect(first["sub"] == .string("savings"))
                #expect(Self.ids(first) == [H.id(11)])
                let second = try await h.next("changes")
                #expect(Self.ids(second) == [H.id(13)])
                #expect(second["cursor"]?.stringValue == H.cursor(later))
            } else {
                let revoked = try await h.next()
                #expect(revoked["type"] == .string("revoked"))
                #expect(revoked["sub"] == .string("savings"))
                #expect(revoked["code"] == .string("forbidden"))
                await h.commit(14, account: "alice-savings")
            }
            try await h.expectNothingMore()
            await h.commit(15, account: "bob-checking")
            #expect(Self.ids(try await h.next("changes")) == [H.id(15)])
            #expect(h.hub.policy.stats.rechecks == 1)
            #expect(h.hub.policy.stats.revoked == (stillAllowed ? 0 : 1))
        }
    }

    @Test func anAckWaitsForAFeedHeldForARecheck() async throws {
        try await H.with { h in
            let gate = SnapshotHold()
            h.hub.policy.use(GatedReader(feed: h.feed, gate: gate))
            try await h.open()
            try await h.subscribeLive("savings", account: "alice-savings")
            await h.commit(10, account: "bob-checking")  // one batch: the feed is live, not young
            try await h.expectNothingMore()
            try await h.send(#"{"type":"mutate","mid":1,"name":"transfer","args":{"amount":1}}"#)
            let request = try await h.mutations.next()
            await Self.policyCommit(h)  // positions 7...9: the mutation's own commit
            _ = try await gate.waitUntilStarted()
            request.reply(.ack(position: 9, result: "null", duplicate: false))
            try await h.expectNothingMore()  // the loop is at 9, but the held feed has not had 8
            gate.release()
            let changes = try await h.next("changes")
            #expect(Self.ids(changes) == [H.id(11)])
            let ack = try await h.next("ack")
            #expect(ack["cursor"]?.stringValue == H.cursor(9))
            try await h.expectNothingMore()
        }
    }
}
