import Metrics
import SynclineCore

/// Counters operators alert on (docs/operations.md): how mutations were answered (refusals by a
/// limit are `SynclineLimitMetrics`). Created on first use, after `MetricsSystem.bootstrap`.
enum RequestMetrics {
    /// `syncline_mutation_answers_total{outcome="ack|reject|error"}`: `error` is `unavailable`,
    /// `rate_limited` or `timeout`-free errors the client must resend.
    private static let answers: [String: Counter] = Dictionary(uniqueKeysWithValues: ["ack", "reject", "error"].map {
        ($0, Counter(label: "syncline_mutation_answers_total", dimensions: [("outcome", $0)]))
    })

    static func answered(_ outcome: MutationOutcome) {
        answers[outcome.kind]?.increment()
    }
}
