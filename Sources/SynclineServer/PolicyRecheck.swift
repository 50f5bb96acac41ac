import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import SynclineCore
import SynclineProtocol

/// Authorization follows the data (design invariant 4, docs/security.md, ADR 0009): when a commit
/// changes what a feed policy reads, the feeds it maps are held, their subscribers re-checked with
/// their own claims in one statement, and those that no longer pass end with `revoked` before any
/// row of that commit — or a later one — reaches them. Also the re-check of every feed of a
/// session on `auth`.
///
/// The hub's side: a hold id per policy batch (or `auth`), the reader the re-checks run on (the
/// server's main pool, never the snapshot pool a stalled client may occupy), counters.
final class PolicyRecheck: Sendable {
    /// What the re-checks did since the server started (the tests read it; metrics carry it too).
    struct Stats: Sendable, Equatable {
        /// Policy batches held (each one re-check statement) and `auth` re-checks.
        var holds = 0
        /// Subscriptions re-checked.
        var rechecks = 0
        /// Subscriptions ended with `revoked`.
        var revoked = 0
    }

    private struct State: Sendable {
        var reader: (any FeedReading)?
        var nextHold: UInt64 = 0
        /// Bumped when a policy hold starts: a resume authorized before it is checked again.
        var epoch: UInt64 = 0
        var stats = Stats()
        /// The most recent hold-to-release latencies (seconds), for the printed figure.
        var latencies: [Double] = []
    }

    private let state = NIOLockedValueBox(State())
    private let rechecksCounter = Counter(label: "syncline_policy_rechecks_total")
    private let revokedCounter = Counter(label: "syncline_feeds_revoked_total")
    private let holdTimer = Timer(label: "syncline_policy_hold_seconds")
    private let holdsCounter = Counter(label: "syncline_policy_holds_total")
    static let keptLatencies = 10_000

    /// Re-checks run on this reader (set once at startup); nil: the connections' own reader.
    func use(_ reader: any FeedReading) { state.withLockedValue { $0.reader = reader } }
    var reader: (any FeedReading)? { state.withLockedValue { $0.reader } }

    var stats: Stats { state.withLockedValue { $0.stats } }
    var latencies: [Double] { state.withLockedValue { $0.latencies } }
    var epoch: UInt64 { state.withLockedValue { $0.epoch } }

    /// A new hold id; `policy`: a hold for a policy batch (bumps the epoch), else an `auth` one.
    func newHold(policy: Bool) -> UInt64 {
        holdsCounter.increment()
        return state.withLockedValue { s in
            s.nextHold += 1
            s.stats.holds += 1
            if policy { s.epoch += 1 }
            return s.nextHold
        }
    }

    func counted(rechecks: Int, revoked: Int, held: Duration?) {
        state.withLockedValue { s in
            s.stats.rechecks += rechecks
            s.stats.revoked += revoked
            if let held {
                if s.latencies.count >= Self.keptLatencies { s.latencies.removeFirst(s.latencies.count / 2) }
                s.latencies.append(Double(held.components.attoseconds) / 1e18 + Double(held.components.seconds))
            }
        }
        if rechecks > 0 { rechecksCounter.increment(by: rechecks) }
        if revoked > 0 { revokedCounter.increment(by: revoked) }
        if let held { holdTimer.recordNanoseconds(held.components.seconds * 1_000_000_000 + held.components.attoseconds / 1_000_000_000) }
    }

    /// Runs the re-check statement, retrying a failed one twice; after that every check fails
    /// (closed): a feed whose authorization cannot be confirmed ends rather than leaks.
    /// Equal pairs (one user's tabs on one feed) are checked once.
    static func run(_ checks: [(key: FeedKey, claims: String)], on reader: any FeedReading, logger: Logger) async -> [Bool] {
        guard !checks.isEmpty else { return [] }
        struct Pair: Hashable { var key: FeedKey; var claims: String }
        var slots: [Pair: Int] = [:]
        var unique: [(key: FeedKey, claims: String)] = []
        let slotOf = checks.map { check -> Int in
            let pair = Pair(key: check.key, claims: check.claims)
            if let slot = slots[pair] { return slot }
            slots[pair] = unique.count
            unique.append(check)
            return unique.count - 1
        }
        var attempt = 0
        while true {
            attempt += 1
            do {
                let allowed = try await reader.authorizeEach(unique)
                return slotOf.map { allowed[$0] }
            } catch {
                guard attempt < 3 else {
                    logger.error("policy re-check failed; ending the held feeds", metadata: [
                        "feeds": "\(checks.count)", "error": "\(String(reflecting: error))",
                    ])
                    return [Bool](repeating: false, count: checks.count)
                }
                try? await Task.sleep(for: .milliseconds(20 * attempt))
            }
        }
    }
}

extension Hub {
    /// A batch carrying policy changes: every loop holds the subscribers of the feeds they map
    /// (before the batch is dispatched, so none of them gets a row of it), and the re-check runs
    /// in a task of its own while the batch and later ones flow to everyone else. Returns the
    /// task that releases the hold (tests and shutdown may await it).
    @discardableResult
    func holdForPolicy(_ changes: [PolicyChange]) async -> Task<Void, Never> {
        let started = ContinuousClock.now
        let id = policy.newHold(policy: true)
        let perLoop = await onEveryLoop { fanout in fanout.hold(id, mapping: changes) }
        return releaseTask(id, perLoop: perLoop, started: started)
    }

    /// Runs `body` on every loop's fan-out, all loops at once, and collects the results.
    func onEveryLoop<T: Sendable>(_ body: @escaping @Sendable (LoopFanout) -> T) async -> [(any EventLoop, T)] {
        let loops = self.loops
        let futures = loops.map { loop in loop.submit { body(self.fanout(on: loop)) } }
        var out: [(any EventLoop, T)] = []
        for (loop, future) in zip(loops, futures) {
            if let value = try? await future.get() { out.append((loop, value)) }
        }
        return out
    }

    private func releaseTask(_ id: UInt64, perLoop: [(any EventLoop, [(key: FeedKey, claims: String)])], started: ContinuousClock.Instant) -> Task<Void, Never> {
        let reader = policy.reader
        let logger = self.logger
        return Task {
            let checks = perLoop.flatMap(\.1)
            let allowed: [Bool]
            if let reader {
                allowed = await PolicyRecheck.run(checks, on: reader, logger: logger)
            } else {
                allowed = [Bool](repeating: false, count: checks.count)  // no reader: fail closed
            }
            var offset = 0
            var releases: [EventLoopFuture<Int>] = []
            for (loop, loopChecks) in perLoop {
                let slice = Array(allowed[offset ..< offset + loopChecks.count])
                offset += loopChecks.count
                releases.append(loop.submit { self.fanout(on: loop).release(id, allowed: slice) })
            }
            var revoked = 0
            for release in releases { revoked += (try? await release.get()) ?? 0 }
            policy.counted(rechecks: checks.count, revoked: revoked, held: ContinuousClock.now - started)
        }
    }
}

/// One loop's held subscribers: what each is waiting on and what it missed meanwhile.
struct PolicyHolds {
    struct Held {
        let subscriber: Subscriber
        /// Holds (policy batches, `auth`) not yet released: it stays held until all are.
        var count = 0
        /// Batches delivered to the loop while held, in order, replayed on release.
        var batches: [(batch: EncodedBatch, generation: UInt64)] = []
        /// A ring catch-up it asked for while held (run on release).
        var catchUp = false
    }

    private(set) var held: [ObjectIdentifier: Held] = [:]
    /// Hold id → its subscribers, in the order of the checks handed out.
    var holds: [UInt64: [Subscriber]] = [:]

    var isEmpty: Bool { held.isEmpty }

    func isHeld(_ subscriber: Subscriber) -> Bool { held[ObjectIdentifier(subscriber)] != nil }

    mutating func add(_ subscriber: Subscriber) {
        held[ObjectIdentifier(subscriber), default: Held(subscriber: subscriber)].count += 1
    }

    /// Keeps the batch for a held subscriber; false when it is not held.
    mutating func stash(_ subscriber: Subscriber, _ batch: EncodedBatch, _ generation: UInt64) -> Bool {
        let id = ObjectIdentifier(subscriber)
        guard held[id] != nil else { return false }
        held[id]!.batches.append((batch, generation))
        return true
    }

    /// Notes a ring catch-up for a held subscriber; false when it is not held.
    mutating func deferCatchUp(_ subscriber: Subscriber) -> Bool {
        let id = ObjectIdentifier(subscriber)
        guard held[id] != nil else { return false }
        held[id]!.catchUp = true
        return true
    }

    /// One hold released for `subscriber`: what it missed when that was its last hold, else nil.
    mutating func release(_ subscriber: Subscriber) -> Held? {
        let id = ObjectIdentifier(subscriber)
        guard var entry = held[id] else { return nil }
        entry.count -= 1
        if entry.count > 0 {
            held[id] = entry
            return nil
        }
        held[id] = nil
        return entry
    }

    /// Forgets a revoked subscriber (with what it missed: it gets none of it).
    mutating func drop(_ subscriber: Subscriber) -> Bool {
        held.removeValue(forKey: ObjectIdentifier(subscriber)) != nil
    }
}

extension LoopFanout {
    /// Holds every subscription on this loop whose feed a change maps, in whatever state (live,
    /// young, catching up, snapshotting): until released it gets no batch, no catch-up, no idle
    /// advance. Returns one check per held subscription, with its connection's current claims.
    func hold(_ id: UInt64, mapping changes: [PolicyChange]) -> [(key: FeedKey, claims: String)] {
        var checks: [(key: FeedKey, claims: String)] = []
        var list: [Subscriber] = []
        for connection in allConnections {
            guard !connection.closing, let claims = connection.identity?.claims else { continue }
            for subscriber in connection.subscribers.values
            where !subscriber.machine.isEnded && changes.contains(where: { $0.maps(subscriber.key) }) {
                policyHolds.add(subscriber)
                list.append(subscriber)
                checks.append((subscriber.key, claims))
            }
        }
        if !list.isEmpty { policyHolds.holds[id] = list }
        return checks
    }

    /// Holds every subscription of `connection` for a re-check with `claims` (an `auth`).
    func hold(_ id: UInt64, connection: SyncConnection, claims: String) -> [(key: FeedKey, claims: String)] {
        let list = connection.subscribers.values.filter { !$0.machine.isEnded }
        for subscriber in list { policyHolds.add(subscriber) }
        if !list.isEmpty { policyHolds.holds[id] = list }
        return list.map { ($0.key, claims) }
    }

    /// Ends the subscriptions that failed (`revoked`), and hands the others what they missed
    /// while held, in order. Returns how many were revoked.
    func release(_ id: UInt64, allowed: [Bool]) -> Int {
        guard let list = policyHolds.holds.removeValue(forKey: id) else { return 0 }
        var revoked = 0
        for (subscriber, ok) in zip(list, allowed) {
            if !ok {
                guard policyHolds.drop(subscriber) else { continue }  // ended by an earlier hold
                if subscriber.connection?.revokeSubscription(subscriber) == true { revoked += 1 }
                continue
            }
            guard let missed = policyHolds.release(subscriber) else { continue }
            replay(missed)
        }
        releaseAwaiting()  // an `ack` may have waited for what the held feeds were just sent
        flush()
        return revoked
    }

    private func replay(_ missed: PolicyHolds.Held) {
        let subscriber = missed.subscriber
        var delivered = 0
        for (batch, generation) in missed.batches {
            switch subscriber.listed {
            case .young:
                remove(subscriber)
                delivered += deliverYoung(subscriber, batch: batch, generation: generation)
            case .live:
                guard let body = batch.bodies[subscriber.feedID] else { continue }
                delivered += deliverLive(subscriber, body: body, batch: batch, generation: generation)
            case .none:
                break  // restarted or ended meanwhile: its snapshot or catch-up covers it
            }
        }
        if delivered > 0 { countDeliveries(delivered) }
        if missed.catchUp, let connection = subscriber.connection, connection.owns(subscriber),
           subscriber.machine.state == .catchingUp(.ring) {
            requestCatchUp(subscriber, environment: connection.environment)
        }
    }
}

extension SyncConnection {
    /// Ends a subscription that no longer passes its policy: `revoked` (code `forbidden`), and
    /// nothing more for it. False when it was no longer this connection's.
    func revokeSubscription(_ subscriber: Subscriber) -> Bool {
        guard !closing, subscribers[subscriber.id] === subscriber else { return false }
        subscribers[subscriber.id] = nil
        carryOut(subscriber.machine.revoke(), for: subscriber)
        session.subscriptionEnded(id: subscriber.id)
        logger.info("feed revoked: the policy no longer allows it", metadata: ["sub": "\(subscriber.id)", "feed": "\(subscriber.key)"])
        sendText(ServerMessage.revoked(sub: subscriber.id, code: .forbidden, message: "no longer allowed to read this feed"))
        flushIfNeeded()
        return true
    }

    /// `auth` with new claims: every feed of the session is held and re-checked with them; those
    /// that fail end with `revoked`.
    func recheckAll(claims: String) {
        let hub = environment.hub
        let id = hub.policy.newHold(policy: false)
        let checks = fanout.hold(id, connection: self, claims: claims)
        guard !checks.isEmpty else { return }
        let reader = hub.policy.reader ?? environment.reader
        let logger = environment.logger
        let loop = context.eventLoop
        let bound = NIOLoopBound(fanout!, eventLoop: loop)
        Task {
            let allowed = await PolicyRecheck.run(checks, on: reader, logger: logger)
            let revoked = (try? await loop.submit { bound.value.release(id, allowed: allowed) }.get()) ?? 0
            hub.policy.counted(rechecks: checks.count, revoked: revoked, held: nil)
        }
    }
}
