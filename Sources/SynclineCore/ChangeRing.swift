/// The most recent committed changes, decoded, so that most catch-ups (reconnect storms, a
/// snapshot's handoff to live) are served from memory instead of scanning the change log.
///
/// Holds every position in (`after`, `through`]; the oldest whole batches are dropped past
/// `capacity` records.
public struct ChangeRing: Sendable {
    public private(set) var after: Int64
    public private(set) var through: Int64
    private var batches: [(through: Int64, records: [ChangeRecord])] = []
    private var start = 0
    private var count = 0
    public let capacity: Int

    public init(position: Int64, capacity: Int) {
        self.after = position
        self.through = position
        self.capacity = capacity
    }

    public mutating func append(_ records: [ChangeRecord], through: Int64) {
        batches.append((through, records))
        count += records.count
        self.through = through
        while count > capacity, start < batches.count - 1 {
            count -= batches[start].records.count
            after = batches[start].through
            batches[start].records = []
            start += 1
        }
        if start > 64 && start * 2 > batches.count {
            batches.removeFirst(start)
            start = 0
        }
    }

    /// Forget everything: history before `position` is gone.
    public mutating func reset(to position: Int64) {
        batches = []
        start = 0
        count = 0
        after = position
        through = position
    }

    /// The batches that hold (`max(from, after)`, `to`], shared (no record is copied: the caller
    /// filters by position), and the position from which they are complete; nil when the ring
    /// does not reach `to`.
    public func batches(after from: Int64, through to: Int64) -> (after: Int64, batches: [[ChangeRecord]])? {
        guard to <= through else { return nil }
        var out: [[ChangeRecord]] = []
        for i in start..<batches.count where batches[i].through > from {
            out.append(batches[i].records)
            if batches[i].through >= to { break }
        }
        return (max(from, after), out)
    }
}
