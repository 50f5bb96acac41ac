@testable import SynclinePostgres
import SynclineCore
import Testing

/// Page trimming by size (the tail's batches end on a transaction boundary once their rows pass
/// the byte limit) and the scope a shared catch-up reads.
@Suite("ChangeLogReader pages and scopes")
struct ChangeLogReaderTests {
    private func record(_ position: Int64, transaction: UInt64, bytes: Int) -> ChangeRecord {
        ChangeRecord(position: position, transaction: transaction, operation: .insert, collection: "t", topic: nil,
                     key: "{}", oldKey: nil, row: String(repeating: "x", count: bytes), newMatch: [:], oldMatch: nil)
    }

    @Test func smallPagesAreNotCut() {
        let records = (1...10).map { record(Int64($0), transaction: UInt64($0), bytes: 100) }
        #expect(ChangeLogReader.transactionEndPastByteLimit(records, byteLimit: 10_000) == nil)
    }

    @Test func cutEndsWithTheTransactionThatPassedTheLimit() {
        // Transactions: 1 = [0], 2 = [1, 2, 3], 3 = [4]; the limit is passed inside transaction 2.
        let records = [
            record(1, transaction: 1, bytes: 400),
            record(2, transaction: 2, bytes: 400),
            record(3, transaction: 2, bytes: 400),
            record(4, transaction: 2, bytes: 400),
            record(5, transaction: 3, bytes: 400),
        ]
        #expect(ChangeLogReader.transactionEndPastByteLimit(records, byteLimit: 1_000) == 3)
        // One record alone over the limit is still delivered, with its transaction.
        #expect(ChangeLogReader.transactionEndPastByteLimit(records, byteLimit: 10) == 0)
    }

    @Test func scopeCoveringFeeds() {
        let checking = FeedKey.collection("transactions", filter: ["account_id": .string("alice-checking")])
        let savings = FeedKey.collection("transactions", filter: ["account_id": .string("alice-savings")])
        #expect(ChangeLogReader.Scope.covering([checking, savings]) == .collection("transactions"))
        #expect(ChangeLogReader.Scope.covering([.topic("user:alice"), .topic("user:alice")]) == .topic("user:alice"))
        #expect(ChangeLogReader.Scope.covering([checking, .topic("user:alice")]) == .all)
        #expect(ChangeLogReader.Scope.covering([checking, FeedKey.collection("accounts", filter: [:])]) == .all)
        #expect(ChangeLogReader.Scope.covering([.topic("a"), .topic("b")]) == .all)
        #expect(ChangeLogReader.Scope.covering([]) == .all)
    }
}
