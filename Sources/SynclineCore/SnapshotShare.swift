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
/// sharer's rows are always read at or after its `subscribe`.
///
/// Fairness between users: one user (the `user` of `enqueue`, the token's `sub`) has at most
/// `readsPerUser` reads in flight; ready groups wait in their user's queue, and users take turns
/// (round robin, in the order they became ready), so one user's many feeds cannot crowd out
/// another's one. A read paced by a socket that does not take its chunk (`readStalled`) stops
/// counting against `concurrency`, up to `maximumStalledReads` of them, so clients that stop
/// reading cannot hold every slot until their stall timeout.
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
        var user: String
        var waiting: [Waiter] = []
        var windowOpen = false
        var queued = false
        var reading: ReadID?
    }

    private struct Read {
        var key: SnapshotShareKey
        var user: String
        var stalled = false
    }

    /// Reads that may run at once, not counting stalled ones (at least 1).
    public let concurrency: Int
    /// Whether a group waits for a window before it is read (false: as soon as a slot is free).
    public let usesWindow: Bool
    /// Reads one user may have in flight (at least 1).
    public let readsPerUser: Int
    /// Stalled reads that may stop counting against `concurrency`.
    public let maximumStalledReads: Int
    private var groups: [SnapshotShareKey: Group] = [:]
    /// Ready groups by user, in the order they became ready.
    private var readyByUser: [String: [SnapshotShareKey]] = [:]
    /// Users with a ready group and room for another read, in turn order.
    private var turns: [String] = []
    private var turnStart = 0
    private var hasTurn: Set<String> = []
    private var readsByUser: [String: Int] = [:]
    private var reads: [ReadID: Read] = [:]
    private var stalled = 0
    private var nextRead: UInt64 = 0

    public init(concurrency: Int, usesWindow: Bool, readsPerUser: Int = .max, maximumStalledReads: Int = 0) {
        self.concurrency = max(1, concurrency)
        self.usesWindow = usesWindow
        self.readsPerUser = max(1, readsPerUser)
        self.maximumStalledReads = max(0, maximumStalledReads)
    }

    /// Reads in flight (stalled ones included).
    public var activeReads: Int { reads.count }
    /// Reads in flight that stopped counting against `concurrency`.
    public var stalledReads: Int { stalled }
    /// Requests not yet in a read.
    public var waitingCount: Int { groups.values.reduce(0) { $0 + $1.waiting.count } }

    public mutating func enqueue(_ key: SnapshotShareKey, _ waiter: Waiter, user: String = "") -> [Action] {
        var group = groups[key] ?? Group(user: user)
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
        guard let read = reads.removeValue(forKey: id) else { return [] }
        if read.stalled { stalled -= 1 }
        readsByUser[read.user, default: 1] -= 1
        if readsByUser[read.user] == 0 { readsByUser[read.user] = nil }
        var actions: [Action] = []
        if var group = groups[read.key] {
            group.reading = nil
            groups[read.key] = group
            if group.waiting.isEmpty && !group.windowOpen {
                groups[read.key] = nil
            } else if !group.windowOpen && !group.queued {
                actions = becomeReady(read.key)
            }
        }
        offerTurn(read.user)
        return actions + drain()
    }

    /// Read `id` is waiting for a socket that does not take its chunk: while it does, it stops
    /// counting against `concurrency` (when fewer than `maximumStalledReads` do). Returns whether
    /// it did, and the reads that may start now.
    public mutating func readStalled(_ id: ReadID) -> (parked: Bool, actions: [Action]) {
        guard var read = reads[id], !read.stalled, stalled < maximumStalledReads else { return (false, []) }
        read.stalled = true
        reads[id] = read
        stalled += 1
        return (true, drain())
    }

    /// A parked read's sockets took their chunk: it counts against `concurrency` again (reads
    /// already started keep running; no new one starts until the count is below it).
    public mutating func readResumed(_ id: ReadID) {
        guard var read = reads[id], read.stalled else { return }
        read.stalled = false
        reads[id] = read
        stalled -= 1
    }

    private mutating func becomeReady(_ key: SnapshotShareKey) -> [Action] {
        guard var group = groups[key] else { return drain() }
        // A key being read waits for that read to end (`readFinished` queues it).
        if group.reading == nil && !group.queued {
            group.queued = true
            groups[key] = group
            readyByUser[group.user, default: []].append(key)
            offerTurn(group.user)
        }
        return drain()
    }

    private mutating func offerTurn(_ user: String) {
        guard !hasTurn.contains(user), readsByUser[user, default: 0] < readsPerUser,
              readyByUser[user]?.isEmpty == false else { return }
        hasTurn.insert(user)
        turns.append(user)
    }

    private mutating func drain() -> [Action] {
        var actions: [Action] = []
        while reads.count - stalled < concurrency, turnStart < turns.count {
            let user = turns[turnStart]
            turnStart += 1
            hasTurn.remove(user)
            guard var queue = readyByUser[user], !queue.isEmpty else { continue }
            let key = queue.removeFirst()
            readyByUser[user] = queue.isEmpty ? nil : queue
            guard var group = groups[key] else {
                offerTurn(user)
                continue
            }
            group.queued = false
            guard !group.waiting.isEmpty else {
                groups[key] = group.windowOpen ? group : nil
                offerTurn(user)
                continue
            }
            nextRead += 1
            let id = ReadID(rawValue: nextRead)
            let waiters = group.waiting
            group.waiting = []
            group.reading = id
            groups[key] = group
            reads[id] = Read(key: key, user: user)
            readsByUser[user, default: 0] += 1
            offerTurn(user)
            actions.append(.startRead(id, key, waiters))
        }
        if turnStart == turns.count {
            turns.removeAll(keepingCapacity: true)
            turnStart = 0
        } else if turnStart > 1024 && turnStart * 2 > turns.count {
            turns.removeFirst(turnStart)
            turnStart = 0
        }
        return actions
    }
}
