import SynclineCore
import SynclineProtocol
import Tracing

/// Spans for the requests a client makes (swift-distributed-tracing): `syncline.subscribe` (from
/// `subscribe` to its resolution: snapshot, resume, reset or an error), `syncline.snapshot` (one
/// shared snapshot read, for all its sharers) and `syncline.mutation` (from `mutate` to its
/// decision). They go to the tracer bootstrapped with `InstrumentationSystem.bootstrap`; with none
/// they are no-ops, and no attribute is even built.
enum RequestSpans {
    static let subscribe = "syncline.subscribe"
    static let snapshot = "syncline.snapshot"
    static let mutation = "syncline.mutation"

    /// Ends `span` with `outcome` (`snapshot`, `ack`, …), marking it an error when `failure` is set.
    static func end(_ span: any Span, outcome: String, failure: String? = nil) {
        if span.isRecording {
            span.attributes["syncline.outcome"] = outcome
            if let failure {
                span.attributes["syncline.error"] = failure
                span.setStatus(SpanStatus(code: .error, message: failure))
            }
        }
        span.end()
    }
}

extension SyncConnection {
    /// A span for one request of this connection, carrying its connection, session and client.
    func startRequestSpan(_ name: String) -> any Span {
        let span = startSpan(name, ofKind: .server)
        if span.isRecording {
            span.attributes["syncline.connection"] = Int(truncatingIfNeeded: connectionNumber)
            span.attributes["syncline.session"] = sessionID
            span.attributes["syncline.client_id"] = clientID
            if let sub = identity?.sub { span.attributes["syncline.sub"] = sub }
        }
        return span
    }
}

extension RequestSpans {
    /// Ends a `syncline.mutation` span with its decision (an ack's position, a reject's code).
    static func mutationDecided(_ span: any Span, _ outcome: MutationOutcome) {
        switch outcome {
        case .ack(let position, _, let duplicate):
            if span.isRecording {
                span.attributes["syncline.position"] = Int(truncatingIfNeeded: position)
                span.attributes["syncline.duplicate"] = duplicate
            }
            end(span, outcome: "ack")
        case .reject(let code, _, _, let duplicate):
            if span.isRecording {
                span.attributes["syncline.reject_code"] = code
                span.attributes["syncline.duplicate"] = duplicate
            }
            end(span, outcome: "reject")
        case .error(let code, _, _):
            end(span, outcome: "error", failure: code.rawValue)
        }
    }
}
