import NIOCore
import SynclineProtocol

/// The pending changes of one conflating subscription (`"conflate": true`, protocol §3.8), merged
/// by row key while its connection's outbound queue is over the threshold.
///
/// A client applies `changes` by key (`insert`/`update` store the row, `delete` removes it), so
/// a key's final state depends only on its own changes, and a run of them collapses into at most
/// one: whether the row was there before the run (its first change is not an `insert`) and
/// whether it is there after (its last change is not a `delete`). `merge` is that table, pairwise.
/// Keys are the key objects' text as Postgres rendered it (one key, one text), so equal keys are
/// equal strings. A key change arrives as the `delete` of the old key and the `insert` of the new
/// one (two keys, merged independently), as on the wire.
///
/// What cannot merge is not taken: a TRUNCATE (the feed restarts with a fresh snapshot) and topic
/// messages (each has its own cursor; topics are never conflated).
///
/// The cursor stays exact: `through` is the position of the newest change or cursor advance
/// taken, and the merged message carries it, as the last of the unmerged messages would have.
/// Pure value type; the server keeps one per conflating subscriber and feeds it on its loop.
public struct Conflation: Sendable {
    /// A change as a feed sees it (protocol §3.5).
    public enum Operation: String, Sendable, Hashable, CaseIterable {
        case insert, update, delete
    }

    /// One pending change: the key object's text and, unless a `delete`, the row's.
    public struct Change: Sendable, Hashable {
        public var operation: Operation
        public var key: String
        public var row: String?

        public init(_ operation: Operation, key: String, row: String? = nil) {
            self.operation = operation
            self.key = key
            self.row = operation == .delete ? nil : row
        }
    }

    /// The merge table: the pending change of a key followed by `next` becomes the result, or
    /// nothing (nil) when the run leaves no trace (`insert` then `delete`).
    ///
    /// | pending \ next | insert | update | delete |
    /// |---|---|---|---|
    /// | insert | insert ¹ | insert | nothing |
    /// | update | update ¹ | update | delete |
    /// | delete | update | update ¹ | delete ¹ |
    ///
    /// ¹ impossible in a consistent history (a key is inserted only when absent, updated or
    /// deleted only when present); kept total so that a surprising log cannot lose a change: the
    /// result still leaves the client with the unmerged stream's final state.
    public static func merge(_ pending: Operation, _ next: Operation) -> Operation? {
        let existedBefore = pending != .insert
        let existsAfter = next != .delete
        switch (existedBefore, existsAfter) {
        case (false, false): return nil
        case (false, true): return .insert
        case (true, true): return .update
        case (true, false): return .delete
        }
    }

    /// Pending changes in the order their keys first appeared (`nil`: merged away); a key's slot
    /// is `slots[key]`. The order of different keys does not change the client's final state.
    private var pending: [Change?] = []
    private var slots: [String: Int] = [:]
    /// Position of the newest change or advance taken; nil when nothing is pending.
    public private(set) var through: Int64?
    /// Changes taken since the last `take`, as the wire counts them (a key change is two).
    public private(set) var taken = 0
    /// Bytes of key and row text pending, so that the holder can bound what it keeps.
    public private(set) var bytes = 0

    public init() {}

    /// Whether anything (a change or a cursor advance) waits to be written.
    public var isHolding: Bool { through != nil }

    /// Changes pending after merging.
    public var count: Int { slots.count }

    /// Takes one change at `position`, merging it with the key's pending one.
    public mutating func add(_ change: Change, at position: Int64) {
        taken += 1
        through = max(through ?? position, position)
        guard let slot = slots[change.key], let existing = pending[slot] else {
            slots[change.key] = pending.count
            pending.append(change)
            bytes += change.key.utf8.count + (change.row?.utf8.count ?? 0)
            return
        }
        bytes -= existing.key.utf8.count + (existing.row?.utf8.count ?? 0)
        guard let operation = Self.merge(existing.operation, change.operation) else {
            pending[slot] = nil
            slots[change.key] = nil
            return
        }
        let merged = Change(operation, key: change.key, row: change.row)
        pending[slot] = merged
        bytes += merged.key.utf8.count + (merged.row?.utf8.count ?? 0)
    }

    /// Takes a cursor advance with nothing in it (an empty `changes` at `position`).
    public mutating func advance(through position: Int64) {
        through = max(through ?? position, position)
    }

    /// Takes what `record` means for the feed (`effect`, from the subscription index), exactly as
    /// the batch encoder renders it. Returns false, taking nothing, for what cannot merge: a
    /// TRUNCATE or a topic message.
    public mutating func add(_ record: ChangeRecord, _ effect: FeedEffect) -> Bool {
        let key = record.key ?? "null"
        switch effect {
        case .insert: add(Change(.insert, key: key, row: record.row ?? "null"), at: record.position)
        case .update: add(Change(.update, key: key, row: record.row ?? "null"), at: record.position)
        case .delete: add(Change(.delete, key: record.oldKey ?? key), at: record.position)
        case .rekey:
            add(Change(.delete, key: record.oldKey ?? key), at: record.position)
            add(Change(.insert, key: key, row: record.row ?? "null"), at: record.position)
        case .reset, .message: return false
        }
        return true
    }

    /// The merged changes, in the order their keys first appeared.
    public var changes: [Change] { pending.compactMap { $0 } }

    /// Empties the pending set, returning the merged changes, the cursor they carry and how many
    /// changes were taken (nil when nothing was pending).
    public mutating func take() -> (changes: [Change], through: Int64, taken: Int)? {
        guard let through else { return nil }
        let result = (changes, through, taken)
        self = Conflation()
        return result
    }

    /// The body of the merged `changes` message after the subscriber's prefix
    /// (`"cursor":"E.N","changes":[…]}`), in the batch encoder's form: key and row text spliced.
    public static func body(_ changes: [Change], epoch: String, through: Int64,
                            allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var capacity = 48 + epoch.utf8.count
        for change in changes { capacity += 40 + change.key.utf8.count + (change.row?.utf8.count ?? 4) }
        var buffer = allocator.buffer(capacity: capacity)
        buffer.writeString("\"cursor\":\"\(epoch).\(through)\",\"changes\":[")
        for (i, change) in changes.enumerated() {
            if i > 0 { buffer.writeStaticString(",") }
            buffer.writeStaticString("{\"op\":\"")
            buffer.writeString(change.operation.rawValue)
            buffer.writeStaticString("\",\"key\":")
            buffer.writeString(change.key)
            buffer.writeStaticString(",\"row\":")
            buffer.writeString(change.row ?? "null")
            buffer.writeStaticString("}")
        }
        buffer.writeStaticString("]}")
        return buffer
    }
}
