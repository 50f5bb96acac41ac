/// Whether this node delivers, decided from one look at its health: the I/O-free core of
/// `/readyz` and of the late-node rule (docs/operations.md, "Health that means delivery").
///
/// - Draining (SIGTERM) or a disconnected change tail: not ready.
/// - Late (the canary's lag beyond the threshold) while another live node is healthy (its lag at
///   most half the threshold): not ready, and close every WebSocket with 1001, once per late
///   spell, so that clients reconnect through the load balancer to a node that delivers.
/// - Late, and no other live node healthy (a slow Postgres slows them all: moving clients would
///   not help): stay ready, and raise the alert. "Healthy" has a margin because nodes do not cross
///   the threshold at the same instant: without it, the first node of a fleet-wide slowdown would
///   send its clients to nodes about to be late too. Peers' lags arrive as worst cases, aged by
///   the time since each peer wrote it (`NodeHealth`, migration 0009): under a slow Postgres the
///   canary rounds are slow too, and a peer's last healthy lag may be seconds old.
/// - Late and alone (no other live node): not ready — the truth — but no 1001: there is nowhere
///   better to go.
public struct DeliveryHealth: Sendable {
    public struct Observation: Sendable, Equatable {
        public var draining: Bool
        public var tailConnected: Bool
        /// This node's canary lag in milliseconds; nil when the canary is off.
        public var lagMilliseconds: Int64?
        /// The canary lags of the other nodes that wrote recently (`syncline.nodes`).
        public var peerLagsMilliseconds: [Int64]

        public init(draining: Bool, tailConnected: Bool, lagMilliseconds: Int64?, peerLagsMilliseconds: [Int64]) {
            self.draining = draining
            self.tailConnected = tailConnected
            self.lagMilliseconds = lagMilliseconds
            self.peerLagsMilliseconds = peerLagsMilliseconds
        }
    }

    public enum Verdict: Sendable, Equatable {
        case ready
        /// Ready although late, because no other node is healthy: the alert (`syncline_canary_every_node_late`).
        case readyEveryNodeLate
        case notReady(reason: String)

        public var isReady: Bool {
            if case .notReady = self { return false }
            return true
        }
    }

    public enum Action: Sendable, Equatable {
        /// Close every WebSocket with 1001 (clients resume on another node).
        case closeConnections(reason: String)
    }

    /// Milliseconds of canary lag beyond which a node is late.
    public let lateMilliseconds: Int64
    /// Whether this late spell already closed the sockets (re-armed once the node catches up).
    private var closedThisSpell = false

    public init(lateMilliseconds: Int64) {
        self.lateMilliseconds = lateMilliseconds
    }

    func isLate(_ lag: Int64) -> Bool { lag > lateMilliseconds }

    /// A node clearly delivering: worth sending clients to.
    func isHealthy(_ lag: Int64) -> Bool { lag <= lateMilliseconds / 2 }

    /// What `/readyz` answers.
    public func verdict(_ o: Observation) -> Verdict {
        if o.draining { return .notReady(reason: "draining: this node is shutting down") }
        if !o.tailConnected { return .notReady(reason: "the change tail's LISTEN connection is down") }
        guard let lag = o.lagMilliseconds, isLate(lag) else { return .ready }
        if !o.peerLagsMilliseconds.isEmpty && !o.peerLagsMilliseconds.contains(where: isHealthy) {
            return .readyEveryNodeLate
        }
        return .notReady(reason: "the canary is late: \(lag) ms behind (threshold \(lateMilliseconds) ms)")
    }

    /// Advances the late-spell state; returns what to do now.
    public mutating func step(_ o: Observation) -> [Action] {
        guard let lag = o.lagMilliseconds, isLate(lag) else {
            closedThisSpell = false
            return []
        }
        guard !o.draining, !closedThisSpell, o.peerLagsMilliseconds.contains(where: isHealthy) else { return [] }
        closedThisSpell = true
        return [.closeConnections(reason: "this node's change feed is \(lag) ms late; reconnect to another node and resume")]
    }
}

/// The canaries this node published and has not yet seen come back through its tail: the lag is
/// the age of the oldest of them (or, with none outstanding, the last round trip measured).
public struct CanaryClock: Sendable {
    /// Outstanding canaries in publish order: (sequence number, when publishing began).
    private var outstanding: [(sequence: UInt64, sentAt: ContinuousClock.Instant)] = []
    private(set) var lastLatency: Duration?
    /// Bounds memory while the tail is stalled: the oldest entry (the lag) is always kept.
    static let maximumOutstanding = 4_096

    public init() {}

    public mutating func sent(_ sequence: UInt64, at instant: ContinuousClock.Instant) {
        if outstanding.count >= Self.maximumOutstanding { outstanding.remove(at: 1) }
        outstanding.append((sequence, instant))
    }

    /// The tail saw canary `sequence`: it and every earlier one are settled (the log is in commit
    /// order and this node publishes one at a time, so an earlier one still missing never
    /// committed). Returns the round trip of `sequence`, if it was outstanding.
    @discardableResult
    public mutating func seen(_ sequence: UInt64, at instant: ContinuousClock.Instant) -> Duration? {
        let latency = outstanding.first(where: { $0.sequence == sequence }).map { instant - $0.sentAt }
        outstanding.removeAll { $0.sequence <= sequence }
        if let latency { lastLatency = latency }
        return latency
    }

    /// The lag now: how long the oldest outstanding canary has been waiting, else the last round trip.
    public func lag(at now: ContinuousClock.Instant) -> Duration {
        if let oldest = outstanding.first { return max(now - oldest.sentAt, lastLatency ?? .zero) }
        return lastLatency ?? .zero
    }
}

extension Duration {
    /// Whole milliseconds (truncated).
    var wholeMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000 + attoseconds / 1_000_000_000_000_000
    }

    var fractionalSeconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
