import Foundation
@testable import SynclineClient
import SynclineProtocol
import Testing

@Suite("Client stores")
struct ClientStoreTests {
    static func batches() -> [StoreBatch] {
        let spec = FeedSpec.collection(name: "accounts", filter: ["owner": "alice"])
        var first = StoreBatch()
        first.clientID = "dev-1"
        first.nextMID = 3
        first.insertMutations = [StoredMutation(mid: 1, name: "transfer", args: ["amount": .number("10.50")]),
                                 StoredMutation(mid: 2, name: "transfer", args: ["amount": 1])]
        first.feeds = [.replace(spec: spec, keyColumns: ["id"], cursor: "E.5", rows: [
            StoredRow(key: ["id": "a"], row: ["id": "a", "balance": .number("1250.00")]),
            StoredRow(key: ["id": "b"], row: ["id": "b", "balance": .number("-3.50")]),
        ])]
        var second = StoreBatch()
        second.deleteMutations = [1]
        second.feeds = [
            .apply(spec: spec, keyColumns: ["id"], cursor: "E.9", upserts: [StoredRow(key: ["id": "c"], row: ["id": "c", "balance": 7])],
                   deletes: [["id": "a"]]),
            .apply(spec: .topic("user:alice"), keyColumns: [], cursor: "E.8", upserts: [], deletes: []),
        ]
        var third = StoreBatch()
        third.feeds = [.remove(spec: .topic("user:alice"))]
        third.deleteMutations = [2]
        third.insertMutations = [StoredMutation(mid: 4, name: "transfer", args: ["amount": 1])]
        third.nextMID = 5
        return [first, second, third]
    }

    @Test func sqliteKeepsExactlyWhatTheMemoryStoreKeeps() async throws {
        let path = NSTemporaryDirectory() + "syncline-store-\(UUID().uuidString).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let sqlite = try await SQLiteClientStore(path: path)
        let memory = MemoryClientStore()
        for batch in Self.batches() {
            try await sqlite.write(batch)
            try await memory.write(batch)
            let a = try await sqlite.load()
            let b = try await memory.load()
            #expect(a.clientID == b.clientID)
            #expect(a.nextMID == b.nextMID)
            #expect(a.mutations == b.mutations)
            #expect(Set(a.feeds.map(\.spec)) == Set(b.feeds.map(\.spec)))
            for feed in a.feeds {
                let other = b.feeds.first { $0.spec == feed.spec }!
                #expect(feed.cursor == other.cursor)
                #expect(Set(feed.rows) == Set(other.rows))
            }
        }
        try await sqlite.close()
        // A new process opening the file sees the same (digits included).
        let reopened = try await SQLiteClientStore(path: path)
        let state = try await reopened.load()
        #expect(state.clientID == "dev-1")
        #expect(state.nextMID == 5)
        #expect(state.mutations.map(\.mid) == [4])
        #expect(state.feeds.count == 1)
        #expect(state.feeds[0].cursor == "E.9")
        #expect(state.feeds[0].rows.map { $0.row["balance"]?.numberText } .sorted { ($0 ?? "") < ($1 ?? "") } == ["-3.50", "7"])
        try await reopened.close()
    }

    @Test func aClosedStoreRefusesWrites() async throws {
        let path = NSTemporaryDirectory() + "syncline-store-\(UUID().uuidString).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let store = try await SQLiteClientStore(path: path)
        var batch = StoreBatch()
        batch.nextMID = 2
        try await store.write(batch)
        try await store.close()
        await #expect(throws: (any Error).self) { try await store.write(batch) }
    }
}

@Suite("Client values")
struct ClientValueTests {
    @Test func decimalsComeFromTheDigitsAndKeepTheirScale() throws {
        let balance = try JSONParser.parse("1250.00")
        #expect(balance.decimal == Decimal(string: "1250.00"))
        #expect(balance.subtracting(.number("100.5"))?.numberText == "1149.50")
        #expect(JSONValue.number("0.1").adding(.number("0.2"))?.numberText == "0.3")
        #expect(try JSONParser.parse("12345678901234567890.12").decimal?.description == "12345678901234567890.12")
    }

    @Test func keyStringsIgnoreMemberOrder() throws {
        let a = try JSONParser.parse("{\"b\":1,\"a\":\"x\"}")
        let b = try JSONParser.parse("{\"a\":\"x\",\"b\":1}")
        #expect(a.keyString == b.keyString)
        #expect(a.keyString == "{\"a\":\"x\",\"b\":1}")
    }

    @Test func filtersMatchNumbersByValue() throws {
        let row = try JSONParser.parse("{\"n\":10.0,\"s\":\"x\",\"z\":null}")
        #expect(row.matches(["n": 10, "s": "x", "z": .null]))
        #expect(!row.matches(["n": 11]))
        #expect(row.matches(["missing": .null]))
    }

    @Test func tokenExpiryIsRead() {
        #expect(tokenExpiry(CoreHarness.token(exp: 1_800_000_000)) == 1_800_000_000)
        #expect(tokenExpiry("garbage") == nil)
    }

    @Test func aConsumerThatFallsBehindGetsOneResync() async {
        let queue = EventQueue<LiveQueryEvent>(limit: 3) { _ in [.resynced([["id": 1]])] }
        for i in 0..<10 { queue.push(.changes([RowChange(op: .insert, key: ["id": .number(String(i))], row: nil, pending: false)])) }
        queue.finish()
        var got: [LiveQueryEvent] = []
        for await event in SynclineEvents(queue: queue) { got.append(event) }
        #expect(got.count <= 3)
        #expect(got.first == .resynced([["id": 1]]))
    }
}
