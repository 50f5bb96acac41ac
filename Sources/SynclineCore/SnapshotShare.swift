import SynclineProtocol

/// Which snapshot reads may be shared: one feed, read under claims that differ at most in the
/// token's lifetime and identity fields (`exp`, `iat`, `nbf`, `jti`). Every sharer's policy is
/// still checked with its own claims; the key only says whose rows may be the same bytes.
public struct SnapshotShareKey: Hashable, Sendable, CustomStringConvertible {
    public var feed: FeedKey
    /// `SnapshotShareKey.normalizedClaims` of the sharers' claims.
    public var claims: String

    public init(feed: FeedKey, claims: String) {
        self.feed = feed
        self.claims = claims
    }

    /// The claims object without `exp`, `iat`, `nbf` and `jti`, members sorted by name (nested
    /// objects too), as compact JSON: equal for two tokens of one user that differ only in when
    /// they were issued. Text that is not a JSON object is returned unchanged (it shares only
    /// with itself).
    public static func normalizedClaims(_ claims: String) -> String {
        guard let value = try? JSONParser.parse(claims), case .object(let members) = value else { return claims }
        let kept = members.filter { !ignoredClaims.contains($0.0) }
        return sorted(.object(kept)).jsonText
    }

    static let ignoredClaims: Set<String> = ["exp", "iat", "nbf", "jti"]

    private static func sorted(_ value: JSONValue) -> JSONValue {
        switch value {
        case .object(let members):
            // Last duplicate wins, as lookups do.
            var seen: [String: JSONValue] = [:]
            for (key, member) in members { seen[key] = sorted(member) }
            return .object(seen.keys.sorted().map { ($0, seen[$0]!) })
        case .array(let items): return .array(items.map(sorted))
        default: return value
        }
    }

    public var description: String { "\(feed) as \(claims)" }
}

/// Groups snapshot requests into shared reads and bounds how many reads run at once.
///
/// Pure value type (the server holds it under a lock and carries out its actions). A request for
/// a key joins that key's waiting group; the group is read when its window has closed (the first
/// request of a group opens it) and a read slot is free. Requests that arrive while their key is
/// being read wait for the next read of that key, which starts only after the current one ended:
/// a read covers everyone who was waiting when it started, never someone who came later, so a
/// sharer's rows are always read at or after its `subscribe`. Ready groups start in the order
/// they became ready (different feeds are served first come, first served).
public struct SnapshotBatcher<Waiter: Sendable>: Sendable {
    public struct ReadID: Hashable, Sendable {
        public var rawValue: UInt64
    }

    public enum Action: Sendable {
        /// Call `windowClosed(key)` after the configured window.
        case openWindow(SnapshotShareKey)
        /// Read `key` once for `waiters` (in arrival order); call `readFinished(id)` when done.
        case startRead(ReadID, SnapshotShareKey, [Waiter])
    }

    private struct Group {
        var waiting: [Waiter] = []
        var windowOpen = false
        var queued = false
        var reading: ReadID?
    }

    /// Reads that may run at once (at least 1).
    public let concurrency: Int
    /// Whether a group waits for a window before it is read (false: as soon as a slot is free).
    public let usesWindow: Bool
    private var groups: [SnapshotShareKey: Group] = [:]
    private var ready: [SnapshotShareKey] = []
    private var readyStart = 0
    private var reads: [ReadID: SnapshotShareKey] = [:]
    private var nextRead: UInt64 = 0

    public init(concurrency: Int, usesWindow: Bool) {
        self.concurrency = max(1, concurrency)
        self.usesWindow = usesWindow
    }

    /// Reads in flight.
    public var activeReads: Int { reads.count }
    /// Requests not yet in a read.
    public var waitingCount: Int { groups.values.reduce(0) { $0 + $1.waiting.count } }

    public mutating func enqueue(_ key: SnapshotShareKey, _ waiter: Waiter) -> [Action] {
        var group = groups[key] ?? Group()
        group.waiting.append(waiter)
        let idle = !group.windowOpen && !group.queued
        if idle && usesWindow { group.windowOpen = true }
        groups[key] = group
        guard idle else { return [] }
        if usesWindow { return [.openWindow(key)] }
        return becomeReady(key)
    }

    /// The window of `key`'s group has passed: it is read when a slot is free.
    public mutating func windowClosed(_ key: SnapshotShareKey) -> [Action] {
        guard var group = groups[key], group.windowOpen else { return [] }
        group.windowOpen = false
        groups[key] = group
        return becomeReady(key)
    }

    /// Read `id` has ended (done, failed or abandoned): its slot is free.
    public mutating func readFinished(_ id: ReadID) -> [Action] {
        guard let key = reads.removeValue(forKey: id) else { return [] }
        if var group = groups[key] {
            group.reading = nil
            groups[key] = group
            if group.waiting.isEmpty && !group.windowOpen {
                groups[key] = nil
            } else if !group.windowOpen && !group.queued {
                return becomeReady(key)
            }
        }
        return drain()
    }

    private mutating func becomeReady(_ key: SnapshotShareKey) -> [Action] {
        guard var group = groups[key] else { return drain() }
        // A key being read waits for that read to end (`readFinished` queues it).
        if group.reading == nil && !group.queued {
            group.queued = true
            groups[key] = group
            ready.append(key)
        }
        return drain()
    }

    private mutating func drain() -> [Action] {
        var actions: [Action] = []
        while reads.count < concurrency, readyStart < ready.count {
            let key = ready[readyStart]
            readyStart += 1
            guard var group = groups[key] else { continue }
            group.queued = false
            guard !group.waiting.isEmpty else {
                groups[key] = group.windowOpen ? group : nil
                continue
            }
            nextRead += 1
            let id = ReadID(rawValue: nextRead)
            let waiters = group.waiting
            group.waiting = []
            group.reading = id
            groups[key] = group
            reads[id] = key
            actions.append(.startRead(id, key, waiters))
        }
        if readyStart == ready.count {
            ready.removeAll(keepingCapacity: true)
            readyStart = 0
        } else if readyStart > 1024 && readyStart * 2 > ready.count {
            ready.removeFirst(readyStart)
            readyStart = 0
        }
        return actions
    }
}
