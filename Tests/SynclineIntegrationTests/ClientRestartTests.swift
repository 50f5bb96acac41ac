import Foundation
import NIOConcurrencyHelpers
import PostgresNIO
import SynclineClient
import Testing

/// SynclineClient against a real `syncline serve` child process and Postgres: server restarts
/// (SIGTERM and SIGKILL) lose and double nothing, and a mutation queued while the server is down
/// is applied exactly once.
@Suite("Swift client: server restarts", .serialized)
struct ClientRestartTests {
    /// The transactions of alice-checking as Postgres has them: id → amount digits.
    static func postgresRows(_ database: TestDatabase) async throws -> [String: String] {
        let text = try await database.psql("SELECT id || ' ' || amount::text FROM transactions WHERE account_id = 'alice-checking'")
        var rows: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            rows[#"{"id":"\#(parts[0])"}"#] = String(parts[1])
        }
        return rows
    }

    static func clientRows(_ query: LiveQuery) -> [String: String] {
        query.rowsByKey.mapValues { $0["amount"]?.numberText ?? "?" }
    }

    @Test("resume after the server restarts (SIGTERM and SIGKILL): no gap, no duplicate, equal to Postgres", arguments: [SIGTERM, SIGKILL])
    func resumeAcrossRestart(signal: Int32) async throws {
        let server = try await ServerProcess()
        try await server.start()
        let storePath = TempStorePath()
        defer { storePath.remove() }
        let store = try await SQLiteClientStore(path: storePath.path)
        let client = makeClient(url: server.url, store: store, cap: .seconds(2))
        let statuses = NIOLockedValueBox<[ClientStatus.State]>([])
        let updates = client.statusUpdates() // before the task: a late task would miss `.connecting`
        let watcher = Task { for await status in updates { statuses.withLockedValue { $0.append(status.state) } } }
        let query = try await client.subscribe(collection: "transactions", where: ["account_id": "alice-checking"])
        let recorder = QueryRecorder(query)
        try await eventually("live") { client.status.state == .live }

        // A writer commits continuously, also while the server is down (Postgres is the bus).
        let writer = Task {
            try await server.database.withConnection { connection in
                for n in 0..<120 {
                    try await connection.query(PostgresQuery(unsafeSQL: "INSERT INTO transactions (account_id, amount, memo) VALUES ('alice-checking', \(n).25, 'w')"), logger: TestCluster.logger)
                    try await Task.sleep(for: .milliseconds(15))
                }
            }
        }
        try await Task.sleep(for: .milliseconds(500))
        try await server.stop(signal)
        try await eventually("offline") { client.status.state == .offline }
        try await Task.sleep(for: .milliseconds(300))
        try await server.start()
        let ready = ContinuousClock.now
        try await eventually("live again") { client.status.state == .live }
        let reconnect = ContinuousClock.now - ready
        print("measured: \(signal == SIGKILL ? "SIGKILL" : "SIGTERM") restart → client live \(reconnect) after /readyz (backoff cap 2 s)")
        // The status sequence went live → offline → (resyncing →) live.
        try await eventually("the status sequence to end live") { statuses.withLockedValue { $0 }.last == .live }
        let seen = statuses.withLockedValue { $0 }
        #expect(seen.first == .connecting)
        let afterOutage = seen.drop { $0 != .offline }
        #expect(afterOutage.first == .offline && afterOutage.last == .live, "\(seen)")
        watcher.cancel()
        try await writer.value

        let expected = try await Self.postgresRows(server.database)
        try await eventually("the client's rows equal Postgres's") { Self.clientRows(query) == expected }
        #expect(Self.clientRows(query) == expected)
        // Each row reached the app once: inserted at most once by a change, never twice.
        let inserts = recorder.insertsByKey
        #expect(inserts.values.allSatisfy { $0 == 1 }, "duplicated inserts: \(inserts.filter { $0.value > 1 })")
        // And each reached it at all: in the snapshot (the opening balance; a writer's first row
        // may commit before the server reads it) or by one insert, never by anything else.
        let inSnapshot = Set(recorder.snapshotIDs.map { #"{"id":"\#($0)"}"# })
        let unexplained = expected.keys.filter { inserts[$0] == nil && !inSnapshot.contains($0) }
        #expect(unexplained.isEmpty, "rows neither in the snapshot nor inserted: \(unexplained.map { ($0, recorder.opsByKey[$0] ?? []) })")
        #expect(inserts.keys.allSatisfy { !inSnapshot.contains($0) }, "rows both in the snapshot and inserted")
        #expect(inserts.count + inSnapshot.count == expected.count, "\(inserts.count) inserted, \(inSnapshot.count) in the snapshot")
        #expect(!recorder.kinds.contains("reset"))
        // The store holds the same rows with the cursor: a restart of the app would resume from there.
        // It follows the view by one group commit (rows and cursor are written together once the
        // client's inbox is empty), so wait for it.
        try await eventually("the store to hold every row") { try await store.load().feeds.first?.rows.count == expected.count }
        recorder.stop()
        await client.close()
        try await store.close()
        try await server.stop()
    }

    @Test("a mutation queued while the server is down is applied exactly once after reconnect")
    func queuedWhileDown() async throws {
        let server = try await ServerProcess()
        try await server.start()
        let storePath = TempStorePath()
        defer { storePath.remove() }
        let store = try await SQLiteClientStore(path: storePath.path)
        let client = makeClient(url: server.url, store: store, cap: .seconds(1))
        let accounts = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
        try await eventually("live") { client.status.state == .live }
        let before = try #require(accounts.row(forKey: ["id": "alice-checking"])?["balance"]?.decimal)

        try await server.stop(SIGKILL)
        try await eventually("offline") { client.status.state == .offline }
        let pending = try await client.enqueue("transfer", args: ["from": "alice-checking", "to": "bob-checking", "amount": .number("12.34"), "memo": "while-down"])
        #expect(client.status.pending == 1)
        try await Task.sleep(for: .milliseconds(500))
        try await server.start()
        let result = try await pending.result
        #expect(result["debit"]?.stringValue != nil)
        #expect(try await server.database.scalar("SELECT count(*) FROM transactions WHERE memo = 'while-down'") == "2")
        try await eventually("the balance moved once") {
            accounts.row(forKey: ["id": "alice-checking"])?["balance"]?.decimal == before - Decimal(string: "12.34")!
        }
        #expect(Decimal(string: try await server.database.scalar("SELECT balance FROM accounts WHERE id = 'alice-checking'")) == before - Decimal(string: "12.34")!)
        await client.close()
        try await store.close()
        try await server.stop()
    }
}

/// The client as a separate process (examples/swift-client), killed and started again against the
/// same store: a queued transfer is never lost or doubled.
@Suite("Swift client: process crashes", .serialized)
struct ClientCrashTests {
    static func runClient(_ server: ServerProcess, store: TempStorePath, crashAt: String? = nil) throws -> ChildProcess {
        try ChildProcess(ChildProcess.binary("syncline-swift-client-example"), [
            "--url", server.url, "--dev-token", "--store", store.path, "--account", "alice-checking",
        ], environment: crashAt.map { ["SYNCLINE_CLIENT_CRASH_AT": $0] } ?? [:], name: "client \(crashAt ?? "")")
    }

    @Test("a client process killed with SIGKILL after queueing offline sends the transfer once when started again")
    func killedAfterQueueing() async throws {
        let server = try await ServerProcess()
        let store = TempStorePath()
        defer { store.remove() }
        // The server is not up yet: the transfer can only be queued.
        let first = try Self.runClient(server, store: store)
        first.write("transfer bob-checking 1.25 killed-offline")
        try await first.waitForLine(containing: "queued mid=1")
        first.signal(SIGKILL)
        #expect(try await first.waitForExit() != 0)

        try await server.start()
        let second = try Self.runClient(server, store: store)
        try await second.waitForLine(containing: "outcome mid=1 acked")
        second.write("wait")
        try await second.waitForLine(containing: "idle")
        second.write("quit")
        try await second.waitForExit()
        #expect(try await server.database.scalar("SELECT count(*) FROM transactions WHERE memo = 'killed-offline'") == "2")
        try await server.stop()
    }

    @Test("after an injected crash the restarted client neither loses nor doubles the mutation",
          arguments: ["before-send", "after-send", "after-ack"])
    func crashPoint(_ point: String) async throws {
        let server = try await ServerProcess()
        try await server.start()
        let store = TempStorePath()
        defer { store.remove() }
        let memo = "crash-\(point)"
        let first = try Self.runClient(server, store: store, crashAt: point)
        try await first.waitForLine(containing: "live")
        first.write("transfer bob-checking 2.50 \(memo)")
        let status = try await first.waitForExit()
        #expect(status == SIGKILL, "the client should have killed itself at \(point): \(first.lines)")
        #expect(first.lines.contains { $0.contains("crash point \(point)") })
        if point == "before-send" {
            #expect(try await server.database.scalar("SELECT count(*) FROM transactions WHERE memo = '\(memo)'") == "0")
        } else if point == "after-ack" {
            try await eventually("the server applied the sent transfer") {
                try await server.database.scalar("SELECT count(*) FROM transactions WHERE memo = '\(memo)'") == "2"
            }
        } else {
            // Sent, but the kill resets the connection, and a reset drops bytes the server had not
            // read yet: applied (the restart must not double it) or never received (the restart
            // must send it). Usually applied; either way, exactly once below.
            let applied = (try? await eventually("the server applied the sent transfer", timeout: .seconds(10)) {
                try await server.database.scalar("SELECT count(*) FROM transactions WHERE memo = '\(memo)'") == "2"
            }) != nil
            print("crash after-send: the server \(applied ? "had applied" : "never received") the transfer before the restart")
        }

        let second = try Self.runClient(server, store: store)
        try await second.waitForLine(containing: "outcome mid=1 acked")
        second.write("quit")
        try await second.waitForExit()
        #expect(try await server.database.scalar("SELECT count(*) FROM transactions WHERE memo = '\(memo)'") == "2")
        try await server.stop()
    }
}

extension TestDatabase {
    /// One value from `psql`, without the trailing newline.
    func scalar(_ sql: String) async throws -> String {
        try await psql(sql).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
