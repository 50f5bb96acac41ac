import SynclineCore
import SynclineProtocol
import Testing

/// One `(feed, effect)` reported by `SubscriptionIndex.match`.
private struct Hit: Hashable, CustomStringConvertible {
    var feed: FeedID
    var effect: FeedEffect
    init(_ feed: FeedID, _ effect: FeedEffect) {
        self.feed = feed
        self.effect = effect
    }
    var description: String { "\(feed):\(effect)" }
}

private func hits(_ index: SubscriptionIndex, _ record: ChangeRecord) -> [Hit] {
    var out: [Hit] = []
    index.match(record) { out.append(Hit($0, $1)) }
    return out.sorted { ($0.feed.rawValue, "\($0.effect)") < ($1.feed.rawValue, "\($1.effect)") }
}

private func row(
    _ operation: ChangeRecord.Operation, _ collection: String = "orders", position: Int64 = 1,
    key: String? = #"{"id":1}"#, oldKey: String? = nil, row: String? = #"{"id":1}"#,
    new: [String: JSONValue]? = nil, old: [String: JSONValue]? = nil
) -> ChangeRecord {
    ChangeRecord(position: position, transaction: 100, operation: operation, collection: collection, topic: nil,
                 key: key, oldKey: oldKey, row: row, newMatch: new, oldMatch: old)
}

private func message(_ topic: String, position: Int64 = 1) -> ChangeRecord {
    ChangeRecord(position: position, transaction: 100, operation: .message, collection: nil, topic: topic,
                 key: nil, oldKey: nil, row: #"{"text":"hi"}"#, newMatch: nil, oldMatch: nil)
}

private func truncate(_ collection: String) -> ChangeRecord {
    ChangeRecord(position: 1, transaction: 100, operation: .truncate, collection: collection, topic: nil,
                 key: nil, oldKey: nil, row: nil, newMatch: nil, oldMatch: nil)
}

private let openImage: [String: JSONValue] = ["status": .string("open")]
private let closedImage: [String: JSONValue] = ["status": .string("closed")]

@Suite("SubscriptionIndex")
struct SubscriptionIndexTests {
    // MARK: - reference counting and sharing

    @Test func sameKeySharesOneFeed() {
        var index = SubscriptionIndex()
        let first = index.retain(.collection("orders", filter: ["status": .string("open"), "owner": .string("u1")]))
        #expect(first.created)
        let second = index.retain(.collection(name: "orders", columns: ["owner", "status"], values: [.string("u1"), .string("open")]))
        #expect(!second.created)
        #expect(second.id == first.id)
        #expect(index.feedCount == 1)
        #expect(index.references(of: first.id) == 2)
        #expect(index.key(of: first.id) == .collection(name: "orders", columns: ["owner", "status"], values: [.string("u1"), .string("open")]))
    }

    @Test func differentKeysGetDifferentFeeds() {
        var index = SubscriptionIndex()
        let ids = [
            index.retain(.collection("orders", filter: openImage)).id,
            index.retain(.collection("orders", filter: closedImage)).id,
            index.retain(.collection("orders", filter: ["status": .number("1")])).id,
            index.retain(.collection("orders", filter: [:])).id,
            index.retain(.collection("invoices", filter: openImage)).id,
            index.retain(.topic("orders")).id,
            index.retain(.topic("chat")).id,
        ]
        #expect(Set(ids).count == ids.count)
        #expect(index.feedCount == ids.count)
        for id in ids { #expect(index.references(of: id) == 1) }
    }

    @Test func filterValuesCompareByExactText() {
        var index = SubscriptionIndex()
        let a = index.retain(.collection("orders", filter: ["amount": .number("1250.00")])).id
        let b = index.retain(.collection("orders", filter: ["amount": .number("1250")])).id
        let c = index.retain(.collection("orders", filter: ["amount": .string("1250")])).id
        #expect(Set([a, b, c]).count == 3)
    }

    @Test func releaseCountsReferencesDown() {
        var index = SubscriptionIndex()
        let key = FeedKey.collection("orders", filter: openImage)
        let id = index.retain(key).id
        _ = index.retain(key)
        _ = index.retain(key)
        #expect(index.references(of: id) == 3)
        #expect(index.release(id) == false)
        #expect(index.references(of: id) == 2)
        #expect(index.release(id) == false)
        #expect(index.references(of: id) == 1)
        #expect(hits(index, row(.insert, new: openImage)) == [Hit(id, .insert)])
        #expect(index.release(id) == true)
        #expect(index.references(of: id) == 0)
        #expect(index.key(of: id) == nil)
        #expect(index.feedCount == 0)
        #expect(hits(index, row(.insert, new: openImage)).isEmpty)
        // Releasing a gone feed is a no-op.
        #expect(index.release(id) == false)
        #expect(index.release(FeedID(999)) == false)
    }

    @Test func retainAfterFinalReleaseCreatesAFreshFeed() {
        var index = SubscriptionIndex()
        let key = FeedKey.topic("chat")
        let old = index.retain(key).id
        index.release(old)
        let again = index.retain(key)
        #expect(again.created)
        #expect(again.id != old)
        #expect(hits(index, message("chat")) == [Hit(again.id, .message)])
    }

    @Test func releasingOneFeedLeavesItsNeighboursMatching() {
        var index = SubscriptionIndex()
        let openID = index.retain(.collection("orders", filter: openImage)).id
        let closedID = index.retain(.collection("orders", filter: closedImage)).id
        let topicID = index.retain(.topic("chat")).id
        index.release(openID)
        #expect(hits(index, row(.insert, new: openImage)).isEmpty)
        #expect(hits(index, row(.insert, new: closedImage)) == [Hit(closedID, .insert)])
        index.release(closedID)
        #expect(hits(index, row(.insert, new: closedImage)).isEmpty)
        #expect(hits(index, message("chat")) == [Hit(topicID, .message)])
        index.release(topicID)
        #expect(hits(index, message("chat")).isEmpty)
        #expect(index.feedCount == 0)
    }

    // MARK: - row changes through filters

    @Test func insertIntoFilterIsInsert() {
        var index = SubscriptionIndex()
        let openID = index.retain(.collection("orders", filter: openImage)).id
        _ = index.retain(.collection("orders", filter: closedImage))
        #expect(hits(index, row(.insert, new: openImage)) == [Hit(openID, .insert)])
    }

    @Test func insertOutsideEveryFilterMatchesNothing() {
        var index = SubscriptionIndex()
        _ = index.retain(.collection("orders", filter: openImage))
        #expect(hits(index, row(.insert, new: ["status": .string("draft")])).isEmpty)
        #expect(hits(index, row(.insert, new: ["status": .null])).isEmpty)
    }

    @Test func updateStayingInFilterIsUpdate() {
        var index = SubscriptionIndex()
        let openID = index.retain(.collection("orders", filter: openImage)).id
        #expect(hits(index, row(.update, new: openImage, old: openImage)) == [Hit(openID, .update)])
    }

    @Test func updateMovingOutIsDelete() {
        var index = SubscriptionIndex()
        let openID = index.retain(.collection("orders", filter: openImage)).id
        #expect(hits(index, row(.update, new: closedImage, old: openImage)) == [Hit(openID, .delete)])
    }

    @Test func updateMovingOutAndIntoAnotherFeed() {
        var index = SubscriptionIndex()
        let openID = index.retain(.collection("orders", filter: openImage)).id
        let closedID = index.retain(.collection("orders", filter: closedImage)).id
        var seen: [Hit] = []
        index.match(row(.update, new: closedImage, old: openImage)) { seen.append(Hit($0, $1)) }
        // Within one column set, the old feed hears of it first.
        #expect(seen == [Hit(openID, .delete), Hit(closedID, .insert)])
    }

    @Test func updateMovingInIsInsert() {
        var index = SubscriptionIndex()
        let closedID = index.retain(.collection("orders", filter: closedImage)).id
        #expect(hits(index, row(.update, new: closedImage, old: openImage)) == [Hit(closedID, .insert)])
    }

    @Test func keyChangeInsideTheFilterIsRekey() {
        var index = SubscriptionIndex()
        let openID = index.retain(.collection("orders", filter: openImage)).id
        let record = row(.update, key: #"{"id":2}"#, oldKey: #"{"id":1}"#, new: openImage, old: openImage)
        #expect(hits(index, record) == [Hit(openID, .rekey)])
    }

    @Test func keyChangeAcrossFeedsIsDeleteAndInsert() {
        var index = SubscriptionIndex()
        let openID = index.retain(.collection("orders", filter: openImage)).id
        let closedID = index.retain(.collection("orders", filter: closedImage)).id
        let record = row(.update, key: #"{"id":2}"#, oldKey: #"{"id":1}"#, new: closedImage, old: openImage)
        #expect(hits(index, record) == [Hit(openID, .delete), Hit(closedID, .insert)])
    }

    @Test func deleteIsDelete() {
        var index = SubscriptionIndex()
        let openID = index.retain(.collection("orders", filter: openImage)).id
        _ = index.retain(.collection("orders", filter: closedImage))
        #expect(hits(index, row(.delete, row: nil, new: nil, old: openImage)) == [Hit(openID, .delete)])
        // A new image on a delete is ignored.
        #expect(hits(index, row(.delete, row: nil, new: closedImage, old: openImage)) == [Hit(openID, .delete)])
    }

    @Test func insertIgnoresAnOldImage() {
        var index = SubscriptionIndex()
        let openID = index.retain(.collection("orders", filter: openImage)).id
        let closedID = index.retain(.collection("orders", filter: closedImage)).id
        #expect(hits(index, row(.insert, new: closedImage, old: openImage)) == [Hit(closedID, .insert)])
        _ = openID
    }

    @Test func unfilteredFeedMatchesEverythingOfItsCollection() {
        var index = SubscriptionIndex()
        let all = index.retain(.collection("orders", filter: [:])).id
        #expect(hits(index, row(.insert, new: openImage)) == [Hit(all, .insert)])
        #expect(hits(index, row(.insert, new: nil)) == [Hit(all, .insert)])
        #expect(hits(index, row(.update, new: closedImage, old: openImage)) == [Hit(all, .update)])
        #expect(hits(index, row(.update, new: nil, old: nil)) == [Hit(all, .update)])
        #expect(hits(index, row(.update, key: #"{"id":2}"#, oldKey: #"{"id":1}"#, new: nil, old: nil)) == [Hit(all, .rekey)])
        #expect(hits(index, row(.delete, row: nil, old: nil)) == [Hit(all, .delete)])
        #expect(hits(index, row(.insert, "invoices")).isEmpty)
    }

    @Test func filteredAndUnfilteredFeedsBothHearOfAChange() {
        var index = SubscriptionIndex()
        let all = index.retain(.collection("orders", filter: [:])).id
        let openID = index.retain(.collection("orders", filter: openImage)).id
        let ownerID = index.retain(.collection("orders", filter: ["owner": .string("u1")])).id
        let both = index.retain(.collection("orders", filter: ["owner": .string("u1"), "status": .string("open")])).id
        let image: [String: JSONValue] = ["owner": .string("u1"), "status": .string("open"), "other": .bool(true)]
        #expect(hits(index, row(.insert, new: image)) == [
            Hit(all, .insert), Hit(openID, .insert), Hit(ownerID, .insert), Hit(both, .insert),
        ].sorted { $0.feed.rawValue < $1.feed.rawValue })
        // Moving out of status=open only: the owner feed keeps it, the others change.
        let moved: [String: JSONValue] = ["owner": .string("u1"), "status": .string("closed")]
        #expect(hits(index, row(.update, new: moved, old: image)) == [
            Hit(all, .update), Hit(openID, .delete), Hit(ownerID, .update), Hit(both, .delete),
        ].sorted { $0.feed.rawValue < $1.feed.rawValue })
    }

    @Test func otherCollectionNeverMatches() {
        var index = SubscriptionIndex()
        _ = index.retain(.collection("orders", filter: openImage))
        _ = index.retain(.collection("orders", filter: [:]))
        _ = index.retain(.topic("invoices"))
        #expect(hits(index, row(.insert, "invoices", new: openImage)).isEmpty)
        #expect(hits(index, row(.update, "invoices", new: openImage, old: openImage)).isEmpty)
        #expect(hits(index, row(.delete, "invoices", old: openImage)).isEmpty)
        #expect(hits(index, truncate("invoices")).isEmpty)
    }

    @Test func missingFilterColumnInAnImageIsNoMatch() {
        var index = SubscriptionIndex()
        let filter: [String: JSONValue] = ["owner": .string("u1"), "status": .string("open")]
        let id = index.retain(.collection("orders", filter: filter)).id
        #expect(hits(index, row(.insert, new: ["status": .string("open")])).isEmpty)
        #expect(hits(index, row(.insert, new: [:])).isEmpty)
        #expect(hits(index, row(.insert, new: nil)).isEmpty)
        #expect(hits(index, row(.delete, old: ["owner": .string("u1")])).isEmpty)
        // Extra columns in the image do not matter.
        #expect(hits(index, row(.insert, new: filter.merging(["x": .number("1")]) { a, _ in a })) == [Hit(id, .insert)])
    }

    @Test func nullFilterMeansIsNullNotMissing() {
        var index = SubscriptionIndex()
        let id = index.retain(.collection("orders", filter: ["archived_at": .null])).id
        #expect(hits(index, row(.insert, new: ["archived_at": .null])) == [Hit(id, .insert)])
        #expect(hits(index, row(.insert, new: ["archived_at": .string("2024-01-01T00:00:00Z")])).isEmpty)
        #expect(hits(index, row(.insert, new: ["other": .null])).isEmpty)
    }

    @Test func numbersMatchByCanonicalText() {
        var index = SubscriptionIndex()
        let id = index.retain(.collection("orders", filter: ["amount": .number("1250.00")])).id
        #expect(hits(index, row(.insert, new: ["amount": .number("1250.00")])) == [Hit(id, .insert)])
        #expect(hits(index, row(.insert, new: ["amount": .number("1250")])).isEmpty)
        #expect(hits(index, row(.insert, new: ["amount": .string("1250.00")])).isEmpty)
    }

    // MARK: - truncate and messages

    @Test func truncateResetsEveryFeedOfTheCollection() {
        var index = SubscriptionIndex()
        let a = index.retain(.collection("orders", filter: openImage)).id
        let b = index.retain(.collection("orders", filter: closedImage)).id
        let c = index.retain(.collection("orders", filter: ["owner": .string("u1")])).id
        let d = index.retain(.collection("orders", filter: [:])).id
        _ = index.retain(.collection("invoices", filter: [:]))
        _ = index.retain(.topic("orders"))
        #expect(hits(index, truncate("orders")) == [Hit(a, .reset), Hit(b, .reset), Hit(c, .reset), Hit(d, .reset)])
    }

    @Test func messageReachesOnlyItsTopicFeed() {
        var index = SubscriptionIndex()
        let chat = index.retain(.topic("chat")).id
        _ = index.retain(.topic("chat2"))
        _ = index.retain(.collection("chat", filter: [:]))
        #expect(hits(index, message("chat")) == [Hit(chat, .message)])
        #expect(hits(index, message("other")).isEmpty)
    }

    @Test func rowChangesNeverReachTopicFeeds() {
        var index = SubscriptionIndex()
        _ = index.retain(.topic("orders"))
        #expect(hits(index, row(.insert, new: openImage)).isEmpty)
        #expect(hits(index, truncate("orders")).isEmpty)
    }

    // MARK: - FeedKey

    @Test func feedKeyCanonicalForm() {
        let key = FeedKey.collection("orders", filter: ["status": .string("open"), "amount": .number("1.50"), "a": .null])
        #expect(key == .collection(name: "orders", columns: ["a", "amount", "status"], values: [.null, .number("1.50"), .string("open")]))
        #expect(key.collectionName == "orders")
        #expect(key.filterJSON == #"{"a":null,"amount":1.50,"status":"open"}"#)
        #expect(FeedKey.topic("t").collectionName == nil)
        #expect(FeedKey.topic("t").filterJSON == "{}")
        #expect(FeedKey.collection("orders", filter: [:]).filterJSON == "{}")
    }
}
