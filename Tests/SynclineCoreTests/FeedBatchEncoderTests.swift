import NIOCore
import SynclineCore
import SynclineProtocol
import Testing

private let epoch = "ab12"
private let changesPrefix = #"{"type":"changes","sub":"s1","#
private let messagePrefix = #"{"type":"message","sub":"t1","#

private func text(_ buffer: ByteBuffer?) -> String? {
    buffer.map { String(buffer: $0) }
}

/// Prefix + body must be one valid JSON object.
private func frame(_ prefix: String, _ body: ByteBuffer?) throws -> JSONValue {
    let body = try #require(body)
    return try JSONParser.parse(prefix + String(buffer: body))
}

private func record(
    _ operation: ChangeRecord.Operation, position: Int64, collection: String = "orders",
    key: String? = nil, oldKey: String? = nil, row: String? = nil,
    new: [String: JSONValue]? = nil, old: [String: JSONValue]? = nil
) -> ChangeRecord {
    ChangeRecord(position: position, transaction: UInt64(position), operation: operation, collection: collection,
                 topic: nil, key: key, oldKey: oldKey, row: row, newMatch: new, oldMatch: old)
}

private func message(_ topic: String, position: Int64, payload: String?) -> ChangeRecord {
    ChangeRecord(position: position, transaction: UInt64(position), operation: .message, collection: nil, topic: topic,
                 key: nil, oldKey: nil, row: payload, newMatch: nil, oldMatch: nil)
}

private let openImage: [String: JSONValue] = ["status": .string("open")]
private let closedImage: [String: JSONValue] = ["status": .string("closed")]

@Suite("FeedBatchEncoder")
struct FeedBatchEncoderTests {
    let encoder = FeedBatchEncoder(epoch: epoch)

    @Test func insertBodyIsExactAndSplicesRowText() throws {
        var index = SubscriptionIndex()
        let feed = index.retain(.collection("orders", filter: openImage)).id
        let rowText = #"{"id":1,"amount":1250.00,"note":"a\"b","tags":["x"],"at":"2024-01-01T00:00:00Z"}"#
        let batch = encoder.encode(
            [record(.insert, position: 5, key: #"{"id":1}"#, row: rowText, new: openImage)],
            after: 4, through: 7, index: index)
        #expect(batch.after == 4)
        #expect(batch.through == 7)
        #expect(batch.records.count == 1)
        let body = try #require(batch.bodies[feed])
        #expect(!body.reset)
        #expect(body.messages.isEmpty)
        #expect(text(body.changes) == #""cursor":"ab12.7","changes":[{"op":"insert","key":{"id":1},"row":"# + rowText + "}]}")

        let value = try frame(changesPrefix, body.changes)
        #expect(value["type"] == .string("changes"))
        #expect(value["sub"] == .string("s1"))
        #expect(value["cursor"] == .string("ab12.7"))
        guard case .array(let changes)? = value["changes"] else {
            Issue.record("no changes array in \(value)")
            return
        }
        #expect(changes.count == 1)
        #expect(changes[0]["op"] == .string("insert"))
        #expect(changes[0]["key"] == .object([("id", .number("1"))]))
        #expect(changes[0]["row"]?["amount"] == .number("1250.00"))
        #expect(changes[0]["row"]?["note"] == .string("a\"b"))
    }

    @Test func changesKeepRecordOrderInOneBody() throws {
        var index = SubscriptionIndex()
        let feed = index.retain(.collection("orders", filter: [:])).id
        let records = [
            record(.insert, position: 11, key: #"{"id":1}"#, row: #"{"id":1,"v":1}"#),
            record(.update, position: 12, key: #"{"id":1}"#, row: #"{"id":1,"v":2}"#),
            record(.insert, position: 13, key: #"{"id":2}"#, row: #"{"id":2,"v":1}"#),
            record(.delete, position: 14, key: #"{"id":1}"#),
        ]
        let batch = encoder.encode(records, after: 10, through: 14, index: index)
        let body = try #require(batch.bodies[feed])
        #expect(text(body.changes) == #""cursor":"ab12.14","changes":["#
            + #"{"op":"insert","key":{"id":1},"row":{"id":1,"v":1}},"#
            + #"{"op":"update","key":{"id":1},"row":{"id":1,"v":2}},"#
            + #"{"op":"insert","key":{"id":2},"row":{"id":2,"v":1}},"#
            + #"{"op":"delete","key":{"id":1},"row":null}]}"#)
        let value = try frame(changesPrefix, body.changes)
        guard case .array(let changes)? = value["changes"] else {
            Issue.record("no changes array")
            return
        }
        #expect(changes.map { $0["op"] } == [.string("insert"), .string("update"), .string("insert"), .string("delete")])
        #expect(changes[3]["row"] == .null)
    }

    @Test func updateMovingOutIsDeleteOfTheOldKeyAndInsertElsewhere() throws {
        var index = SubscriptionIndex()
        let openFeed = index.retain(.collection("orders", filter: openImage)).id
        let closedFeed = index.retain(.collection("orders", filter: closedImage)).id
        let change = record(.update, position: 20, key: #"{"id":2}"#, oldKey: #"{"id":1}"#,
                            row: #"{"id":2,"status":"closed"}"#, new: closedImage, old: openImage)
        let batch = encoder.encode([change], after: 19, through: 20, index: index)
        #expect(text(batch.bodies[openFeed]?.changes)
            == #""cursor":"ab12.20","changes":[{"op":"delete","key":{"id":1},"row":null}]}"#)
        #expect(text(batch.bodies[closedFeed]?.changes)
            == #""cursor":"ab12.20","changes":[{"op":"insert","key":{"id":2},"row":{"id":2,"status":"closed"}}]}"#)
        _ = try frame(changesPrefix, batch.bodies[openFeed]?.changes)
        _ = try frame(changesPrefix, batch.bodies[closedFeed]?.changes)
    }

    @Test func updateMovingOutWithoutKeyChangeDeletesTheKey() throws {
        var index = SubscriptionIndex()
        let openFeed = index.retain(.collection("orders", filter: openImage)).id
        let change = record(.update, position: 3, key: #"{"id":9}"#, row: #"{"id":9,"status":"closed"}"#,
                            new: closedImage, old: openImage)
        let batch = encoder.encode([change], after: 2, through: 3, index: index)
        #expect(text(batch.bodies[openFeed]?.changes)
            == #""cursor":"ab12.3","changes":[{"op":"delete","key":{"id":9},"row":null}]}"#)
    }

    @Test func rekeyIsDeleteOfOldKeyThenInsertOfNewKey() throws {
        var index = SubscriptionIndex()
        let feed = index.retain(.collection("orders", filter: openImage)).id
        let change = record(.update, position: 8, key: #"{"id":2}"#, oldKey: #"{"id":1}"#,
                            row: #"{"id":2,"status":"open"}"#, new: openImage, old: openImage)
        let batch = encoder.encode([change], after: 7, through: 8, index: index)
        let body = try #require(batch.bodies[feed])
        #expect(text(body.changes) == #""cursor":"ab12.8","changes":["#
            + #"{"op":"delete","key":{"id":1},"row":null},"#
            + #"{"op":"insert","key":{"id":2},"row":{"id":2,"status":"open"}}]}"#)
        let value = try frame(changesPrefix, body.changes)
        guard case .array(let changes)? = value["changes"] else {
            Issue.record("no changes array")
            return
        }
        #expect(changes.count == 2)
        #expect(changes[0]["key"] == .object([("id", .number("1"))]))
        #expect(changes[1]["key"] == .object([("id", .number("2"))]))
    }

    @Test func onlyMatchedFeedsGetBodies() throws {
        var index = SubscriptionIndex()
        let openFeed = index.retain(.collection("orders", filter: openImage)).id
        let closedFeed = index.retain(.collection("orders", filter: closedImage)).id
        let otherCollection = index.retain(.collection("invoices", filter: [:])).id
        let topic = index.retain(.topic("chat")).id
        let batch = encoder.encode([record(.insert, position: 2, key: #"{"id":1}"#, row: #"{"id":1}"#, new: openImage)],
                                   after: 1, through: 2, index: index)
        #expect(Set(batch.bodies.keys) == [openFeed])
        #expect(batch.bodies[closedFeed] == nil)
        #expect(batch.bodies[otherCollection] == nil)
        #expect(batch.bodies[topic] == nil)
    }

    @Test func emptyBatchHasNoBodies() {
        var index = SubscriptionIndex()
        _ = index.retain(.collection("orders", filter: [:]))
        let batch = encoder.encode([], after: 5, through: 9, index: index)
        #expect(batch.bodies.isEmpty)
        #expect(batch.after == 5)
        #expect(batch.through == 9)
    }

    @Test func sharedFeedIsEncodedOncePerFeed() throws {
        var index = SubscriptionIndex()
        let key = FeedKey.collection("orders", filter: openImage)
        let feed = index.retain(key).id
        _ = index.retain(key)
        let batch = encoder.encode([record(.insert, position: 2, key: #"{"id":1}"#, row: #"{"id":1}"#, new: openImage)],
                                   after: 1, through: 2, index: index)
        #expect(batch.bodies.count == 1)
        #expect(text(batch.bodies[feed]?.changes) == #""cursor":"ab12.2","changes":[{"op":"insert","key":{"id":1},"row":{"id":1}}]}"#)
    }

    @Test func messagesCarryTheirOwnPosition() throws {
        var index = SubscriptionIndex()
        let chat = index.retain(.topic("chat")).id
        let other = index.retain(.topic("other")).id
        let batch = encoder.encode([
            message("chat", position: 9, payload: #"{"text":"hi","n":1.50}"#),
            message("chat", position: 10, payload: nil),
        ], after: 8, through: 12, index: index)
        #expect(batch.bodies[other] == nil)
        let body = try #require(batch.bodies[chat])
        #expect(body.changes == nil)
        #expect(!body.reset)
        #expect(body.messages.map(\.position) == [9, 10])
        #expect(text(body.messages[0].body) == #""cursor":"ab12.9","topic":"chat","payload":{"text":"hi","n":1.50}}"#)
        #expect(text(body.messages[1].body) == #""cursor":"ab12.10","topic":"chat","payload":null}"#)
        let value = try frame(messagePrefix, body.messages[0].body)
        #expect(value["type"] == .string("message"))
        #expect(value["cursor"] == .string("ab12.9"))
        #expect(value["topic"] == .string("chat"))
        #expect(value["payload"]?["n"] == .number("1.50"))
    }

    @Test func messageTopicIsEscaped() throws {
        var index = SubscriptionIndex()
        let topic = "a\"b\\c"
        let feed = index.retain(.topic(topic)).id
        let batch = encoder.encode([message(topic, position: 1, payload: "[1]")], after: 0, through: 1, index: index)
        let body = try #require(batch.bodies[feed])
        let value = try frame(messagePrefix, body.messages.first?.body)
        #expect(value["topic"] == .string(topic))
        #expect(value["payload"] == .array([.number("1")]))
    }

    @Test func feedOverMaximumBytesIsResetWithoutBody() throws {
        let small = FeedBatchEncoder(epoch: epoch, maximumFeedBytes: 200)
        var index = SubscriptionIndex()
        let big = index.retain(.collection("orders", filter: openImage)).id
        let fine = index.retain(.collection("orders", filter: closedImage)).id
        let bigRow = #"{"id":1,"blob":""# + String(repeating: "x", count: 300) + #""}"#
        let batch = small.encode([
            record(.insert, position: 1, key: #"{"id":1}"#, row: bigRow, new: openImage),
            record(.insert, position: 2, key: #"{"id":2}"#, row: #"{"id":2}"#, new: closedImage),
            record(.insert, position: 3, key: #"{"id":3}"#, row: #"{"id":3}"#, new: openImage),
        ], after: 0, through: 3, index: index)
        let bigBody = try #require(batch.bodies[big])
        #expect(bigBody.reset)
        #expect(bigBody.changes == nil)
        #expect(bigBody.messages.isEmpty)
        let fineBody = try #require(batch.bodies[fine])
        #expect(!fineBody.reset)
        #expect(text(fineBody.changes) == #""cursor":"ab12.3","changes":[{"op":"insert","key":{"id":2},"row":{"id":2}}]}"#)
    }

    @Test func manySmallChangesCanAlsoOverflow() throws {
        let small = FeedBatchEncoder(epoch: epoch, maximumFeedBytes: 300)
        var index = SubscriptionIndex()
        let feed = index.retain(.collection("orders", filter: [:])).id
        let records = (1...20).map { record(.insert, position: Int64($0), key: "{\"id\":\($0)}", row: "{\"id\":\($0)}") }
        let batch = small.encode(records, after: 0, through: 20, index: index)
        let body = try #require(batch.bodies[feed])
        #expect(body.reset)
        #expect(body.changes == nil)
        // Under the limit, the same records fit.
        let roomy = FeedBatchEncoder(epoch: epoch, maximumFeedBytes: 10_000).encode(records, after: 0, through: 20, index: index)
        #expect(roomy.bodies[feed]?.reset == false)
        #expect(roomy.bodies[feed]?.changes != nil)
    }

    @Test func truncateResetsTheFeedAndDropsItsBody() throws {
        var index = SubscriptionIndex()
        let feed = index.retain(.collection("orders", filter: [:])).id
        let other = index.retain(.collection("invoices", filter: [:])).id
        let batch = encoder.encode([
            record(.insert, position: 1, key: #"{"id":1}"#, row: #"{"id":1}"#),
            record(.truncate, position: 2),
            record(.insert, position: 3, key: #"{"id":2}"#, row: #"{"id":2}"#),
            record(.insert, position: 4, collection: "invoices", key: #"{"id":7}"#, row: #"{"id":7}"#),
        ], after: 0, through: 4, index: index)
        let body = try #require(batch.bodies[feed])
        #expect(body.reset)
        #expect(body.changes == nil)
        let otherBody = try #require(batch.bodies[other])
        #expect(!otherBody.reset)
        #expect(text(otherBody.changes) == #""cursor":"ab12.4","changes":[{"op":"insert","key":{"id":7},"row":{"id":7}}]}"#)
    }

    // MARK: - encodeSingle

    @Test func encodeSingleKeepsOnlyPositionsAfterCursorThroughThrough() throws {
        let key = FeedKey.collection("orders", filter: openImage)
        let records = (1...7).map {
            record(.insert, position: Int64($0), key: "{\"id\":\($0)}", row: "{\"id\":\($0)}", new: openImage)
        }
        let body = encoder.encodeSingle(records, after: 2, through: 5, key: key)
        #expect(!body.reset)
        #expect(text(body.changes) == #""cursor":"ab12.5","changes":["#
            + #"{"op":"insert","key":{"id":3},"row":{"id":3}},"#
            + #"{"op":"insert","key":{"id":4},"row":{"id":4}},"#
            + #"{"op":"insert","key":{"id":5},"row":{"id":5}}]}"#)
        _ = try frame(changesPrefix, body.changes)
    }

    @Test func encodeSingleIgnoresOtherFeeds() {
        let key = FeedKey.collection("orders", filter: openImage)
        let records = [
            record(.insert, position: 3, key: #"{"id":3}"#, row: #"{"id":3}"#, new: closedImage),
            record(.insert, position: 4, collection: "invoices", key: #"{"id":4}"#, row: #"{"id":4}"#, new: openImage),
        ]
        let body = encoder.encodeSingle(records, after: 0, through: 10, key: key)
        #expect(body.changes == nil)
        #expect(body.messages.isEmpty)
        #expect(!body.reset)
    }

    @Test func encodeSingleTopicMessagesAndBounds() throws {
        let records = [
            message("chat", position: 4, payload: "1"),
            message("chat", position: 5, payload: "2"),
            message("other", position: 6, payload: "3"),
            message("chat", position: 7, payload: "4"),
            message("chat", position: 8, payload: "5"),
        ]
        let body = encoder.encodeSingle(records, after: 4, through: 7, key: .topic("chat"))
        #expect(body.changes == nil)
        #expect(body.messages.map(\.position) == [5, 7])
        #expect(text(body.messages.first?.body) == #""cursor":"ab12.5","topic":"chat","payload":2}"#)
    }

    @Test func encodeSingleTruncateIsReset() {
        let records = [
            record(.insert, position: 3, key: #"{"id":3}"#, row: #"{"id":3}"#),
            record(.truncate, position: 4),
        ]
        let body = encoder.encodeSingle(records, after: 2, through: 4, key: .collection("orders", filter: [:]))
        #expect(body.reset)
        #expect(body.changes == nil)
        // A truncate at or below the cursor is already behind the client.
        let behind = encoder.encodeSingle(records, after: 4, through: 9, key: .collection("orders", filter: [:]))
        #expect(!behind.reset)
        #expect(behind.changes == nil)
    }

    // MARK: - encodeCatchUp

    @Test func encodeCatchUpServesEveryFeedFromItsOwnCursorInOnePass() throws {
        let open = FeedKey.collection("orders", filter: openImage)
        let closed = FeedKey.collection("orders", filter: closedImage)
        let records = (1...6).map {
            record(.insert, position: Int64($0), key: "{\"id\":\($0)}", row: "{\"id\":\($0)}",
                   new: $0 % 2 == 0 ? openImage : closedImage)
        }
        // Open feed from 0 and from 4, closed feed from 2, the open feed from 0 again (shares the
        // first body), and a topic feed with nothing in the range.
        let bodies = encoder.encodeCatchUp(records, through: 5, feeds: [
            (open, 0), (open, 4), (closed, 2), (open, 0), (.topic("chat"), 0),
        ])
        #expect(bodies.count == 5)
        #expect(text(bodies[0].changes) == #""cursor":"ab12.5","changes":["#
            + #"{"op":"insert","key":{"id":2},"row":{"id":2}},"#
            + #"{"op":"insert","key":{"id":4},"row":{"id":4}}]}"#)
        #expect(bodies[1].changes == nil)  // 4 is at its cursor, 6 is past `through`
        #expect(text(bodies[2].changes) == #""cursor":"ab12.5","changes":["#
            + #"{"op":"insert","key":{"id":3},"row":{"id":3}},"#
            + #"{"op":"insert","key":{"id":5},"row":{"id":5}}]}"#)
        #expect(text(bodies[3].changes) == text(bodies[0].changes))
        #expect(bodies[4].changes == nil && bodies[4].messages.isEmpty && !bodies[4].reset)
        for body in bodies where body.changes != nil { _ = try frame(changesPrefix, body.changes) }
        // The same answers one feed at a time.
        for (i, (key, after)) in [(open, Int64(0)), (open, 4), (closed, 2)].enumerated() {
            #expect(text(encoder.encodeSingle(records, after: after, through: 5, key: key).changes) == text(bodies[i].changes))
        }
    }

    @Test func encodeCatchUpTruncateResetsOnlyFeedsBehindIt() {
        let all = FeedKey.collection("orders", filter: [:])
        let records = [
            record(.insert, position: 3, key: #"{"id":3}"#, row: #"{"id":3}"#),
            record(.truncate, position: 4),
            record(.insert, position: 5, key: #"{"id":5}"#, row: #"{"id":5}"#),
        ]
        let bodies = encoder.encodeCatchUp(records, through: 5, feeds: [(all, 2), (all, 4)])
        #expect(bodies[0].reset)
        #expect(!bodies[1].reset)
        #expect(text(bodies[1].changes) == #""cursor":"ab12.5","changes":[{"op":"insert","key":{"id":5},"row":{"id":5}}]}"#)
    }

    // MARK: - advanceBody

    @Test func advanceBodyIsAnEmptyChanges() throws {
        let body = encoder.advanceBody(through: 42)
        #expect(String(buffer: body) == #""cursor":"ab12.42","changes":[]}"#)
        let value = try frame(changesPrefix, body)
        #expect(value["cursor"] == .string("ab12.42"))
        #expect(value["changes"] == .array([]))
    }
}
