import Foundation
import PostgresNIO
import SynclineProtocol
import Testing

/// The write path end to end: `mutate` over a real WebSocket, decided by the group-commit executor
/// in a real Postgres, answered once.
@Suite("Mutations")
struct MutationTests {
    @Test("ack arrives after the mutation's changes reached the client's own feed, at a cursor ≥ theirs")
    func ackAfterOwnFeed() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server, sub: "alice")
            client.send(ChangeFeedTests.subscribeChecking)
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: client) { $0.snapshotDone }
            let before = feed.rows.count
            client.send(Self.transfer(1, amount: "25.50", memo: "rent"))
            var sawDebitAt: Int64?
            var ack: JSONValue?
            while ack == nil {
                let message = try await client.next()
                if feed.apply(message), feed.rows.values.contains(where: { $0["memo"]?.stringValue == "rent" }), sawDebitAt == nil {
                    sawDebitAt = position(feed.cursor)
                }
                if message["type"]?.stringValue == "ack" { ack = message }
                #expect(message["type"]?.stringValue != "reject")
                #expect(message["type"]?.stringValue != "error")
            }
            let answer = try #require(ack)
            #expect(answer["mid"] == .number("1"))
            let debitPosition = try #require(sawDebitAt, "the debit must be in the feed before the ack")
            #expect(debitPosition <= position(answer["cursor"]?.stringValue))
            #expect(feed.rows.count == before + 1)
            let debit = try #require(feed.rows.values.first { $0["memo"]?.stringValue == "rent" })
            #expect(debit["amount"] == .number("-25.50"))
            #expect(answer["result"]?["balance"] == .number("1224.50"))
            #expect(answer["result"]?["debit"] == debit["id"])
            #expect(try await Self.balances(server) == "alice-checking=1224.50,alice-savings=9000.50,bob-checking=446.25")
            await client.close()
        }
    }

    @Test("reject insufficient_funds leaves balances and transactions untouched")
    func insufficientFunds() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server, sub: "alice")
            let balances = try await Self.balances(server)
            client.send(Self.transfer(1, amount: "5000"))
            let answer = try await Self.answer(client)
            #expect(answer["type"] == .string("reject"))
            #expect(answer["code"] == .string("insufficient_funds"))
            #expect(answer["mid"] == .number("1"))
            #expect(answer["details"]?["balance"] == .number("1250.00"))
            #expect(try await Self.balances(server) == balances)
            #expect(try await server.database.value("SELECT count(*) FROM transactions") == "3")
            // The reject consumed mid 1: the next mutation is mid 2.
            client.send(Self.transfer(2, amount: "1"))
            #expect(try await Self.answer(client)["type"] == .string("ack"))
            await client.close()
        }
    }

    @Test("a duplicate mid after a dropped connection gets the original outcome and is applied once")
    func duplicateAfterDrop() async throws {
        try await TestServer.with { server in
            let clientID = "device-\(UUID().uuidString.prefix(8))"
            let first = try await TestClient.open(server, sub: "alice", clientID: clientID)
            first.send(Self.transfer(1, amount: "7.00", memo: "once"))
            first.send(Self.transfer(2, amount: "9999", memo: "too much"))
            await first.close()  // gone before any answer could be read
            // Wait until both are decided in Postgres.
            let deadline = ContinuousClock.now + .seconds(10)
            while try await server.database.value("SELECT last_mid FROM syncline.clients WHERE client_id = '\(clientID)'") != "2" {
                guard ContinuousClock.now < deadline else { throw TestFailure("mutations never decided") }
                try await Task.sleep(for: .milliseconds(20))
            }
            let second = try await TestClient.connect(server)
            second.send(["type": "hello", "client_id": clientID, "token": TestClient.unsignedToken("alice")])
            let welcome = try await second.next()
            #expect(welcome["last_mid"] == .number("2"))
            second.send(Self.transfer(1, amount: "7.00", memo: "once"))
            let ack = try await Self.answer(second)
            #expect(ack["type"] == .string("ack"))
            #expect(ack["duplicate"] == .bool(true))
            #expect(ack["result"]?["balance"] == .number("1243.00"))
            second.send(Self.transfer(2, amount: "9999", memo: "too much"))
            let reject = try await Self.answer(second)
            #expect(reject["type"] == .string("reject"))
            #expect(reject["code"] == .string("insufficient_funds"))
            // Same mid, other content: not applied, error conflict.
            second.send(Self.transfer(1, amount: "8.00", memo: "once"))
            let conflict = try await Self.answer(second)
            #expect(conflict["type"] == .string("error"))
            #expect(conflict["code"] == .string("conflict"))
            #expect(try await server.database.value("SELECT count(*) FROM transactions WHERE memo = 'once'") == "2")  // debit + credit
            #expect(try await Self.balances(server) == "alice-checking=1243.00,alice-savings=9000.50,bob-checking=427.75")
            // Pruned outcomes: still decided (last_mid), but the answer is gone.
            _ = try await server.database.value("SELECT syncline.prune_outcomes(interval '0 seconds')")
            second.send(Self.transfer(1, amount: "7.00", memo: "once"))
            #expect(try await Self.answer(second)["code"] == .string("outcome_expired"))
            await second.close()
        }
    }

    @Test("out_of_order: a mid beyond the next is an error and consumes nothing")
    func outOfOrder() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.open(server, sub: "alice")
            client.send(Self.transfer(3, amount: "1"))
            let error = try await Self.answer(client)
            #expect(error["type"] == .string("error"))
            #expect(error["code"] == .string("out_of_order"))
            #expect(error["ref"] == .number("3"))
            client.send(Self.transfer(1, amount: "1"))
            #expect(try await Self.answer(client)["type"] == .string("ack"))
            // Pipelined: 2, 3, 4 in flight at once, answered in order.
            for mid in 2...4 { client.send(Self.transfer(Int64(mid), amount: "1")) }
            for mid in 2...4 {
                let ack = try await Self.answer(client)
                #expect(ack["type"] == .string("ack"))
                #expect(ack["mid"] == .number(String(mid)))
            }
            #expect(try await Self.balances(server) == "alice-checking=1246.00,alice-savings=9000.50,bob-checking=424.75")
            await client.close()
        }
    }

    @Test("one batch: a rejected member rolls back alone, the others commit together")
    func mixedBatch() async throws {
        try await TestServer.with(configure: {
            $0.server.mutations.lanes = 1
            $0.server.mutations.batchTimeout = .seconds(60)  // the gate's batch waits for the test
        }) { server in
            try await Self.installGate(server)
            let blocker = try await TestClient.open(server, sub: "alice")
            var clients: [TestClient] = []
            for sub in ["alice", "alice", "bob", "bob"] { clients.append(try await TestClient.open(server, sub: sub)) }
            try await Self.withGateClosed(server) {
                // The gate's batch holds the lane; the four below queue behind it and, once all
                // are queued and the gate opens, go together in the next batch.
                blocker.send(Self.mutate(1, "test_gate", "{}"))
                try await Self.waitForPending(server, 1)
                clients[0].send(Self.transfer(1, amount: "100"))
                clients[1].send(Self.transfer(1, from: "alice-savings", amount: "20000"))  // insufficient
                clients[2].send(Self.transfer(1, from: "bob-checking", to: "alice-savings", amount: "20"))
                clients[3].send(Self.transfer(1, from: "alice-savings", to: "bob-checking", amount: "1"))  // not bob's
                try await Self.waitForPending(server, 5)
            }
            #expect(try await Self.answer(blocker)["type"] == .string("ack"))
            var answers: [JSONValue] = []
            for client in clients { answers.append(try await Self.answer(client)) }
            #expect(answers.map { $0["type"]?.stringValue } == ["ack", "reject", "ack", "reject"])
            #expect(answers[1]["code"] == .string("insufficient_funds"))
            #expect(answers[3]["code"] == .string("forbidden"))
            // Both acks carry the batch's single commit position.
            #expect(answers[0]["cursor"] == answers[2]["cursor"])
            #expect(try await Self.balances(server) == "alice-checking=1150.00,alice-savings=9020.50,bob-checking=500.75")
            #expect(try await server.database.value("SELECT count(*) FROM transactions") == "7")
            for client in clients + [blocker] { await client.close() }
        }
    }

    @Test("a lost connection mid-batch answers every member `unavailable`; nothing is half-applied; resend applies once")
    func commitFailure() async throws {
        // The batch's time limit (and the sleeper holding it open) far past the wait for the
        // sleeper below: on a loaded machine the batch must still be open when its backend is killed,
        // not already timed out and re-run one by one (seen at 5 s with a 5 s sleeper).
        try await TestServer.with(configure: {
            $0.server.mutations.lanes = 1
            $0.server.mutations.batchTimeout = .seconds(60)
            // The give-up path: no re-run on the next connection (LaneReconnectTests has the re-run).
            $0.server.mutations.connectionLossRetries = 0
        }) { server in
            try await Self.installSleeper(server)
            try await Self.installGate(server)
            let alice = try await TestClient.open(server, sub: "alice")
            let bob = try await TestClient.open(server, sub: "bob")
            let balances = try await Self.balances(server)
            let blocker = try await TestClient.open(server, sub: "alice")
            try await Self.withGateClosed(server) {
                blocker.send(Self.mutate(1, "test_gate", "{}"))
                try await Self.waitForPending(server, 1)
                // Queued behind the gate, for one batch: transfer, then a sleeper that holds that
                // batch open, then another transfer.
                alice.send(Self.transfer(1, amount: "50"))
                bob.send(Self.mutate(1, "test_sleep", "{\"s\":30}"))
                bob.send(Self.transfer(2, from: "bob-checking", to: "alice-checking", amount: "5"))
                try await Self.waitForPending(server, 4)
            }
            #expect(try await Self.answer(blocker)["type"] == .string("ack"))
            // Wait until that batch is inside bob's sleeper (so the transfer before it ran), rather
            // than for a fixed time, which a loaded machine can outlast or fall short of.
            try await Self.waitForSleeper(server)
            // Kill the executor's backend while that batch is open.
            _ = try await server.database.psql("""
                SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE application_name = 'syncline-mutations' AND datname = current_database()
                """)
            let a = try await Self.answer(alice)
            let b1 = try await Self.answer(bob)
            let b2 = try await Self.answer(bob)
            for answer in [a, b1, b2] {
                #expect(answer["type"] == .string("error"))
                #expect(answer["code"] == .string("unavailable"))
            }
            #expect(try await Self.balances(server) == balances)
            #expect(try await server.database.value("SELECT count(*) FROM transactions") == "3")
            // The lane reconnects; the resends are applied exactly once.
            let deadline = ContinuousClock.now + .seconds(15)
            var resent: JSONValue
            repeat {
                try await Task.sleep(for: .milliseconds(200))
                alice.send(Self.transfer(1, amount: "50"))
                resent = try await Self.answer(alice)
            } while resent["code"] == .string("unavailable") && ContinuousClock.now < deadline
            #expect(resent["type"] == .string("ack"))
            #expect(resent["duplicate"] == nil)
            #expect(try await server.database.value("SELECT count(*) FROM transactions") == "5")
            for client in [alice, bob, blocker] { await client.close() }
        }
    }

    @Test("row-level security refuses writes as forbidden; row mutators insert/update/delete with expect")
    func rowMutatorsAndRLS() async throws {
        try await TestServer.with { server in
            let alice = try await TestClient.open(server, sub: "alice")
            // RLS (WITH CHECK user_id = sub) refuses a notification for someone else.
            alice.send(Self.mutate(1, "notifications.insert", "{\"row\":{\"user_id\":\"bob\",\"body\":\"spam\"}}"))
            let refused = try await Self.answer(alice)
            #expect(refused["type"] == .string("reject"))
            #expect(refused["code"] == .string("forbidden"))
            let refusal = refused["message"]?.stringValue ?? ""
            #expect(!refusal.contains("policy"))  // no Postgres text
            // RLS (UPDATE USING owner = sub) refuses renaming bob's account.
            alice.send(Self.mutate(2, "accounts.update", "{\"key\":{\"id\":\"bob-checking\"},\"set\":{\"name\":\"mine\"}}"))
            #expect(try await Self.answer(alice)["code"] == .string("forbidden"))
            #expect(try await server.database.value("SELECT count(*) FROM notifications") == "0")
            #expect(try await server.database.value("SELECT name FROM accounts WHERE id = 'bob-checking'") == "Bob — Checking")
            // Allowed writes.
            alice.send(Self.mutate(3, "notifications.insert", "{\"row\":{\"user_id\":\"alice\",\"body\":\"hello\"}}"))
            let inserted = try await Self.answer(alice)
            #expect(inserted["type"] == .string("ack"))
            #expect(inserted["result"]?["body"] == .string("hello"))
            alice.send(Self.mutate(4, "accounts.update", "{\"key\":{\"id\":\"alice-checking\"},\"set\":{\"name\":\"Main\"},\"expect\":{\"version\":1}}"))
            #expect(try await Self.answer(alice)["result"]?["name"] == .string("Main"))
            // expect no longer holds once the version moved.
            _ = try await server.database.psql("UPDATE accounts SET version = 2 WHERE id = 'alice-checking'")
            alice.send(Self.mutate(5, "accounts.update", "{\"key\":{\"id\":\"alice-checking\"},\"set\":{\"name\":\"Other\"},\"expect\":{\"version\":1}}"))
            let conflict = try await Self.answer(alice)
            #expect(conflict["code"] == .string("conflict"))
            #expect(conflict["details"]?["row"]?["version"] == .number("2"))
            // A column not declared writable, and a key that does not exist.
            alice.send(Self.mutate(6, "accounts.update", "{\"key\":{\"id\":\"alice-checking\"},\"set\":{\"balance\":1000000}}"))
            #expect(try await Self.answer(alice)["code"] == .string("invalid"))
            alice.send(Self.mutate(7, "notifications.delete", "{\"key\":{\"id\":999}}"))
            #expect(try await Self.answer(alice)["code"] == .string("not_found"))
            let id = try #require(inserted["result"]?["id"]?.jsonText)
            alice.send(Self.mutate(8, "notifications.delete", "{\"key\":{\"id\":\(id)}}"))
            #expect(try await Self.answer(alice)["type"] == .string("ack"))
            #expect(try await server.database.value("SELECT count(*) FROM notifications") == "0")
            await alice.close()
        }
    }

    @Test("a mutator past its time limit is rejected `timeout`; its batch-mates commit")
    func timeout() async throws {
        try await TestServer.with(configure: {
            $0.server.mutations.lanes = 1
            $0.server.mutations.mutationTimeout = .milliseconds(400)
            $0.server.mutations.batchTimeout = .milliseconds(800)
        }) { server in
            try await Self.installSleeper(server)
            let blocker = try await TestClient.open(server, sub: "alice")
            let slow = try await TestClient.open(server, sub: "bob")
            let fast = try await TestClient.open(server, sub: "alice")
            blocker.send(Self.mutate(1, "test_sleep", "{\"s\":0.3}"))
            try await Task.sleep(for: .milliseconds(100))
            slow.send(Self.mutate(1, "test_sleep", "{\"s\":30}"))
            fast.send(Self.transfer(1, amount: "3"))
            #expect(try await Self.answer(blocker)["type"] == .string("ack"))
            let rejected = try await Self.answer(slow)
            #expect(rejected["type"] == .string("reject"))
            #expect(rejected["code"] == .string("timeout"))
            #expect(try await Self.answer(fast)["type"] == .string("ack"))
            // The timeout consumed mid 1: decided, stored.
            slow.send(Self.mutate(1, "test_sleep", "{\"s\":30}"))
            let again = try await Self.answer(slow)
            #expect(again["code"] == .string("timeout"))
            #expect(again["duplicate"] == .bool(true))
            for client in [blocker, slow, fast] { await client.close() }
        }
    }

    @Test("bad mutations: clear answers, nothing written, other clients unaffected")
    func badMutations() async throws {
        try await TestServer.with(configure: { $0.server.maximumMutationsInFlight = 4 }) { server in
            let alice = try await TestClient.open(server, sub: "alice")
            let bystander = try await TestClient.open(server, sub: "bob")
            let balances = try await Self.balances(server)
            // Not decided (errors consume nothing).
            alice.send("{\"type\":\"mutate\",\"mid\":0,\"name\":\"transfer\",\"args\":{}}")
            #expect(try await Self.answer(alice)["code"] == .string("bad_request"))
            alice.send("{\"type\":\"mutate\",\"mid\":\"1\",\"name\":\"transfer\",\"args\":{}}")
            #expect(try await Self.answer(alice)["code"] == .string("bad_request"))
            alice.send("{\"type\":\"mutate\",\"mid\":1.5,\"name\":\"transfer\",\"args\":{}}")
            #expect(try await Self.answer(alice)["code"] == .string("bad_request"))
            alice.send("{\"type\":\"mutate\",\"mid\":1,\"name\":\"transfer\",\"args\":[1,2]}")
            #expect(try await Self.answer(alice)["code"] == .string("bad_request"))
            // Decided as rejects.
            alice.send(Self.mutate(1, "no_such_mutator", "{}"))
            #expect(try await Self.answer(alice)["code"] == .string("not_found"))
            alice.send(Self.mutate(2, "transfer", "{\"from\":1,\"to\":\"bob-checking\",\"amount\":1}"))
            #expect(try await Self.answer(alice)["code"] == .string("invalid"))
            alice.send(Self.transfer(3, amount: "-5"))
            #expect(try await Self.answer(alice)["code"] == .string("invalid"))
            alice.send(Self.transfer(4, amount: "1e400"))
            #expect(try await Self.answer(alice)["type"] == .string("reject"))
            alice.send(Self.mutate(5, "transfer", "{\"from\":\"alice-checking\",\"to\":\"x'); DROP TABLE accounts; --\",\"amount\":1}"))
            #expect(try await Self.answer(alice)["code"] == .string("not_found"))
            alice.send(Self.mutate(6, "transactions.insert", "{\"row\":{\"account_id\":\"alice-checking\",\"amount\":1}}"))
            #expect(try await Self.answer(alice)["code"] == .string("not_found"))  // no row mutators on transactions
            // A flood: beyond 4 in flight is refused with rate_limited, nothing consumed.
            for mid in 7...16 { alice.send(Self.transfer(Int64(mid), amount: "10000")) }
            var codes: [String] = []
            for _ in 7...16 { codes.append(try await Self.answer(alice)["code"]?.stringValue ?? "?") }
            #expect(codes.contains("rate_limited"))
            #expect(codes.contains("insufficient_funds"))
            #expect(try await Self.balances(server) == balances)
            #expect(try await server.database.value("SELECT count(*) FROM transactions") == "3")
            // The bystander's own mutation is unaffected.
            bystander.send(Self.transfer(1, from: "bob-checking", to: "alice-checking", amount: "0.75"))
            #expect(try await Self.answer(bystander)["type"] == .string("ack"))
            await alice.close()
            await bystander.close()
        }
    }

    @Test("a transaction that writes as a restricted role (not the tables' owner) is still captured")
    func restrictedRoleWriterIsCaptured() async throws {
        try await TestServer.with { server in
            let alice = try await TestClient.open(server, sub: "alice")
            alice.send(["type": "subscribe", "id": "n", "collection": "notifications", "where": ["user_id": "alice"]])
            var feed = FeedCollector(sub: "n")
            try await feed.collect(from: alice) { $0.snapshotDone }
            _ = try await server.database.psql("""
                BEGIN;
                SELECT set_config('request.jwt.claims', '{"sub":"alice"}', true);
                SET LOCAL ROLE syncline_writer;
                INSERT INTO notifications (user_id, body) VALUES ('alice', 'as writer');
                COMMIT;
                """)
            try await feed.collect(from: alice) { $0.rows.count == 1 }
            #expect(feed.rows.values.first?["body"] == .string("as writer"))
            await alice.close()
        }
    }

    @Test("mutate before hello closes with 4400")
    func mutateBeforeHello() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.connect(server)
            client.send(Self.transfer(1))
            #expect(try await client.closeCode() == 4400)
            #expect(try await server.database.value("SELECT count(*) FROM transactions") == "3")
        }
    }

    @Test("one client on two connections at once (one node, or two nodes): every mid decided exactly once, in order",
          arguments: [false, true])
    func sameClientTwoConnections(twoNodes: Bool) async throws {
        try await TestServer.with { server in
            let other = twoNodes ? try await TestServer.start(database: server.database) : server
            let clientID = "twin-\(UUID().uuidString.prefix(8))"
            let one = try await TestClient.open(server, sub: "alice", clientID: clientID)
            let two = try await TestClient.open(other, sub: "alice", clientID: clientID)
            // Both connections send the same 20 mutations, pipelined.
            for mid in 1...20 {
                one.send(Self.transfer(Int64(mid), amount: "1", memo: "twin-\(mid)"))
                two.send(Self.transfer(Int64(mid), amount: "1", memo: "twin-\(mid)"))
            }
            var acks = 0, duplicates = 0, errors = 0
            for client in [one, two] {
                for _ in 1...20 {
                    let answer = try await Self.answer(client)
                    switch answer["type"]?.stringValue {
                    case "ack": if answer["duplicate"] == .bool(true) { duplicates += 1 } else { acks += 1 }
                    default: errors += 1
                    }
                }
            }
            // Whatever interleaving happened, each mid was applied at most once, in mid order.
            let applied = try await server.database.value("SELECT count(*) FROM transactions WHERE memo LIKE 'twin-%' AND amount < 0")
            #expect(Int(applied) == acks)
            #expect(acks + duplicates + errors == 40)
            let order = try await server.database.value("""
                SELECT string_agg(row_image ->> 'memo', ',' ORDER BY pos)
                       = string_agg(row_image ->> 'memo', ',' ORDER BY substr(row_image ->> 'memo', 6)::int)
                FROM syncline.changes
                WHERE collection = 'transactions' AND row_image ->> 'memo' LIKE 'twin-%' AND (row_image ->> 'amount')::numeric < 0
                """)
            #expect(order == "t")
            await one.close()
            await two.close()
            if twoNodes { await other.stop() }
        }
    }

    @Test("end to end: A transfers while B watches the destination's transactions and sees exactly the committed rows")
    func twoClientsEndToEnd() async throws {
        try await TestServer.with { server in
            let bob = try await TestClient.open(server, sub: "bob")
            bob.send(["type": "subscribe", "id": "in", "collection": "transactions", "where": ["account_id": "bob-checking"]])
            var feed = FeedCollector(sub: "in")
            try await feed.collect(from: bob) { $0.snapshotDone }
            #expect(feed.rows.count == 1)
            let alice = try await TestClient.open(server, sub: "alice")
            var credits: Set<String> = []
            var mid: Int64 = 0
            for n in 1...30 {
                mid += 1
                // Every fifth is too large and must leave no trace in bob's feed.
                let amount = n % 5 == 0 ? "50000" : "\(n).25"
                alice.send(Self.transfer(mid, amount: amount, memo: "e2e-\(n)"))
            }
            for _ in 1...30 {
                let answer = try await Self.answer(alice)
                if answer["type"]?.stringValue == "ack", let credit = answer["result"]?["credit"] {
                    credits.insert(uuidKey(credit.stringValue ?? ""))
                } else {
                    #expect(answer["code"] == .string("insufficient_funds"))
                }
            }
            #expect(credits.count == 24)
            try await feed.collect(from: bob) { $0.rows.count == 25 }
            let extra = try await bob.drain(for: .milliseconds(300))
            for message in extra { feed.apply(message) }
            let received = Set(feed.inserted.keys).subtracting(feed.log.filter { $0.0 == "snapshot" }.map(\.1))
            #expect(received == credits)
            #expect(feed.inserted.values.allSatisfy { $0 == 1 })
            #expect(feed.rows.count == 25)
            await alice.close()
            await bob.close()
        }
    }
}
