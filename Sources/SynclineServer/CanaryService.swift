import Foundation
import Logging
import Metrics
import NIOCore
import PostgresNIO
import ServiceLifecycle
import SynclineProtocol

/// Every `--canary-interval-ms`, publishes a canary through this node's own change log
/// (`syncline.canary`, migration 0007), which also records this node's lag in `syncline.nodes` and
/// reads the other nodes' lags, the head and `pg_notification_queue_usage()`. Between rounds it
/// applies the late-node rule (`DeliveryHealth`): a node late alone closes its sockets with 1001.
///
/// The publish and the rule run as two loops, so a publish stuck on a slow Postgres does not stop
/// the lag from growing or the rule from acting.
struct CanaryService: Service {
    let health: NodeHealth
    let hub: Hub
    let group: any EventLoopGroup
    let client: PostgresClient
    let interval: Duration
    let lateMilliseconds: Int64
    let logger: Logger

    private let positionsGauge = Gauge(label: "syncline_tail_lag_positions")
    private let queueGauge = Gauge(label: "syncline_pg_notification_queue_usage")
    private let peersGauge = Gauge(label: "syncline_canary_peer_nodes")
    private let errorsCounter = Counter(label: "syncline_canary_errors_total")
    private let lateClosesCounter = Counter(label: "syncline_late_closes_total")

    init(health: NodeHealth, hub: Hub, group: any EventLoopGroup, client: PostgresClient,
         configuration: ServerConfiguration, logger: Logger) {
        self.health = health
        self.hub = hub
        self.group = group
        self.client = client
        self.interval = .milliseconds(configuration.canaryIntervalMilliseconds)
        self.lateMilliseconds = configuration.canaryLateMilliseconds
        self.logger = logger
    }

    /// Peers count as live when they wrote within this window: long enough that nodes slowed
    /// together by one slow Postgres still see each other, short enough to forget a dead node.
    var freshMilliseconds: Int64 { max(3 * lateMilliseconds, 4 * interval.wholeMilliseconds) }

    func run() async throws {
        guard health.canaryEnabled else {
            // Nothing to do, but a service that returns early would end the group.
            try? await gracefulShutdown()
            return
        }
        logger.info("canary running", metadata: [
            "node_id": "\(health.nodeID)", "interval_ms": "\(interval.wholeMilliseconds)", "late_ms": "\(lateMilliseconds)",
        ])
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await publishLoop() }
            tasks.addTask { await ruleLoop() }
        }
    }

    private func publishLoop() async {
        var sequence: UInt64 = 0
        var failing = false
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            sequence += 1
            let current = sequence
            do {
                try await cancelWhenGracefulShutdown { try await publish(current) }
                if failing { logger.notice("canary publishing again") }
                failing = false
            } catch {
                if Task.isShuttingDownGracefully || Task.isCancelled { return }
                errorsCounter.increment()
                // One warning per failing spell, not one a second.
                if !failing { logger.warning("canary could not publish", metadata: ["error": "\(String(reflecting: error))"]) }
                failing = true
            }
            try? await Task.sleep(for: interval)
        }
    }

    private func publish(_ sequence: UInt64) async throws {
        let payload = "{\"node\":\(JSONValue.quoted(health.nodeID)),\"run\":\"\(health.incarnation)\",\"seq\":\(sequence)}"
        let lag = health.lagMilliseconds ?? 0
        health.sent(sequence)
        let readAt = ContinuousClock.now
        let rows = try await client.query(
            "SELECT * FROM syncline.canary(\(health.nodeID), \(payload)::jsonb, \(lag), \(freshMilliseconds))", logger: logger)
        for try await (head, usage, _, peerLags) in rows.decode((Int64, Double, [String], [Int64]).self) {
            health.learned(peerLags: peerLags, readAt: readAt)
            peersGauge.record(peerLags.count)
            queueGauge.record(usage)
            positionsGauge.record(max(0, head - hub.head))
        }
    }

    private func ruleLoop() async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: interval)
            for action in health.step(tailConnected: hub.isListening) {
                switch action {
                case .closeConnections(let reason):
                    lateClosesCounter.increment()
                    logger.warning("this node is late and another is not: closing every WebSocket with 1001", metadata: [
                        "lag_ms": "\(health.lagMilliseconds ?? 0)", "late_ms": "\(lateMilliseconds)",
                    ])
                    for loop in group.makeIterator() {
                        let hub = self.hub
                        loop.execute { hub.fanout(on: loop).closeAll(reason: reason) }
                    }
                }
            }
        }
    }
}
