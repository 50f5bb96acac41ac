import Foundation
import SynclineProtocol
import Testing

/// Issue 15: a terminated mutation-lane backend costs no mutation. The lane notices the close at
/// once and reconnects; a batch caught in flight is re-run, answered from the outcome table.
@Suite("Mutation lanes reconnect")
struct LaneReconnectTests {
    static func terminateLanes(_ server: TestServer) async throws -> Int {
        Int(try await server.database.value("""
            SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE application_name = 'syncline-mutations' AND datname = current_database()) t
            """)) ?? 0
    }

    @Test("lanes' backends terminated while idle: 20 clients × 10 pipelined transfers all acked, no resend")
    func idleLanesTerminated() async throws {
        try await TestServer.with { server in
            var clients: [TestClient] = []
            for _ in 0..<20 { clients.append(try await TestClient.open(server, sub: "alice")) }
            // Every lane has served once, so it holds a connection.
            for client in clients {
                client.send(MutationTests.transfer(1, amount: "0.01"))
                #expect(try await MutationTests.answer(client)["type"] == .string("ack"))
            }
            let killed = try await Self.terminateLanes(server)
            #expect(killed >= 1)
            // Measured, not asserted: how long until the lanes hold new backends again.
            let killedAt = ContinuousClock.now
            var back = false
            while !back, ContinuousClock.now - killedAt < .seconds(5) {
                back = try await server.database.value("""
                    SELECT count(*) FROM pg_stat_activity
                    WHERE application_name = 'syncline-mutations' AND datname = current_database() AND state = 'idle'
                    """) == String(killed)
                if !back { try await Task.sleep(for: .milliseconds(5)) }
            }
            print("lane-reconnect: \(killed) lanes back \(back ? "after" : "NOT within") \((ContinuousClock.now - killedAt).components.attoseconds / 1_000_000_000_000_000 + (ContinuousClock.now - killedAt).components.seconds * 1000) ms")
            try await Task.sleep(for: .seconds(2))
            for client in clients {
                for mid in Int64(2)...11 { client.send(MutationTests.transfer(mid, amount: "0.01")) }
            }
            var acked = 0
            var other: [String] = []
            for client in clients {
                for _ in 0..<10 {
                    let answer = try await MutationTests.answer(client)
                    if answer["type"] == .string("ack") { acked += 1 } else { other.append(answer.jsonText) }
                }
            }
            print("lane-reconnect: \(acked) of 200 acked after the kill; others: \(other.prefix(3))")
            #expect(acked == 200)
            #expect(other.isEmpty)
            #expect(try await server.database.value("SELECT count(*) FROM syncline.outcomes WHERE acked") == "220")
            for client in clients { await client.close() }
        }
    }

    @Test("a lane's backend terminated with a batch in flight: every mutation answered once, applied once")
    func inFlightBatch() async throws {
        try await TestServer.with(configure: { $0.server.mutations.lanes = 1 }) { server in
            try await MutationTests.installSleeper(server)
            let alice = try await TestClient.open(server, sub: "alice")
            let bob = try await TestClient.open(server, sub: "bob")
            let blocker = try await TestClient.open(server, sub: "alice")
            let transactionsBefore = Int(try await server.database.value("SELECT count(*) FROM transactions")) ?? -1
            blocker.send(MutationTests.mutate(1, "test_sleep", "{\"s\":1}"))
            try await MutationTests.waitForSleeper(server)
            alice.send(MutationTests.transfer(1, amount: "50"))
            bob.send(MutationTests.transfer(1, from: "bob-checking", to: "alice-checking", amount: "5"))
            #expect(try await Self.terminateLanes(server) == 1)
            // Each mid answered exactly once; an `unavailable` is resent and must not apply twice.
            for (client, count) in [(blocker, 1), (alice, 1), (bob, 1)] {
                for _ in 0..<count {
                    var answer = try await MutationTests.answer(client)
                    var resends = 0
                    while answer["code"] == .string("unavailable"), resends < 20 {
                        resends += 1
                        try await Task.sleep(for: .milliseconds(200))
                        let mid = Int64(answer["mid"]?.stringValue ?? "1") ?? 1
                        client.send(client === blocker ? MutationTests.mutate(mid, "test_sleep", "{\"s\":1}")
                                    : client === alice ? MutationTests.transfer(mid, amount: "50")
                                    : MutationTests.transfer(mid, from: "bob-checking", to: "alice-checking", amount: "5"))
                        answer = try await MutationTests.answer(client)
                    }
                    #expect(answer["type"] == .string("ack"), "\(answer.jsonText)")
                }
                // No second answer for the same mid.
                let extra = try await client.drain(for: .milliseconds(300))
                #expect(!extra.contains { ["ack", "reject", "error"].contains($0["type"]?.stringValue ?? "") })
            }
            // Applied once each: three outcomes, and the two transfers moved their money once.
            #expect(try await server.database.value("SELECT count(*) FROM syncline.outcomes WHERE acked") == "3")
            #expect(try await server.database.value("SELECT count(*) FROM transactions") == String(transactionsBefore + 4))
            for client in [alice, bob, blocker] { await client.close() }
        }
    }
}
