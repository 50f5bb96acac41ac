import Metrics
import NIOCore
import SynclineCore
import SynclineProtocol

/// One event loop's share of the fan-out: its live subscribers by feed, its position, and the
/// connections to flush after a batch. Confined to its loop.
final class LoopFanout {
    let eventLoop: any EventLoop
    let encoder: FeedBatchEncoder
    /// Every batch through this position has been delivered on this loop.
    private(set) var head: Int64
    /// The generation of the last batch delivered.
    private(set) var generation: UInt64 = 0
    private var live: [FeedID: [Subscriber]] = [:]
    private var young: [Subscriber] = []
    private var toFlush: [SyncConnection] = []
    /// Every WebSocket connection on this loop, for shutdown.
    private var connections: [ObjectIdentifier: SyncConnection] = [:]
    /// Connections holding an `ack` until their feeds reach its cursor (read-your-writes).
    private var awaitingDelivery: [ObjectIdentifier: SyncConnection] = [:]
    private let deliveries = Counter(label: "syncline_deliveries_total")
    /// Subscribers held for a policy re-check, and what they missed meanwhile (PolicyRecheck.swift).
    var policyHolds = PolicyHolds()

    init(eventLoop: any EventLoop, head: Int64, encoder: FeedBatchEncoder) {
        self.eventLoop = eventLoop
        self.head = head
        self.encoder = encoder
    }

    var liveCount: Int { live.values.reduce(0) { $0 + $1.count } + young.count }

    /// Where this loop's delivery stands, for the subscription state machines.
    var position: SubscriptionStateMachine.LoopPosition { .init(head: head, generation: generation) }

    /// Adds a subscriber that went live (its machine's `goLive` action) to the young or live list.
    func activate(_ subscriber: Subscriber, young isYoung: Bool) {
        assert(subscriber.cursor >= head, "a subscriber must catch up to the loop's head before going live")
        guard subscriber.listed == .none else { return }
        if isYoung {
            subscriber.listed = .young
            young.append(subscriber)
        } else {
            addLive(subscriber)
        }
    }

    /// Takes a subscriber out of whichever list holds it (restart, end).
    func remove(_ subscriber: Subscriber) {
        switch subscriber.listed {
        case .live:
            var list = live[subscriber.feedID]!
            let slot = subscriber.slot
            let last = list.removeLast()
            if last !== subscriber {
                list[slot] = last
                last.slot = slot
            }
            live[subscriber.feedID] = list.isEmpty ? nil : list
        case .young:
            young.removeAll { $0 === subscriber }
        case .none:
            break
        }
        subscriber.slot = -1
        subscriber.listed = .none
        subscriber.conflation?.discard()  // a restart's snapshot or the end supersedes what it held
    }

    private func addLive(_ subscriber: Subscriber) {
        subscriber.listed = .live
        subscriber.slot = live[subscriber.feedID, default: []].count
        live[subscriber.feedID, default: []].append(subscriber)
    }

    func register(_ connection: SyncConnection) {
        connections[ObjectIdentifier(connection)] = connection
    }

    func unregister(_ connection: SyncConnection) {
        connections[ObjectIdentifier(connection)] = nil
    }

    /// Every connection on this loop (a policy hold looks through their subscriptions).
    var allConnections: Dictionary<ObjectIdentifier, SyncConnection>.Values { connections.values }

    /// `connection` holds an `ack` back until this loop's head (and its own feeds) pass its
    /// cursor; it is told after every batch.
    func awaitDelivery(_ connection: SyncConnection, _ waiting: Bool) {
        awaitingDelivery[ObjectIdentifier(connection)] = waiting ? connection : nil
    }

    func releaseAwaiting() {
        guard !awaitingDelivery.isEmpty else { return }
        for connection in Array(awaitingDelivery.values) { connection.releaseOutcomes() }
    }

    /// Pings every connection on this loop and closes those silent for two periods.
    func heartbeat(period: TimeAmount) {
        for connection in Array(connections.values) {
            connection.heartbeatTick(period: period)
        }
    }

    /// Closes every connection on this loop with 1001 (server shutting down, or this node late).
    func closeAll(reason: String = "server shutting down; reconnect and resume") {
        for connection in Array(connections.values) {
            connection.close(.goingAway, reason: reason)
        }
    }

    // MARK: Catch-up

    /// Subscribers waiting to be brought from their cursor to this loop's head, served together,
    /// with the run of their machine that asked (a restarted feed has left the queue).
    private var pendingCatchUps: [(subscriber: Subscriber, run: UInt32)] = []
    private var catchUpScheduled = false

    /// Queues a subscriber (machine in `catchingUp(.ring)`) for the next catch-up pass, which
    /// runs once the loop has read what is ready: subscribers resuming in the same burst (a
    /// reconnect storm) share one pass over the ring instead of one each.
    func requestCatchUp(_ subscriber: Subscriber, environment: SyncEnvironment) {
        pendingCatchUps.append((subscriber, subscriber.machine.run))
        guard !catchUpScheduled else { return }
        catchUpScheduled = true
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        eventLoop.execute { bound.value.runCatchUps(environment: environment) }
    }

    /// Cursors older than the ring: this loop's shared scan of the change log.
    private(set) lazy var logCatchUp = LogCatchUp(fanout: self)

    private func runCatchUps(environment: SyncEnvironment) {
        let hub = environment.hub
        catchUpScheduled = false
        let pending = pendingCatchUps
        pendingCatchUps = []
        let loop = position
        var behind: [Subscriber] = []
        for (subscriber, run) in pending where subscriber.machine.run == run && subscriber.machine.state == .catchingUp(.ring) {
            guard let connection = subscriber.connection, connection.owns(subscriber) else { continue }
            // Held for a policy re-check: the ring may hold the very commit that revokes it.
            if !policyHolds.isEmpty && policyHolds.deferCatchUp(subscriber) { continue }
            if subscriber.cursor >= loop.head {
                connection.carryOut(subscriber.machine.ringPass(ringStart: nil, loop: loop), for: subscriber)
            } else {
                behind.append(subscriber)
            }
        }
        guard let earliest = behind.map(\.cursor).min() else { return flush() }
        let recent = hub.recentBatches(after: earliest, through: loop.head)
        var fromRing: [Subscriber] = []
        for subscriber in behind {
            if let recent, subscriber.cursor >= recent.after {
                fromRing.append(subscriber)
            } else {
                // Older than the ring: the machine hands it to the log scan.
                subscriber.connection?.carryOut(subscriber.machine.ringPass(ringStart: recent?.after, loop: loop), for: subscriber)
            }
        }
        if let recent, !fromRing.isEmpty {
            let bodies = encoder.encodeCatchUp(
                recent.batches.joined(), through: loop.head, feeds: fromRing.map { ($0.key, $0.cursor) })
            for (subscriber, body) in zip(fromRing, bodies) {
                let actions = subscriber.machine.ringPass(ringStart: recent.after, reset: body.restartReason, loop: loop)
                subscriber.connection?.carryOut(actions, for: subscriber, body: body)
            }
        }
        flush()
    }

    /// Connections written to during this batch, flushed once at its end.
    func needsFlush(_ connection: SyncConnection) {
        toFlush.append(connection)
    }

    /// Out of line so that the cost harness can count instructions from here (callgrind
    /// `--toggle-collect`).
    @inline(never)
    func deliver(_ batch: EncodedBatch, generation: UInt64) {
        var delivered = 0
        // Subscribers held for a policy re-check keep the batch for later (PolicyRecheck.swift).
        let holding = !policyHolds.isEmpty
        for (feedID, body) in batch.bodies {
            guard let subscribers = live[feedID] else { continue }
            for subscriber in subscribers {
                if holding && policyHolds.stash(subscriber, batch, generation) { continue }
                delivered += deliverLive(subscriber, body: body, batch: batch, generation: generation)
            }
        }
        if !young.isEmpty {
            let current = young
            young = []
            for subscriber in current {
                if holding && policyHolds.stash(subscriber, batch, generation) {
                    young.append(subscriber)
                    continue
                }
                subscriber.listed = .none
                delivered += deliverYoung(subscriber, batch: batch, generation: generation)
            }
        }
        head = batch.through
        self.generation = generation
        releaseAwaiting()
        flush()
        if delivered > 0 { deliveries.increment(by: delivered) }
    }

    /// A live subscriber's share of a batch (its feed's `body`); returns what it counts toward
    /// `syncline_deliveries_total` (a restart counts nothing).
    @inline(__always)
    func deliverLive(_ subscriber: Subscriber, body: FeedBody, batch: EncodedBatch, generation: UInt64) -> Int {
        if let reset = body.restartReason {
            let action = subscriber.machine.batch(
                after: batch.after, through: batch.through, generation: generation, matched: true, reset: reset)
            remove(subscriber)
            if case .restart(let reason, let run) = action {
                subscriber.connection?.carryOut([.restart(reason, run: run)], for: subscriber)
            }
            return 0
        }
        guard subscriber.machine.batch(after: batch.after, through: batch.through, generation: generation, matched: true) == .send,
              let connection = subscriber.connection
        else { return 1 }
        if let conflation = subscriber.conflation {
            connection.deliverConflating(body, records: batch.records, to: subscriber, conflation: conflation, through: batch.through)
        } else {
            connection.send(body, to: subscriber, through: batch.through)
        }
        return 1
    }

    /// A young subscriber (listed nowhere while this runs) and a batch: served from the batch's
    /// records when its cursor falls inside it; back on the young or the live list afterwards.
    func deliverYoung(_ subscriber: Subscriber, batch: EncodedBatch, generation: UInt64) -> Int {
        let action = subscriber.machine.batch(
            after: batch.after, through: batch.through, generation: generation,
            matched: batch.bodies[subscriber.feedID] != nil)
        switch action {
        case .none:
            subscriber.listed = .young
            young.append(subscriber)
        case .becomeLive:
            addLive(subscriber)
        case .send:
            assertionFailure("a young subscriber is served from the batch's records")
            addLive(subscriber)
        case .sendOwn(let after, let goesLive):
            let body = encoder.encodeSingle(batch.records, after: after, through: batch.through, key: subscriber.key)
            if let reason = body.restartReason {
                subscriber.connection?.carryOut(subscriber.machine.restart(reason), for: subscriber)
                return 0
            }
            subscriber.connection?.send(body, to: subscriber, through: batch.through)
            if goesLive {
                addLive(subscriber)
            } else {
                subscriber.listed = .young
                young.append(subscriber)
            }
            return 1
        case .restart(let reason, let run):
            subscriber.connection?.carryOut([.restart(reason, run: run)], for: subscriber)
        }
        return 0
    }

    func countDeliveries(_ n: Int) { deliveries.increment(by: n) }

    func flush() {
        guard !toFlush.isEmpty else { return }
        for connection in toFlush { connection.fanoutFlush() }
        toFlush.removeAll(keepingCapacity: true)
    }

    /// The tail lost history: every subscriber on this loop restarts from a fresh snapshot.
    func restartAll(head: Int64) {
        self.head = head
        let all = live.values.flatMap { $0 } + young
        for subscriber in all {
            remove(subscriber)
            subscriber.connection?.carryOut(subscriber.machine.restart(.pruned), for: subscriber)
        }
        releaseAwaiting()
        flush()
    }

    /// Sends an empty `changes` to live collection subscribers whose cursor lags the head and who
    /// got nothing for `interval`, so every live feed's cursor advances at least that often.
    func advanceIdle(olderThan interval: TimeAmount) {
        let now = NIODeadline.now()
        let body = FeedBody.advance(encoder.advanceBody(through: head))
        for subscribers in live.values {
            for subscriber in subscribers where subscriber.lastSentPosition < head && now - subscriber.lastSent >= interval {
                // A held subscriber's cursor must not pass the batches it has not been given.
                if !policyHolds.isEmpty && policyHolds.isHeld(subscriber) { continue }
                subscriber.machine.advanced(through: head)
                if case .topic = subscriber.key { continue }
                if let conflation = subscriber.conflation {
                    subscriber.connection?.deliverConflating(body, records: [], to: subscriber, conflation: conflation, through: head)
                    continue
                }
                subscriber.connection?.send(body, to: subscriber, through: head)
            }
        }
        flush()
    }
}

extension FeedBody {
    static func advance(_ body: ByteBuffer) -> FeedBody {
        var b = FeedBody()
        b.changes = body
        return b
    }
}
