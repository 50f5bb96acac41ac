import NIOCore
import SynclineProtocol

/// One feed's share of a batch, encoded once for all its subscribers.
public struct FeedBody: Sendable {
    /// `"cursor":"…","changes":[…]}`: a subscriber's frame is its cached prefix
    /// (`{"type":"changes","sub":"…",`) followed by these bytes.
    public var changes: ByteBuffer?
    /// Topic messages, each `"cursor":"…","topic":…,"payload":…}` after the prefix
    /// `{"type":"message","sub":"…",`, with the message's own position.
    public var messages: [(position: Int64, body: ByteBuffer)] = []
    /// The feed must restart with a fresh snapshot (TRUNCATE, or its share is too large).
    public var reset = false
    /// Why, when `reset`: a TRUNCATE, or the share grew past the limit.
    public var resetReason: FeedRestartReason = .truncated

    /// The restart this body asks for, if any.
    public var restartReason: FeedRestartReason? { reset ? resetReason : nil }

    public init() {}
}

/// A contiguous run of committed transactions, ready to fan out.
public struct EncodedBatch: Sendable {
    /// Positions in (`after`, `through`]: the batch starts after the previous one ended.
    public var after: Int64
    public var through: Int64
    public var bodies: [FeedID: FeedBody]
    /// The decoded records, for the rare subscriber whose cursor falls inside this batch.
    public var records: [ChangeRecord]
}

/// Encodes change records into per-feed bodies: each change is matched once through the index and
/// each matched feed's JSON is written once, splicing Postgres's row text.
public struct FeedBatchEncoder: Sendable {
    public var epoch: String
    /// A feed whose share of one batch exceeds this is restarted instead (protocol §2).
    public var maximumFeedBytes: Int

    public init(epoch: String, maximumFeedBytes: Int = 8 << 20) {
        self.epoch = epoch
        self.maximumFeedBytes = maximumFeedBytes
    }

    /// Encodes `records` (positions after `after`, through `through`) for every feed in `index`.
    public func encode(
        _ records: [ChangeRecord], after: Int64, through: Int64, index: SubscriptionIndex,
        allocator: ByteBufferAllocator = ByteBufferAllocator()
    ) -> EncodedBatch {
        var bodies: [FeedID: FeedBody] = [:]
        let cursorField = "\"cursor\":\"\(epoch).\(through)\","
        for record in records {
            index.match(record) { id, effect in
                bodies[id, default: FeedBody()].append(record, effect, cursorField: cursorField, epoch: epoch,
                                                       maximumBytes: maximumFeedBytes, allocator: allocator)
            }
        }
        for (id, var body) in bodies where body.changes != nil {
            body.changes!.writeStaticString("]}")
            bodies[id] = body
        }
        return EncodedBatch(after: after, through: through, bodies: bodies, records: records)
    }

    /// Encodes the records after `cursor` for one feed only: the straddle and log-page path, not
    /// the hot path. The body has neither changes nor messages when nothing matched.
    public func encodeSingle(_ records: some Sequence<ChangeRecord>, after cursor: Int64, through: Int64, key: FeedKey) -> FeedBody {
        encodeCatchUp(records, through: through, feeds: [(key, cursor)])[0]
    }

    /// Encodes one body per `(key, after)` pair: the records in (`after`, `through`] of that feed.
    ///
    /// One pass over `records` serves every pair, each record matched once through an index of
    /// the pairs' feeds. A reconnect storm (thousands of subscribers resuming over the same
    /// recent range) thus costs the range plus what is delivered, not subscribers × range.
    /// Pairs with the same key and cursor share one encoded body.
    public func encodeCatchUp(
        _ records: some Sequence<ChangeRecord>, through: Int64, feeds: [(key: FeedKey, after: Int64)]
    ) -> [FeedBody] {
        var index = SubscriptionIndex()
        var groupOf: [Int] = []  // feeds[i] → its group
        groupOf.reserveCapacity(feeds.count)
        var groups: [(id: FeedID, after: Int64)] = []
        var groupByFeed: [FeedID: [Int]] = [:]
        var groupByPair: [FeedKey: [Int64: Int]] = [:]
        for feed in feeds {
            if let group = groupByPair[feed.key]?[feed.after] {
                groupOf.append(group)
                continue
            }
            let id = index.retain(feed.key).id
            let group = groups.count
            groups.append((id, feed.after))
            groupByFeed[id, default: []].append(group)
            groupByPair[feed.key, default: [:]][feed.after] = group
            groupOf.append(group)
        }
        let earliest = groups.map(\.after).min() ?? through
        var bodies = [FeedBody](repeating: FeedBody(), count: groups.count)
        let cursorField = "\"cursor\":\"\(epoch).\(through)\","
        let allocator = ByteBufferAllocator()
        for record in records where record.position > earliest && record.position <= through {
            index.match(record) { id, effect in
                guard let members = groupByFeed[id] else { return }
                for group in members where record.position > groups[group].after {
                    bodies[group].append(record, effect, cursorField: cursorField, epoch: epoch,
                                         maximumBytes: maximumFeedBytes, allocator: allocator)
                }
            }
        }
        for group in bodies.indices where bodies[group].changes != nil {
            bodies[group].changes!.writeStaticString("]}")
        }
        return groupOf.map { bodies[$0] }
    }

    /// The body of an empty `changes` that only advances a feed's cursor.
    public func advanceBody(through: Int64) -> ByteBuffer {
        ByteBuffer(string: "\"cursor\":\"\(epoch).\(through)\",\"changes\":[]}")
    }
}

extension FeedBody {
    fileprivate mutating func append(
        _ record: ChangeRecord, _ effect: FeedEffect, cursorField: String, epoch: String,
        maximumBytes: Int, allocator: ByteBufferAllocator
    ) {
        guard !reset else { return }
        switch effect {
        case .reset:
            reset = true
            changes = nil
            messages = []
            return
        case .message:
            var buffer = allocator.buffer(capacity: 64 + (record.topic?.utf8.count ?? 0) + (record.row?.utf8.count ?? 4))
            buffer.writeString("\"cursor\":\"\(epoch).\(record.position)\",\"topic\":")
            buffer.writeString(JSONValue.quoted(record.topic ?? ""))
            buffer.writeStaticString(",\"payload\":")
            buffer.writeString(record.row ?? "null")
            buffer.writeStaticString("}")
            messages.append((record.position, buffer))
            return
        case .insert, .update, .delete, .rekey:
            break
        }
        if changes == nil {
            var buffer = allocator.buffer(capacity: 256)
            buffer.writeString(cursorField)
            buffer.writeStaticString("\"changes\":[")
            changes = buffer
        } else {
            changes!.writeStaticString(",")
        }
        let key = record.key ?? "null"
        let row = record.row ?? "null"
        switch effect {
        case .insert:
            changes!.writeStaticString("{\"op\":\"insert\",\"key\":")
            changes!.writeString(key)
            changes!.writeStaticString(",\"row\":")
            changes!.writeString(row)
            changes!.writeStaticString("}")
        case .update:
            changes!.writeStaticString("{\"op\":\"update\",\"key\":")
            changes!.writeString(key)
            changes!.writeStaticString(",\"row\":")
            changes!.writeString(row)
            changes!.writeStaticString("}")
        case .delete:
            changes!.writeStaticString("{\"op\":\"delete\",\"key\":")
            changes!.writeString(record.oldKey ?? key)
            changes!.writeStaticString(",\"row\":null}")
        case .rekey:
            changes!.writeStaticString("{\"op\":\"delete\",\"key\":")
            changes!.writeString(record.oldKey ?? key)
            changes!.writeStaticString(",\"row\":null},{\"op\":\"insert\",\"key\":")
            changes!.writeString(key)
            changes!.writeStaticString(",\"row\":")
            changes!.writeString(row)
            changes!.writeStaticString("}")
        case .reset, .message:
            break
        }
        if changes!.readableBytes > maximumBytes {
            reset = true
            resetReason = .tooLarge
            changes = nil
            messages = []
        }
    }
}
