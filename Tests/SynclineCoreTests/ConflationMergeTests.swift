import NIOCore
import SynclineCore
import SynclineProtocol
import Testing

/// A client's view of one feed: rows by key text, as `changes` are applied (protocol §3.3).
private struct ClientRows: Equatable {
    var rows: [JSONValue: JSONValue] = [:]
    var cursor: String?

    /// Applies one `changes` message (prefix + body, parsed as a client would).
    mutating func apply(_ message: JSONValue) {
        guard case .array(let changes)? = message["changes"] else {
            Issue.record("no changes array in \(message.jsonText)")
            return
        }
        for change in changes {
            let key = change["key"] ?? .null
            switch change["op"]?.stringValue {
            case "insert", "update": rows[key] = change["row"] ?? .null
            case "delete": rows[key] = nil
            default: Issue.record("unknown op in \(change.jsonText)")
            }
        }
        cursor = message["cursor"]?.stringValue
    }
}

private let epoch = "c0ffee"
private let prefix = #"{"type":"changes","sub":"s","#

private func parse(_ body: ByteBuffer) throws -> JSONValue {
    try JSONParser.parse(prefix + String(buffer: body))
}

/// SplitMix64: a seeded generator, so a failing case can be replayed from its seed.
private struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A tracked table `t(id int primary key, g text, v int)` and the records its changes produce,
/// as the change log renders them: key `{"id":N}`, row `{"id":N,"g":"…","v":N}`, filter images
/// of `g`. The feed under test is `t` where `g = 'in'`.
private struct Table {
    var rows: [Int: (g: String, v: Int)] = [:]
    var position: Int64 = 0

    static func key(_ id: Int) -> String { #"{"id":\#(id)}"# }
    static func row(_ id: Int, _ g: String, _ v: Int) -> String { #"{"id":\#(id),"g":"\#(g)","v":\#(v)}"# }

    /// The client's rows for the feed, as a snapshot would give them.
    func feedRows() -> ClientRows {
        var client = ClientRows()
        for (id, row) in rows where row.g == "in" {
            client.rows[try! JSONParser.parse(Self.key(id))] = try! JSONParser.parse(Self.row(id, row.g, row.v))
        }
        return client
    }

    /// One random change (insert, update in place or across the filter, key change, delete) on
    /// keys 0..<keys, as the record the change log would hold.
    mutating func randomChange(keys: Int, using rng: inout SeededGenerator) -> ChangeRecord {
        position += 1
        let groups = ["in", "out"]
        let present = rows.keys.sorted()
        let absent = (0..<keys).filter { rows[$0] == nil }
        var choices: [Int] = []
        if !absent.isEmpty { choices.append(0) }
        if !present.isEmpty { choices += [1, 1, 2] }
        if !present.isEmpty && !absent.isEmpty { choices.append(3) }
        let v = Int.random(in: 0..<1000, using: &rng)
        switch choices.randomElement(using: &rng)! {
        case 0:  // insert
            let id = absent.randomElement(using: &rng)!
            let g = groups.randomElement(using: &rng)!
            rows[id] = (g, v)
            return record(.insert, key: Self.key(id), row: Self.row(id, g, v), new: g, old: nil)
        case 1:  // update, maybe moving the row across the filter
            let id = present.randomElement(using: &rng)!
            let old = rows[id]!.g
            let g = Bool.random(using: &rng) ? old : groups.randomElement(using: &rng)!
            rows[id] = (g, v)
            return record(.update, key: Self.key(id), row: Self.row(id, g, v), new: g, old: old)
        case 2:  // delete
            let id = present.randomElement(using: &rng)!
            let old = rows.removeValue(forKey: id)!.g
            return record(.delete, key: Self.key(id), row: nil, new: nil, old: old)
        default:  // key change (an update of the primary key), maybe across the filter
            let id = present.randomElement(using: &rng)!
            let newID = absent.randomElement(using: &rng)!
            let old = rows.removeValue(forKey: id)!.g
            let g = Bool.random(using: &rng) ? old : groups.randomElement(using: &rng)!
            rows[newID] = (g, v)
            return record(.update, key: Self.key(newID), oldKey: Self.key(id), row: Self.row(newID, g, v), new: g, old: old)
        }
    }

    private func record(_ operation: ChangeRecord.Operation, key: String, oldKey: String? = nil, row: String?,
                        new: String?, old: String?) -> ChangeRecord {
        ChangeRecord(position: position, transaction: UInt64(position), operation: operation, collection: "t", topic: nil,
                     key: key, oldKey: oldKey, row: row,
                     newMatch: new.map { ["g": .string($0)] }, oldMatch: old.map { ["g": .string($0)] })
    }
}

@Suite("Conflation merge table")
struct ConflationMergeTests {
    typealias Op = Conflation.Operation

    @Test("the merge table, every pair")
    func mergeTable() {
        let expected: [Op: [Op: Op?]] = [
            .insert: [.insert: .insert, .update: .insert, .delete: nil],
            .update: [.insert: .update, .update: .update, .delete: .delete],
            .delete: [.insert: .update, .update: .update, .delete: .delete],
        ]
        for pending in Op.allCases {
            for next in Op.allCases {
                #expect(Conflation.merge(pending, next) == expected[pending]![next]!, "\(pending) + \(next)")
            }
        }
    }

    @Test("pairs merge into one change with the newest row; insert then delete leaves nothing")
    func pairs() {
        var c = Conflation()
        c.add(.init(.insert, key: "a", row: "1"), at: 1)
        c.add(.init(.update, key: "a", row: "2"), at: 2)
        c.add(.init(.update, key: "b", row: "1"), at: 3)
        c.add(.init(.update, key: "b", row: "2"), at: 3)
        c.add(.init(.delete, key: "d", row: nil), at: 4)
        c.add(.init(.insert, key: "d", row: "9"), at: 5)
        c.add(.init(.update, key: "e", row: "1"), at: 6)
        c.add(.init(.delete, key: "e"), at: 7)
        c.add(.init(.insert, key: "x", row: "1"), at: 8)
        c.add(.init(.delete, key: "x"), at: 9)
        #expect(c.changes == [
            .init(.insert, key: "a", row: "2"), .init(.update, key: "b", row: "2"),
            .init(.update, key: "d", row: "9"), .init(.delete, key: "e"),
        ])
        #expect(c.count == 4)
        #expect(c.through == 9)
        let taken = c.take()
        #expect(taken?.taken == 10)
        #expect(taken?.through == 9)
        #expect(!c.isHolding && c.changes.isEmpty && c.bytes == 0)
    }

    @Test("a key merged away and seen again starts over")
    func reappearing() {
        var c = Conflation()
        c.add(.init(.insert, key: "x", row: "1"), at: 1)
        c.add(.init(.delete, key: "x"), at: 2)
        c.add(.init(.insert, key: "x", row: "3"), at: 3)
        #expect(c.changes == [.init(.insert, key: "x", row: "3")])
        #expect(c.bytes == 2)
    }

    @Test("everything merged away still carries the cursor; an advance alone is held")
    func emptyHolds() throws {
        var c = Conflation()
        #expect(!c.isHolding)
        c.advance(through: 7)
        #expect(c.isHolding)
        c.add(.init(.insert, key: "x", row: "1"), at: 8)
        c.add(.init(.delete, key: "x"), at: 9)
        c.advance(through: 12)
        let pending = c.take()
        let taken = try #require(pending)
        #expect(taken.changes.isEmpty && taken.through == 12)
        let message = try parse(Conflation.body(taken.changes, epoch: epoch, through: taken.through))
        #expect(message["cursor"] == .string("c0ffee.12"))
        #expect(message["changes"] == .array([]))
    }

    @Test("truncates and topic messages are not taken")
    func unmergeable() {
        var c = Conflation()
        let truncate = ChangeRecord(position: 3, transaction: 3, operation: .truncate, collection: "t", topic: nil,
                                    key: nil, oldKey: nil, row: nil, newMatch: nil, oldMatch: nil)
        let tookTruncate = c.add(truncate, .reset)
        #expect(!tookTruncate)
        let message = ChangeRecord(position: 4, transaction: 4, operation: .message, collection: nil, topic: "x",
                                   key: nil, oldKey: nil, row: "{}", newMatch: nil, oldMatch: nil)
        let tookMessage = c.add(message, .message)
        #expect(!tookMessage)
        #expect(!c.isHolding && c.taken == 0)
    }

    @Test("a key change is the delete of the old key and the insert of the new")
    func rekey() {
        var c = Conflation()
        let record = ChangeRecord(position: 5, transaction: 5, operation: .update, collection: "t", topic: nil,
                                  key: #"{"id":2}"#, oldKey: #"{"id":1}"#, row: #"{"id":2}"#, newMatch: nil, oldMatch: nil)
        let took = c.add(record, .rekey)
        #expect(took)
        #expect(c.changes == [.init(.delete, key: #"{"id":1}"#), .init(.insert, key: #"{"id":2}"#, row: #"{"id":2}"#)])
        #expect(c.taken == 2)
    }

    /// The property: for seeded random histories (inserts, updates in place and across the
    /// filter, key changes, deletes over a few keys, in batches), the merged stream applied to the
    /// feed's rows before the history ends in the same rows, with the same cursor, as the exact
    /// stream (the batch encoder's messages) applied to them. Both go through the wire form.
    @Test("merged and exact streams reach the same rows and cursor", arguments: 0..<4)
    func property(shard: UInt64) throws {
        let encoder = FeedBatchEncoder(epoch: epoch)
        var index = SubscriptionIndex()
        let feed = index.retain(.collection("t", filter: ["g": .string("in")])).id
        var merged = 0, exact = 0
        // Failures are collected and reported once: an #expect per record would cost more than
        // the merging it checks.
        var refused: [UInt64] = [], doubled: [UInt64] = [], differing: [UInt64] = [], inexact: [UInt64] = []
        for seed in shard * 1000..<(shard + 1) * 1000 {
            var rng = SeededGenerator(state: seed)
            let keys = Int.random(in: 1...5, using: &rng)
            var table = Table()
            // A random starting state, reached by a history the client already has.
            for _ in 0..<Int.random(in: 0...8, using: &rng) { _ = table.randomChange(keys: keys, using: &rng) }
            var exactClient = table.feedRows()
            var mergedClient = exactClient
            var conflation = Conflation()
            let batches = Int.random(in: 1...12, using: &rng)
            for _ in 0..<batches {
                let after = table.position
                let records = (0..<Int.random(in: 1...4, using: &rng)).map { _ in table.randomChange(keys: keys, using: &rng) }
                let batch = encoder.encode(records, after: after, through: table.position, index: index)
                guard let body = batch.bodies[feed]?.changes else { continue }  // nothing for the feed
                let message = try parse(body)
                exactClient.apply(message)
                if case .array(let changes)? = message["changes"] { exact += changes.count }
                // The fan-out's conflating path: the batch's records through the index, then its cursor.
                for record in records {
                    index.match(record) { id, effect in
                        guard id == feed else { return }
                        if !conflation.add(record, effect) { refused.append(seed) }
                    }
                }
                conflation.advance(through: table.position)
                // Sometimes the queue drains mid-history and what is pending goes out.
                if Int.random(in: 0..<4, using: &rng) == 0, let taken = conflation.take() {
                    mergedClient.apply(try parse(Conflation.body(taken.changes, epoch: epoch, through: taken.through)))
                    merged += taken.changes.count
                    if Set(taken.changes.map(\.key)).count != taken.changes.count { doubled.append(seed) }
                }
            }
            if let taken = conflation.take() {
                mergedClient.apply(try parse(Conflation.body(taken.changes, epoch: epoch, through: taken.through)))
                merged += taken.changes.count
            }
            if mergedClient != exactClient { differing.append(seed) }
            if exactClient.rows != table.feedRows().rows { inexact.append(seed) }
        }
        #expect(refused.isEmpty, "seeds with a change Conflation did not take: \(refused.prefix(5))")
        #expect(doubled.isEmpty, "seeds with two changes of one key in a merged message: \(doubled.prefix(5))")
        #expect(differing.isEmpty, "seeds whose merged stream ends elsewhere: \(differing.prefix(5))")
        #expect(inexact.isEmpty, "seeds whose exact stream does not reach the table's rows: \(inexact.prefix(5))")
        // The histories are dense enough that merging saves something.
        #expect(merged < exact)
    }
}

@Suite("subscribe conflate")
struct SubscribeConflateDecodingTests {
    @Test("absent, null and false are the exact stream; true asks for conflation")
    func values() throws {
        func decoded(_ text: String) throws -> ClientMessage.Subscribe? {
            if case .subscribe(let s) = try ClientMessage.decode(text) { return s }
            return nil
        }
        #expect(try decoded(#"{"type":"subscribe","id":"a","collection":"c"}"#)?.conflate == false)
        #expect(try decoded(#"{"type":"subscribe","id":"a","collection":"c","conflate":null}"#)?.conflate == false)
        #expect(try decoded(#"{"type":"subscribe","id":"a","collection":"c","conflate":false}"#)?.conflate == false)
        #expect(try decoded(#"{"type":"subscribe","id":"a","collection":"c","conflate":true}"#)?.conflate == true)
        #expect(try decoded(#"{"type":"subscribe","id":"t","topic":"x","conflate":false}"#)?.conflate == false)
    }

    @Test("not a boolean, or on a topic: bad_request with the id as ref", arguments: [
        #"{"type":"subscribe","id":"a","collection":"c","conflate":"true"}"#,
        #"{"type":"subscribe","id":"a","collection":"c","conflate":1}"#,
        #"{"type":"subscribe","id":"a","topic":"x","conflate":true}"#,
    ])
    func refused(_ text: String) {
        #expect(throws: ClientMessageError.self) { try ClientMessage.decode(text) }
        do {
            _ = try ClientMessage.decode(text)
        } catch {
            #expect(error.code == .badRequest)
            #expect(error.ref == .string("a"))
        }
    }
}
