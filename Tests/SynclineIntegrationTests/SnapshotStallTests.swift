import Foundation
import PostgresNIO
import SynclineServer
import Testing

/// Snapshots cannot be held hostage (docs/security.md, "Snapshot stalls"): real Postgres, a real
/// server with the default 4 snapshot reads at once, four users whose clients subscribe to large
/// snapshots and stop reading, and a fifth user whose snapshot must not wait for them.
@Suite("Snapshot stalls")
struct SnapshotStallTests {
    /// Long beside alice's small snapshot even when the whole suite loads the machine, so that her
    /// snapshot completing while the four reads still hold their transactions shows she never
    /// waited for one of them to end.
    static let stallTimeout = 15.0

    @Test("4 clients that stop reading their snapshots do not hold another user's snapshot; their reads end after the stall timeout")
    func stalledSnapshotsDoNotHoldOthers() async throws {
        try await TestServer.with(configure: {
            $0.server.snapshotStallTimeoutMilliseconds = Int(Self.stallTimeout * 1000)
            // The stall rule must act: not the ping timeout, nor the per-chunk rule for sharers
            // (`--snapshot-share-stall-ms`, 10 s, which a lone subscriber meets too).
            $0.server.heartbeatMilliseconds = 120_000
            $0.server.snapshotShareStallMilliseconds = 120_000
        }) { server in
            let users = (1...4).map { "hostage-\($0)" }
            // ~8 MB of rows each: more than a socket's buffers hold for a client that does not read.
            for user in users {
                try await server.database.execute(PostgresQuery(unsafeSQL: "INSERT INTO accounts (id, owner, name) VALUES ('\(user)-acct', '\(user)', '\(user)')"))
                try await server.database.execute(PostgresQuery(unsafeSQL: """
                    INSERT INTO transactions (account_id, amount, memo)
                    SELECT '\(user)-acct', g, repeat('x', 2000) FROM generate_series(1, 4000) AS g
                    """))
            }
            var stalled: [RawWebSocket] = []
            // A read stalls only after its subscribe, so none can end before this plus the timeout.
            let firstSubscribe = ContinuousClock.now
            for user in users {
                let client = try await RawWebSocket.connect(port: server.port, receiveBuffer: 4096)
                try await client.sendText(TestClient.encode(["type": "hello", "client_id": "raw-\(user)", "token": TestClient.unsignedToken(user)]))
                #expect(try await client.next()?.text.contains("welcome") == true)
                try await client.setReading(false)
                try await client.sendText(TestClient.encode(["type": "subscribe", "id": "t", "collection": "transactions", "where": ["account_id": "\(user)-acct"]]))
                stalled.append(client)
            }
            // All four reads hold a transaction and wait for their sockets.
            try await Self.waitForSnapshotTransactions(server, count: 4, timeout: .seconds(30))
            try await Task.sleep(for: .milliseconds(500))  // past the park threshold, stalled for sure
            let stalledSince = ContinuousClock.now

            let alice = try await TestClient.connect(server)
            alice.send(["type": "hello", "client_id": "c-alice-stall", "token": TestClient.unsignedToken("alice")])
            #expect(try await alice.next(timeout: .seconds(20))["type"]?.stringValue == "welcome")
            let started = ContinuousClock.now
            alice.send(["type": "subscribe", "id": "a", "collection": "transactions", "where": ["account_id": "alice-checking"]])
            var done = false
            while !done {
                let message = try await alice.next(timeout: .seconds(30))
                if message["type"]?.stringValue == "error" { throw TestFailure("alice's subscribe failed: \(message.jsonText)") }
                done = message["type"]?.stringValue == "snapshot" && message["done"] == .bool(true)
            }
            let aliceSnapshot = ContinuousClock.now - started
            print("snapshot stalls: alice's snapshot completed in \(aliceSnapshot) beside 4 stalled reads")
            // Not a timed check (the figure above is the measurement): the four stalled reads are
            // all still open, so alice's read ran beside them rather than after one of them ended.
            try await Self.waitForSnapshotTransactions(server, count: 4, timeout: .seconds(5))

            // The stalled reads end after the stall timeout (not before most of it), freeing
            // their transactions.
            try await Self.waitForSnapshotTransactions(server, count: 0, timeout: .seconds(Self.stallTimeout + 30))
            let held = ContinuousClock.now - stalledSince
            print("snapshot stalls: the stalled reads ended \(held) after they were seen stalled (timeout \(Self.stallTimeout) s)")
            #expect(ContinuousClock.now - firstSubscribe >= .seconds(Self.stallTimeout), "the stalled reads ended before the stall timeout")
            // Their clients were closed with 4008 (when the close frame got through before the socket).
            for client in stalled {
                try await client.setReading(true)
                let close = try await client.closeFrame(timeout: .seconds(30))
                #expect(close == nil || close?.closeCode == 4008, "closed with \(close?.closeCode.map(String.init) ?? "nothing")")
                await client.close()
            }
            await alice.close()
        }
    }

    /// Waits until exactly `count` snapshot-pool connections of this server are in a transaction.
    static func waitForSnapshotTransactions(_ server: TestServer, count: Int, timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        try await server.database.withConnection { connection in
            while true {
                var open = -1
                for try await n in try await connection.query("""
                    SELECT count(*)::int FROM pg_stat_activity WHERE datname = current_database()
                       AND application_name = 'syncline-snapshot' AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
                    """, logger: TestCluster.logger).decode(Int.self) { open = n }
                if open == count { return }
                guard ContinuousClock.now < deadline else { throw TestFailure("\(open) snapshot transactions, expected \(count)") }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }
}
