import Foundation
import PostgresNIO
import SynclineProtocol
import SynclineServer
import Testing

/// Retention built in (`serve --retain-changes/--retain-outcomes`): two nodes on one database
/// prune on their own, one at a time through retention's advisory lock and at most once per
/// interval between them; a resume from before the pruned range gets `reset`, and a resent `mid`
/// whose outcome was pruned gets `outcome_expired`.
@Suite("Retention")
struct RetentionTests {
    static let lock: Int64 = 7_331_533_713

    static func configure(_ options: inout SynclineApplication.Options) {
        options.server.retention.changes = .count(5)
        options.server.retention.outcomesAge = .milliseconds(1)
        options.server.retention.interval = .seconds(1)
    }

    static func stats(_ servers: [TestServer]) -> [RetentionStats] {
        servers.map { $0.app.retention?.stats ?? RetentionStats() }
    }

    @Test("two nodes prune, never both within one interval, not while the lock is held; old resumes reset; pruned outcomes expire")
    func twoNodesPruneOneAtATime() async throws {
        let database = TestDatabase(url: try await TestCluster.makeDatabase())
        let a = try await TestServer.start(database: database, configure: Self.configure)
        let b: TestServer
        do {
            b = try await TestServer.start(database: database, configure: Self.configure)
        } catch {
            await a.stop()
            throw error
        }
        do {
            try await check(database, a, b)
        } catch {
            await a.stop()
            await b.stop()
            throw error
        }
        await a.stop()
        await b.stop()
    }

    private func check(_ database: TestDatabase, _ a: TestServer, _ b: TestServer) async throws {
        let epoch = try await database.value("SELECT value FROM syncline.meta WHERE key = 'epoch'")
        let oldest = try await database.value("SELECT syncline.head()")
        // A mutation whose outcome the next rounds prune, and 20 transactions of one change each.
        let client = try await TestClient.open(a, clientID: "retention-device")
        client.send(MutationTests.transfer(1, amount: "1.00", memo: "pruned later"))
        #expect(try await MutationTests.answer(client)["type"] == .string("ack"))
        for _ in 1...20 {
            try await database.execute("UPDATE accounts SET version = version + 1 WHERE id = 'alice-checking'")
        }
        let head = try await database.value("SELECT syncline.head()")

        try await eventually("a node pruned the change log", timeout: .seconds(15)) {
            try await Int64(database.value("SELECT pruned_through FROM syncline.retention"))! > Int64(oldest)!
        }
        #expect(try await database.value("SELECT count(*) >= 5 FROM syncline.changes") == "t", "the newest 5 are kept")
        #expect(try await database.value("SELECT syncline.head()") == head, "the head never moves back")
        try await eventually("the outcome was pruned") {
            try await database.value("SELECT count(*) FROM syncline.outcomes WHERE client_id = 'retention-device'") == "0"
        }
        // Both nodes tried at least twice each: the attempts of the other are skipped.
        try await eventually("both nodes tried several rounds", timeout: .seconds(15)) {
            Self.stats([a, b]).allSatisfy { $0.pruned + $0.recent + $0.locked >= 3 }
        }
        let runs = Self.stats([a, b])
        #expect(runs.allSatisfy { $0.failed == 0 })
        #expect(runs.map(\.pruned).reduce(0, +) >= 1)
        #expect(runs.map { $0.recent + $0.locked }.reduce(0, +) >= 1, "some round found another node's recent run")
        #expect(runs.map(\.changesPruned).reduce(0, +) >= 15)
        #expect(runs.map(\.outcomesPruned).reduce(0, +) >= 1)
        // At most one pruning run per interval (0.9 s with drift allowance) across both nodes,
        // by the database's clock.
        let times = runs.flatMap(\.prunedAt).sorted()
        for (earlier, later) in zip(times, times.dropFirst()) {
            #expect(later.timeIntervalSince(earlier) >= 0.9, "two prunes \(later.timeIntervalSince(earlier)) s apart")
        }

        // While someone else holds retention's lock, no node prunes; each round counts `locked`.
        try await database.withConnection { holder in
            try await holder.query("SELECT pg_advisory_lock(\(Self.lock))", logger: TestCluster.logger)
            let before = Self.stats([a, b])
            try await eventually("both nodes found the lock taken", timeout: .seconds(15)) {
                zip(before, Self.stats([a, b])).allSatisfy { $1.locked > $0.locked }
            }
            #expect(zip(before, Self.stats([a, b])).allSatisfy { $1.pruned == $0.pruned })
            try await holder.query("SELECT pg_advisory_unlock(\(Self.lock))", logger: TestCluster.logger)
        }
        // The capture lock is another: commits go on while retention's is held (above they did).

        // A resume from before the pruned range: reset, with a fresh snapshot.
        let resumer = try await TestClient.open(b, clientID: "retention-resumer")
        resumer.send(["type": "subscribe", "id": "old", "collection": "accounts", "where": ["owner": "alice"],
                      "after": "\(epoch).\(oldest)"])
        let subscribed = try await resumer.next("subscribed", skipping: ["cursor"])
        #expect(subscribed["mode"]?.stringValue == "reset")
        // A resend of the pruned mutation: decided before, its outcome gone.
        let again = try await TestClient.open(a, clientID: "retention-device")
        again.send(MutationTests.transfer(1, amount: "1.00", memo: "pruned later"))
        let answer = try await MutationTests.answer(again)
        #expect(answer["type"] == .string("error"))
        #expect(answer["code"] == .string("outcome_expired"))
        await client.close()
        await resumer.close()
        await again.close()
    }

    @Test("the runtime role prunes only through run_retention; a role that is not one is refused")
    func privileges() async throws {
        let database = TestDatabase(url: try await TestCluster.makeDatabase())
        let server = try await TestServer.start(database: database)
        await server.stop()
        let suffix = UUID().uuidString.prefix(8).lowercased()
        _ = try await database.psql("""
            CREATE ROLE rt_\(suffix) LOGIN; CREATE ROLE other_\(suffix) LOGIN;
            SELECT syncline.grant_runtime('rt_\(suffix)');
            GRANT USAGE ON SCHEMA syncline TO other_\(suffix);
            """)
        func role(_ name: String) -> TestDatabase {
            TestDatabase(url: database.url.replacingOccurrences(of: "://syncline@", with: "://\(name)@"))
        }
        let call = "SELECT outcome FROM syncline.run_retention('t', interval '0 s', keep_count => 1)"
        #expect(try await role("rt_\(suffix)").psql(call).hasPrefix("pruned"))
        await #expect(throws: (any Error).self) { try await role("rt_\(suffix)").psql("DELETE FROM syncline.changes") }
        await #expect(throws: (any Error).self) { try await role("other_\(suffix)").psql(call) }
    }
}
