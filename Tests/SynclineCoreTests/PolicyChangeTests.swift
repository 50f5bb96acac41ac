import SynclineCore
import SynclineProtocol
import Testing

@Suite("Policy changes")
struct PolicyChangeTests {
    static func record(_ collection: String, _ match: [String: JSONValue], operation: ChangeRecord.Operation = .policy) -> ChangeRecord {
        ChangeRecord(position: 7, transaction: 1, operation: operation, collection: collection, topic: nil,
                     key: nil, oldKey: nil, row: nil, newMatch: match, oldMatch: nil)
    }

    @Test("a policy record names one (collection, column, value); other records name none")
    func decoding() {
        let change = PolicyChange(Self.record("transactions", ["account_id": .string("alice-savings")]))
        #expect(change == PolicyChange(collection: "transactions", column: "account_id", value: .string("alice-savings")))
        #expect(PolicyChange(Self.record("transactions", ["account_id": .string("x")], operation: .update)) == nil)
        #expect(PolicyChange(Self.record("transactions", [:])) == nil)
        #expect(PolicyChange(Self.record("transactions", ["a": .null, "b": .null])) == nil)
        let batch = [Self.record("t", ["a": .null], operation: .insert), Self.record("t", ["a": .number("1")])]
        #expect(PolicyChange.all(in: batch) == [PolicyChange(collection: "t", column: "a", value: .number("1"))])
    }

    @Test("maps the feeds that pin the column to the value, or do not pin it; never others or topics")
    func mapping() {
        let change = PolicyChange(collection: "transactions", column: "account_id", value: .string("alice-savings"))
        #expect(change.maps(.collection("transactions", filter: ["account_id": .string("alice-savings")])))
        #expect(change.maps(.collection("transactions", filter: ["account_id": .string("alice-savings"), "id": .string("x")])))
        #expect(change.maps(.collection("transactions", filter: ["id": .string("x")])))  // cannot exclude it
        #expect(change.maps(.collection("transactions", filter: [:])))
        #expect(!change.maps(.collection("transactions", filter: ["account_id": .string("alice-checking")])))
        #expect(!change.maps(.collection("accounts", filter: ["account_id": .string("alice-savings")])))
        #expect(!change.maps(.topic("user:alice")))
    }

    @Test("a policy record matches no feed in the subscription index")
    func indexSkipsPolicyRecords() {
        var index = SubscriptionIndex()
        _ = index.retain(.collection("transactions", filter: ["account_id": .string("alice-savings")]))
        _ = index.retain(.collection("transactions", filter: [:]))
        var hits = 0
        index.match(Self.record("transactions", ["account_id": .string("alice-savings")])) { _, _ in hits += 1 }
        #expect(hits == 0)
    }
}
