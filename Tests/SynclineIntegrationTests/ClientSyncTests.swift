import Foundation
import NIOConcurrencyHelpers
import SynclineClient
import SynclineServer
import Testing

/// SynclineClient against a real server and Postgres: warm offline starts, resets, read-your-writes
/// without double counting, expired outcomes, and what an enqueue costs.
@Suite("Swift client: sync", .serialized)
struct ClientSyncTests {
    @Test("an app started offline with a warm store shows its last rows at once and resumes without a snapshot")
    func offlineWarmStart() async throws {
        let server = try await ServerProcess()
        try await server.start()
        let storePath = TempStorePath()
        defer { storePath.remove() }
        do {
            let store = try await SQLiteClientStore(path: storePath.path)
            let client = makeClient(url: server.url, store: store)
            let accounts = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
            try await eventually("live") { client.status.state == .live }
            #expect(accounts.rows.count == 2)
            await client.close()
            try await store.close()
        }
        try await server.stop()
        _ = try await server.database.psql("UPDATE accounts SET balance = balance + 1.50 WHERE id = 'alice-checking'")

        let store = try await SQLiteClientStore(path: storePath.path)
        let client = makeClient(url: server.url, store: store, cap: .seconds(1))
        let accounts = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
        // At once, with no server: the stored rows, digits as Postgres wrote them.
        #expect(accounts.rows.count == 2)
        let stale = try #require(accounts.row(forKey: ["id": "alice-checking"])?["balance"]?.numberText)
        #expect(client.status.state != .live)
        let recorder = QueryRecorder(accounts)
        try await server.start()
        let fresh = try await server.database.scalar("SELECT balance FROM accounts WHERE id = 'alice-checking'")
        try await eventually("the update made while offline") { accounts.row(forKey: ["id": "alice-checking"])?["balance"]?.numberText == fresh }
        try await eventually("live") { client.status.state == .live }
        #expect(stale != fresh)
        // Resumed from the stored cursor: the first event is the stored rows; no snapshot or reset came.
        #expect(recorder.kinds.first == "snapshot")
        #expect(recorder.kinds.filter { $0 == "snapshot" || $0 == "reset" }.count == 1, "\(recorder.kinds)")
        recorder.stop()
        await client.close()
        try await store.close()
        try await server.stop()
    }

    @Test("reset (history pruned) replaces the rows")
    func resetReplacesRows() async throws {
        try await TestServer.with { server in
            let store = MemoryClientStore()
            do {
                let client = makeClient(url: server.url, store: store)
                _ = try await client.subscribe(collection: "transactions", where: ["account_id": "alice-checking"])
                try await eventually("live") { client.status.state == .live }
                await client.close()
            }
            for n in 0..<3 {
                try await server.database.execute("INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(n), 'pruned-away')")
            }
            _ = try await server.database.psql("DELETE FROM transactions WHERE memo = 'opening balance' AND account_id = 'alice-checking'")
            try await server.database.execute("SELECT syncline.prune(keep_count => 0)")

            let client = makeClient(url: server.url, store: store)
            let query = try await client.subscribe(collection: "transactions", where: ["account_id": "alice-checking"])
            let recorder = QueryRecorder(query)
            try await eventually("live") { client.status.state == .live }
            try await eventually("the reset") { recorder.kinds.contains("reset") }
            let expected = Set(try await server.database.psql("SELECT id FROM transactions WHERE account_id = 'alice-checking'")
                .split(separator: "\n").map(String.init))
            #expect(Set(query.rows.compactMap { $0["id"]?.stringValue }) == expected)
            #expect(expected.count == 3)
            // The stored rows were replaced too (one group commit behind the view).
            try await eventually("the stored rows replaced") {
                Set(try await store.load().feeds.first?.rows.compactMap { $0.row["id"]?.stringValue } ?? []) == expected
            }
            recorder.stop()
            await client.close()
        }
    }

    @Test("a transfer is shown at once, confirmed once, never counted twice; a reject rolls it back with its code")
    func readYourWritesWithoutDoubleCounting() async throws {
        try await TestServer.with { server in
            let client = makeClient(url: server.url, store: MemoryClientStore())
            client.register(mutator: "transfer") { rows, args in
                guard let from = args["from"], let amount = args["amount"] else { return }
                rows.update("accounts", key: ["id": from]) { $0 = $0.setting("balance", to: $0["balance"]?.subtracting(amount) ?? .null) }
            }
            let accounts = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
            try await eventually("live") { client.status.state == .live }
            let key: JSONValue = ["id": "alice-checking"]
            let before = try #require(accounts.row(forKey: key)?["balance"])
            let recorder = QueryRecorder(accounts)
            let pending = try await client.enqueue("transfer", args: ["from": "alice-checking", "to": "bob-checking", "amount": .number("100.50")])
            let expected = try #require(before.subtracting(.number("100.50")))
            #expect(accounts.row(forKey: key)?["balance"] == expected)  // at once
            #expect(accounts.isPending(key: key))
            _ = try await pending.result
            try await eventually("confirmed") { !accounts.isPending(key: key) }
            #expect(accounts.row(forKey: key)?["balance"] == expected)
            #expect(try await server.database.psql("SELECT balance FROM accounts WHERE id = 'alice-checking'").trimmingCharacters(in: .whitespacesAndNewlines) == expected.numberText)
            // Every value the app was shown: the old balance, then the new one; never the effect twice.
            var shown: [String] = []
            for event in recorder.events.withLockedValue({ $0 }) {
                if case .changes(let changes) = event {
                    for change in changes where change.key == key { shown.append(change.row?["balance"]?.numberText ?? "absent") }
                }
            }
            #expect(Set(shown).isSubset(of: [expected.numberText!]), "shown: \(shown)")

            let overdraft = try await client.enqueue("transfer", args: ["from": "alice-checking", "to": "bob-checking", "amount": 1_000_000])
            await #expect(throws: MutationRejected.self) { _ = try await overdraft.result }
            do {
                _ = try await overdraft.result
            } catch let rejected as MutationRejected {
                #expect(rejected.code == "insufficient_funds")
                #expect(rejected.details?["balance"]?.numberText == expected.numberText)
            }
            try await eventually("rolled back") { accounts.row(forKey: key)?["balance"] == expected }
            recorder.stop()
            await client.close()
        }
    }

    @Test("outcome_expired reaches the app as its own error, not as a reject")
    func outcomeExpired() async throws {
        try await TestServer.with { server in
            let args: JSONValue = ["from": "alice-checking", "to": "bob-checking", "amount": 1, "memo": "expired"]
            // An earlier run of this client sent mid 1 and died before the answer; the operator has
            // pruned outcomes since.
            let raw = try await TestClient.open(server, sub: "alice", clientID: "expiring-1")
            raw.send(#"{"type":"mutate","mid":1,"name":"transfer","args":\#(args.jsonText)}"#)
            let ack = try await raw.next("ack", skipping: ["changes"])
            #expect(ack["mid"]?.int64 == 1)
            await raw.close()
            try await server.database.execute("SELECT syncline.prune_outcomes(interval '0 seconds')")

            let store = MemoryClientStore(StoredState(clientID: "expiring-1", nextMID: 2, mutations: [StoredMutation(mid: 1, name: "transfer", args: args)]))
            let client = makeClient(url: server.url, store: store)
            var outcomes = client.outcomes.makeAsyncIterator()
            let outcome = try #require(await outcomes.next())
            #expect(outcome.mid == 1)
            guard case .expired(let expired) = outcome.decision else {
                Issue.record("expected .expired, got \(outcome.decision)")
                return
            }
            #expect(expired.mid == 1)
            #expect(try await server.database.psql("SELECT count(*) FROM transactions WHERE memo = 'expired'").trimmingCharacters(in: .whitespacesAndNewlines) == "2")
            try await eventually("nothing pending") { client.status.pending == 0 }
            try await eventually("the stored mutation forgotten") { try await store.load().mutations.isEmpty }
            await client.close()
        }
    }

    @Test("once subscribe returns, the status counts the new feed: resyncing until it is live")
    func statusCountsANewFeedAtOnce() async throws {
        try await TestServer.with { server in
            let client = makeClient(url: server.url, store: MemoryClientStore())
            _ = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
            try await eventually("live") { client.status.state == .live }
            // A second feed on the ready connection: no stale `live` when subscribe returns (the
            // restart test's writer started on one, and its first row came in the snapshot).
            let query = try await client.subscribe(collection: "transactions", where: ["account_id": "alice-checking"])
            #expect(client.status.state == .resyncing)
            #expect(!query.isLive)
            try await eventually("live again") { client.status.state == .live && query.isLive }
            await client.close()
        }
    }

    @Test("two subscriptions of one query share a feed; the last unsubscribe forgets its stored rows")
    func sharedFeedAndUnsubscribe() async throws {
        try await TestServer.with { server in
            let store = MemoryClientStore()
            let client = makeClient(url: server.url, store: store)
            let a = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
            let b = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
            #expect(a === b)
            try await eventually("live") { client.status.state == .live }
            try await eventually("the feed stored") { try await store.load().feeds.count == 1 }
            await a.unsubscribe()
            #expect(try await store.load().feeds.count == 1)
            await b.unsubscribe()
            try await eventually("the feed forgotten") { try await store.load().feeds.isEmpty }
            var events = a.events().makeAsyncIterator()
            #expect(await events.next() != nil)  // a new sequence still starts with the rows now…
            await client.close()
            #expect(await events.next() == nil)  // …and ends with the client
        }
    }

    @Test("measure: enqueue latency until durably stored (SQLite, synchronous=FULL)")
    func enqueueLatency() async throws {
        try await TestServer.with { server in
            let storePath = TempStorePath()
            defer { storePath.remove() }
            let store = try await SQLiteClientStore(path: storePath.path)
            let client = makeClient(url: server.url, store: store)
            let accounts = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
            try await eventually("live") { client.status.state == .live }
            var latencies: [Duration] = []
            var pending: [PendingMutation] = []
            for n in 0..<300 {
                let start = ContinuousClock.now
                pending.append(try await client.enqueue("transfer", args: ["from": "alice-checking", "to": "bob-checking", "amount": .number("0.01"), "memo": .string("bench-\(n)")]))
                latencies.append(ContinuousClock.now - start)
                if n % 10 == 9 { try await Task.sleep(for: .milliseconds(5)) }
            }
            for p in pending { _ = try await p.result }
            latencies.sort()
            func ms(_ d: Duration) -> String { String(format: "%.2f ms", Double(d.components.attoseconds) / 1e15 + Double(d.components.seconds) * 1000) }
            print("measured: enqueue (durable, SQLite WAL synchronous=FULL) over 300 with the connection live: p50 \(ms(latencies[150])) p99 \(ms(latencies[296])) max \(ms(latencies[299]))")
            #expect(try await server.database.psql("SELECT count(*) FROM transactions WHERE memo LIKE 'bench-%'").trimmingCharacters(in: .whitespacesAndNewlines) == "600")
            _ = accounts
            await client.close()
            try await store.close()

            // The same offline (nothing else on the client's loop): what the store alone costs.
            let offlinePath = TempStorePath()
            defer { offlinePath.remove() }
            let offlineStore = try await SQLiteClientStore(path: offlinePath.path)
            let offline = makeClient(url: "ws://127.0.0.1:\(try freePort())/v1/sync", store: offlineStore)
            var offlineLatencies: [Duration] = []
            for n in 0..<300 {
                let start = ContinuousClock.now
                _ = try await offline.enqueue("transfer", args: ["from": "alice-checking", "to": "bob-checking", "amount": 1, "memo": .string("o-\(n)")])
                offlineLatencies.append(ContinuousClock.now - start)
            }
            offlineLatencies.sort()
            print("measured: enqueue (durable, SQLite WAL synchronous=FULL) over 300 offline: p50 \(ms(offlineLatencies[150])) p99 \(ms(offlineLatencies[296])) max \(ms(offlineLatencies[299]))")
            #expect(try await offlineStore.load().mutations.count == 300)
            await offline.close()
            try await offlineStore.close()
        }
    }
}

@Suite("Swift client: tokens")
struct ClientTokenTests {
    @Test("the token provider is called at start and again before exp; the new token goes in-band (auth), the session stays")
    func refreshBeforeExpiry() async throws {
        try await TestServer.with { server in
            let calls = NIOLockedValueBox(0)
            var configuration = SynclineClient.Configuration()
            configuration.logger.logLevel = .error
            let client = SynclineClient(url: server.url, tokenProvider: {
                calls.withLockedValue { $0 += 1 }
                return DevToken.unsigned(sub: "alice", lifetime: 6)
            }, store: MemoryClientStore(), configuration: configuration)
            let states = NIOLockedValueBox<[ClientStatus.State]>([])
            let watcher = Task { for await status in client.statusUpdates() { states.withLockedValue { $0.append(status.state) } } }
            _ = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
            try await eventually("live") { client.status.state == .live }
            let first = calls.withLockedValue { $0 }
            #expect(first >= 1)
            // Past the first token's exp (6 s; the server allows 60 s of skew, so wait for the refresh
            // itself, which comes at 10% of the lifetime before exp).
            try await eventually("a refreshed token", timeout: .seconds(15)) { calls.withLockedValue { $0 } > first }
            try await Task.sleep(for: .milliseconds(500))
            #expect(client.status.state == .live)
            #expect(!states.withLockedValue { $0 }.contains(.offline), "the connection was never lost: \(states.withLockedValue { $0 })")
            let pending = try await client.enqueue("accounts.update", args: ["key": ["id": "alice-checking"], "set": ["name": "renamed after auth"]])
            _ = try await pending.result
            watcher.cancel()
            await client.close()
        }
    }
}
