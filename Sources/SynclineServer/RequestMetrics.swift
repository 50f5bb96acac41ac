import Metrics
import SynclineCore

/// Counters operators alert on (docs/operations.md): how mutations were answered, and requests
/// refused by a limit. Created on first use, after `MetricsSystem.bootstrap`.
enum RequestMetrics {
    /// `syncline_mutation_answers_total{outcome="ack|reject|error"}`: `error` is `unavailable`,
    /// `rate_limited` or `timeout`-free errors the client must resend.
    private static let answers: [String: Counter] = Dictionary(uniqueKeysWithValues: ["ack", "reject", "error"].map {
        ($0, Counter(label: "syncline_mutation_answers_total", dimensions: [("outcome", $0)]))
    })

    /// A limit that refused a request.
    enum Limit: String, CaseIterable {
        /// `--max-connections`: HTTP 503 on the upgrade.
        case connections
        /// `--max-messages-per-second`: `error rate_limited` (1008 when the client keeps on).
        case messageRate = "message_rate"
        /// `--max-mutations-in-flight`: `error rate_limited` on the `mutate`.
        case mutationsInFlight = "mutations_in_flight"
        /// `--max-outbound-bytes`: close 4008, the client resumes.
        case outboundBytes = "outbound_bytes"
    }

    /// `syncline_limit_refusals_total{limit="…"}`.
    private static let refusals: [Limit: Counter] = Dictionary(uniqueKeysWithValues: Limit.allCases.map {
        ($0, Counter(label: "syncline_limit_refusals_total", dimensions: [("limit", $0.rawValue)]))
    })

    static func answered(_ outcome: MutationOutcome) {
        answers[outcome.kind]?.increment()
    }

    static func refused(_ limit: Limit) {
        refusals[limit]?.increment()
    }
}
