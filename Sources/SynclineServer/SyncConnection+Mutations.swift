import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SynclineCore
import SynclinePostgres
import SynclineProtocol

/// `mutate`: handing mutations to the group-commit executor and releasing each answer once the
/// connection's feeds have delivered the changes it waits for (read-your-writes).
extension SyncConnection {
    /// Hands a `mutate` to the group-commit executor; its answer comes back through
    /// `mutationDecided` on this loop.
    func mutate(_ mutation: ClientMessage.Mutate) {
        guard let identity else { return }
        let mid = mutation.mid
        guard mutations.submit(mid: mid) else {
            SynclineLimitMetrics.refused(.mutationsInFlight)
            sendText(ServerMessage.error(code: .rateLimited, message: "at most \(mutations.limit) mutations may be in flight on one connection",
                                         ref: .number(String(mid)), retryAfterMS: 100))
            return
        }
        let bound = self.bound
        let loop = context.eventLoop
        let span = startRequestSpan(RequestSpans.mutation)
        if span.isRecording {
            span.attributes["syncline.mid"] = Int(truncatingIfNeeded: mid)
            span.attributes["syncline.mutation"] = mutation.name
        }
        mutationLogger(mid).debug("mutation submitted", metadata: ["name": "\(mutation.name)"])
        let request = MutationExecutor.Request(
            clientID: clientID, sub: identity.sub, mid: mid, name: mutation.name, args: mutation.args.jsonText,
            claims: identity.claims
        ) { outcome in
            RequestSpans.mutationDecided(span, outcome)
            loop.execute { bound.value.mutationDecided(mid: mid, outcome) }
        }
        if !environment.mutations.submit(request) {
            RequestSpans.end(span, outcome: "error", failure: ErrorCode.unavailable.rawValue)
            mutationDecided(mid: mid, .error(.unavailable, message: "the server cannot take mutations right now; send it again",
                                             retryAfterMS: 1000))
        }
    }

    func mutationDecided(mid: Int64, _ outcome: MutationOutcome) {
        guard !closing else { return }
        mutationLogger(mid).debug("mutation decided", metadata: ["outcome": "\(outcome.kind)"])
        RequestMetrics.answered(outcome)
        mutations.decided(mid: mid, outcome)
        releaseOutcomes()
    }

    /// Sends every answer that may leave now. An `ack` leaves only once each feed of this
    /// connection has been sent the changes up to its cursor (protocol §5): the loop's fan-out has
    /// delivered through it, and no feed is still loading or catching up below it.
    func releaseOutcomes() {
        guard !closing, context != nil else { return }
        let loopHead = fanout.head
        let released = mutations.release { position in self.feedsDelivered(through: position, loopHead: loopHead) }
        let epoch = environment.hub.epoch
        for (mid, outcome) in released {
            sendText(outcome.message(mid: mid, epoch: epoch))
        }
        let waiting = mutations.blockingPosition != nil
        if waiting != awaitingDelivery {
            awaitingDelivery = waiting
            fanout.awaitDelivery(self, waiting)
        }
        flushIfNeeded()
    }

    func feedsDelivered(through position: Int64, loopHead: Int64) -> Bool {
        guard !subscribers.isEmpty else { return true }
        guard loopHead >= position else { return false }
        for subscriber in subscribers.values
        where subscriber.machine.holds(until: position) || subscriber.conflation?.holds(until: position) == true {
            return false
        }
        // A feed held for a policy re-check has not been sent what it is held from.
        if !fanout.policyHolds.isEmpty,
           subscribers.values.contains(where: { fanout.policyHolds.isHeld($0) && $0.cursor < position }) {
            return false
        }
        return true
    }
}
