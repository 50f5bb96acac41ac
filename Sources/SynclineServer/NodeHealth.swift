import Foundation
import Metrics
import NIOConcurrencyHelpers
import SynclineCore
import SynclinePostgres
import SynclineProtocol

/// This node's delivery health, shared by the canary (which publishes and learns the peers), the
/// tail's sink (which sees canaries come back), `/readyz`, `/metrics` and the drain.
public final class NodeHealth: Sendable {
    /// The reserved topic canaries travel on; clients cannot subscribe to `syncline.*` (0007).
    public static let canaryTopic = "syncline.canary"

    struct State: Sendable {
        var clock = CanaryClock()
        var health: DeliveryHealth
        var draining = false
        /// The peers' lags as the last canary round answered them (aged to when it began, 0009).
        var peerLags: [Int64] = []
        /// When that round began: the peers' lags grow, worst case, by the time since.
        var peersReadAt = ContinuousClock.now
    }

    /// This node's name in `syncline.nodes` and in its canaries.
    public let nodeID: String
    /// Tells this process's canaries from those of an earlier process with the same node id.
    public let incarnation = String(UUID().uuidString.prefix(8))
    /// Whether a canary runs at all (`--canary-interval-ms` > 0).
    public let canaryEnabled: Bool
    private let state: NIOLockedValueBox<State>

    let lagGauge = Gauge(label: "syncline_canary_lag_seconds")
    let latencyTimer = Metrics.Timer(label: "syncline_canary_latency_seconds")
    let readyGauge = Gauge(label: "syncline_ready")
    let everyNodeLateGauge = Gauge(label: "syncline_canary_every_node_late")

    public init(nodeID: String, canaryEnabled: Bool, lateMilliseconds: Int64) {
        self.nodeID = nodeID
        self.canaryEnabled = canaryEnabled
        state = NIOLockedValueBox(State(health: DeliveryHealth(lateMilliseconds: lateMilliseconds)))
    }

    convenience init(_ configuration: ServerConfiguration) {
        self.init(nodeID: configuration.nodeID ?? Self.makeDefaultNodeID(), canaryEnabled: configuration.canaryIntervalMilliseconds > 0,
                  lateMilliseconds: configuration.canaryLateMilliseconds)
    }

    /// The canary is about to be published.
    func sent(_ sequence: UInt64) {
        let now = ContinuousClock.now
        state.withLockedValue { $0.clock.sent(sequence, at: now) }
    }

    /// The other live nodes' lags, as the canary round that began at `readAt` read them.
    func learned(peerLags: [Int64], readAt: ContinuousClock.Instant) {
        state.withLockedValue {
            $0.peerLags = peerLags
            $0.peersReadAt = readAt
        }
    }

    /// From the tail's sink, after the hub delivered `event`: settles this node's canaries in it.
    func observe(_ event: ChangeTailEvent) {
        guard canaryEnabled, case .changes(let records, _, _) = event else { return }
        for record in records where record.operation == .message && record.topic == Self.canaryTopic {
            guard let row = record.row, let payload = try? JSONParser.parse(row),
                  payload["node"]?.stringValue == nodeID, payload["run"]?.stringValue == incarnation,
                  case .number(let text)? = payload["seq"], let sequence = UInt64(text) else { continue }
            let now = ContinuousClock.now
            if let latency = state.withLockedValue({ $0.clock.seen(sequence, at: now) }) {
                latencyTimer.recordNanoseconds(Int64(latency.fractionalSeconds * 1e9))
            }
        }
    }

    /// SIGTERM: `/readyz` fails from now on (the node keeps serving while the balancer notices).
    func startDraining() {
        state.withLockedValue { $0.draining = true }
    }

    /// The canary lag now, in milliseconds; nil when the canary is off.
    public var lagMilliseconds: Int64? {
        let now = ContinuousClock.now
        return state.withLockedValue { lag($0, at: now) }
    }

    private func lag(_ state: State, at now: ContinuousClock.Instant) -> Int64? {
        canaryEnabled ? state.clock.lag(at: now).wholeMilliseconds : nil
    }

    /// Other live nodes, as the last canary round read them from `syncline.nodes`.
    public var peerCount: Int {
        state.withLockedValue { $0.peerLags.count }
    }

    /// The last canary round trip measured (nil before the first comes back).
    public var lastRoundTrip: Duration? {
        state.withLockedValue { $0.clock.lastLatency }
    }

    /// What the rule looks at `now`. Peers' lags are worst cases: what they were when last read,
    /// plus the time since (a peer may have stalled right after it wrote), so that a late node
    /// never sends its clients to a peer it merely has not heard from lately.
    func observation(tailConnected: Bool, at now: ContinuousClock.Instant = .now) -> DeliveryHealth.Observation {
        state.withLockedValue {
            let age = max(.zero, now - $0.peersReadAt).wholeMilliseconds
            return .init(draining: $0.draining, tailConnected: tailConnected, lagMilliseconds: lag($0, at: now),
                         peerLagsMilliseconds: $0.peerLags.map { $0 + age })
        }
    }

    /// What `/readyz` answers now; also refreshes the health gauges.
    public func verdict(tailConnected: Bool) -> DeliveryHealth.Verdict {
        let observation = observation(tailConnected: tailConnected)
        let verdict = state.withLockedValue { $0.health.verdict(observation) }
        record(verdict, observation)
        return verdict
    }

    /// The late-node rule's next step (called once per canary period).
    func step(tailConnected: Bool) -> [DeliveryHealth.Action] {
        let observation = observation(tailConnected: tailConnected)
        let (verdict, actions) = state.withLockedValue { s in (s.health.verdict(observation), s.health.step(observation)) }
        record(verdict, observation)
        return actions
    }

    private func record(_ verdict: DeliveryHealth.Verdict, _ observation: DeliveryHealth.Observation) {
        if let lag = observation.lagMilliseconds { lagGauge.record(Double(lag) / 1_000) }
        readyGauge.record(Int(verdict.isReady ? 1 : 0))
        everyNodeLateGauge.record(Int(verdict == .readyEveryNodeLate ? 1 : 0))
    }
}

extension NodeHealth {
    private static let nodesMade = NIOLockedValueBox(0)

    /// `hostname:pid`, readable in `syncline.nodes`; a second node in the same process (a test
    /// running several) gets `hostname:pid.2`, and so on, so nodes never share a name.
    static func makeDefaultNodeID() -> String {
        var name = [CChar](repeating: 0, count: 256)
        let host = gethostname(&name, name.count) == 0
            ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        let n = nodesMade.withLockedValue { n -> Int in
            n += 1
            return n
        }
        return "\(host.isEmpty ? "node" : host):\(ProcessInfo.processInfo.processIdentifier)" + (n > 1 ? ".\(n)" : "")
    }
}
