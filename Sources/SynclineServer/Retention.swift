import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import PostgresNIO
import ServiceLifecycle

/// What `serve` prunes, and how often (`--retain-changes`, `--retain-outcomes`,
/// `--retention-interval`). Pruning the change log turns resumes from before the pruned range into
/// `reset`s (protocol §3.4) and drops the topic messages in it; pruning outcomes turns a resend of
/// a `mid` decided before it into `error outcome_expired` (§5). The defaults (30 days each, every
/// 5 minutes) keep the database from growing without bound while leaving a month for offline
/// clients.
public struct RetentionPolicy: Sendable, Equatable {
    /// How much of the change log to keep.
    public enum Changes: Sendable, Equatable {
        case keepAll
        /// Changes committed longer ago than this are pruned (whole transactions).
        case age(Duration)
        /// All but the newest this many changes are pruned (whole transactions).
        case count(Int64)
    }

    public var changes: Changes = .age(.seconds(30 * 86_400))
    /// Outcomes decided longer ago than this are pruned; nil keeps them all.
    public var outcomesAge: Duration? = .seconds(30 * 86_400)
    /// How often a node tries; across all nodes at most one run per interval prunes.
    public var interval: Duration = .seconds(300)

    public init() {}

    /// Whether there is anything to prune at all (else no service runs).
    public var isEnabled: Bool { changes != .keepAll || outcomesAge != nil }

    /// `30d`, `12h`, `15m`, `90s`, `500ms` (a whole number and a unit).
    public static func duration(_ text: String) -> Duration? {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
        for (unit, millis) in units where text.hasSuffix(unit) {
            let number = text.dropLast(unit.count)
            // "ms" before "s"/"m": "500ms" must not parse as 500 m + "s".
            guard !number.isEmpty, number.allSatisfy(\.isASCII), let n = Int64(number), n > 0,
                  n <= Int64.max / millis / 1_000_000 else { continue }
            return .milliseconds(n * millis)
        }
        return nil
    }

    /// `--retain-changes`: `off`, a duration (`30d`) or a count of changes (`1000000`).
    public static func changes(_ text: String) -> Changes? {
        if text == "off" { return .keepAll }
        if let count = Int64(text) { return count >= 1 ? .count(count) : nil }
        return duration(text).map { .age($0) }
    }

    /// `--retain-outcomes`: `off` (nil) or a duration.
    public static func outcomes(_ text: String) -> Duration?? {
        if text == "off" { return .some(nil) }
        return duration(text).map { .some($0) }
    }
}

/// Retention runs since start, as this node saw them (also the `syncline_retention_*` metrics).
public struct RetentionStats: Sendable, Equatable {
    /// Runs that pruned, by this node.
    public var pruned = 0
    /// Runs skipped because another node held the retention lock.
    public var locked = 0
    /// Runs skipped because some node pruned less than an interval ago.
    public var recent = 0
    public var failed = 0
    public var changesPruned: Int64 = 0
    public var outcomesPruned: Int64 = 0
    /// The database's clock at each of this node's pruning runs.
    public var prunedAt: [Date] = []
    public init() {}
}

/// Prunes the change log and the outcomes periodically, through `syncline.run_retention`
/// (migration 0008): one node at a time under an advisory lock of retention's own (not the capture
/// lock, so commits never wait for it), and at most once per interval across the deployment.
public final class RetentionService: Service, Sendable {
    private let client: PostgresClient
    private let policy: RetentionPolicy
    private let node: String
    private let logger: Logger
    private let counts = NIOLockedValueBox(RetentionStats())
    private let runs: [String: Counter] = Dictionary(uniqueKeysWithValues: ["pruned", "locked", "recent", "failed"].map {
        ($0, Counter(label: "syncline_retention_runs_total", dimensions: [("outcome", $0)]))
    })
    private let changesCounter = Counter(label: "syncline_retention_pruned_total", dimensions: [("table", "changes")])
    private let outcomesCounter = Counter(label: "syncline_retention_pruned_total", dimensions: [("table", "outcomes")])
    private let lastRunGauge = Gauge(label: "syncline_retention_last_run_timestamp_seconds")
    private let durationGauge = Gauge(label: "syncline_retention_last_duration_seconds")
    private let horizonGauge = Gauge(label: "syncline_retention_pruned_through")

    public var stats: RetentionStats { counts.withLockedValue { $0 } }

    init(client: PostgresClient, policy: RetentionPolicy, node: String, logger: Logger) {
        self.client = client
        self.policy = policy
        self.node = node
        var logger = logger
        logger[metadataKey: "service"] = "retention"
        self.logger = logger
    }

    public func run() async throws {
        let interval = policy.interval
        while !Task.isShuttingDownGracefully {
            // ±10 %: nodes started together do not all knock at once.
            let jitter = Double.random(in: 0.9...1.1)
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval * jitter) }
            } catch {
                return
            }
            guard !Task.isShuttingDownGracefully else { return }
            await runOnce()
        }
    }

    /// One attempt: prunes, or learns that another node holds the lock or pruned recently.
    func runOnce() async {
        let started = ContinuousClock.now
        var keepAge: String?, keepCount: Int64?
        switch policy.changes {
        case .keepAll: break
        case .age(let age): keepAge = Self.interval(age)
        case .count(let count): keepCount = count
        }
        let outcomesAge = policy.outcomesAge.map(Self.interval)
        // A little under the interval, so that sleep drift never makes every node skip a round.
        let minimum = Self.interval(policy.interval * 0.9)
        do {
            let rows = try await client.query("""
                SELECT outcome, changes_pruned, outcomes_pruned, horizon, ran_at
                FROM syncline.run_retention(\(node), \(minimum)::text::interval, \(keepAge)::text::interval,
                                            \(keepCount)::bigint, \(outcomesAge)::text::interval)
                """, logger: logger)
            for try await (outcome, changes, outcomes, horizon, ranAt)
                in rows.decode((String, Int64, Int64, Int64, Date).self) {
                record(outcome: outcome, changes: changes, outcomes: outcomes, horizon: horizon, at: ranAt, started: started)
            }
        } catch {
            counts.withLockedValue { $0.failed += 1 }
            runs["failed"]?.increment()
            logger.error("retention run failed", metadata: ["error": "\(String(reflecting: error))"])
        }
    }

    private func record(outcome: String, changes: Int64, outcomes: Int64, horizon: Int64, at ranAt: Date,
                        started: ContinuousClock.Instant) {
        runs[outcome]?.increment()
        horizonGauge.record(horizon)
        counts.withLockedValue {
            switch outcome {
            case "pruned":
                $0.pruned += 1
                $0.changesPruned += changes
                $0.outcomesPruned += outcomes
                $0.prunedAt.append(ranAt)
            case "locked": $0.locked += 1
            default: $0.recent += 1
            }
        }
        guard outcome == "pruned" else {
            logger.debug("retention skipped", metadata: ["outcome": "\(outcome)"])
            return
        }
        let elapsed = ContinuousClock.now - started
        changesCounter.increment(by: Int(changes))
        outcomesCounter.increment(by: Int(outcomes))
        lastRunGauge.record(ranAt.timeIntervalSince1970)
        durationGauge.record(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        logger.info("retention pruned", metadata: [
            "changes": "\(changes)", "outcomes": "\(outcomes)", "pruned_through": "\(horizon)", "duration": "\(elapsed)",
        ])
    }

    /// A Postgres interval literal of `duration` (millisecond precision).
    static func interval(_ duration: Duration) -> String {
        let millis = duration.components.seconds * 1_000 + duration.components.attoseconds / 1_000_000_000_000_000
        return "\(millis) milliseconds"
    }
}
