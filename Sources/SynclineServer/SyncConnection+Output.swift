import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SynclineCore
import SynclinePostgres
import SynclineProtocol

/// Everything the connection writes, all through its WebSocket layer (one ordered path): feed
/// deliveries (prefix + shared body), its own messages, and the flush once per batch.
extension SyncConnection {
    /// Writes a feed body for one subscriber (its prefix plus the shared bytes). The connection is
    /// flushed by the fan-out at the end of the batch. A connection whose outbound queue is over
    /// its limit is closed with 4008: the client resumes from its cursor.
    /// With `live`, the `changes` message is the feed's live marker (`goLive`).
    func send(_ body: FeedBody, to subscriber: Subscriber, through: Int64, promise: EventLoopPromise<Void>? = nil,
              live: Bool = false) {
        guard !closing else {
            promise?.fail(Abandoned())
            return
        }
        guard webSocket.isWritable else {
            promise?.fail(Abandoned())
            SynclineLimitMetrics.refused(.outboundBytes)
            return close(.tooSlow, reason: "outbound queue full; resume from your cursor")
        }
        // Called once per subscriber and batch: no per-call allocation (no array of frames).
        if body.changes != nil {
            subscriber.lastSent = .now()
            subscriber.lastSentPosition = through
        }
        let last = body.messages.count - (body.changes == nil ? 1 : 0)
        guard last >= 0 else {
            promise?.succeed()
            return
        }
        for (i, message) in body.messages.enumerated() {
            webSocket.sendText(prefix: subscriber.messagePrefix, body: message.body, promise: i == last ? promise : nil)
        }
        if let changes = body.changes {
            webSocket.sendText(prefix: live ? subscriber.liveChangesPrefix : subscriber.changesPrefix, body: changes, promise: promise)
        }
        if !queuedForFlush {
            queuedForFlush = true
            fanout.needsFlush(self)
        }
    }

    /// One of the connection's own messages; flushed when the current read, batch or callback ends.
    func sendText(_ text: String) {
        guard !closing else { return }
        webSocket.sendText(text)
    }

    /// Called by the fan-out at the end of a batch.
    func fanoutFlush() {
        queuedForFlush = false
        webSocket.flush()
    }

    /// Flushes what was sent outside a read or a batch (answers from tasks hopping back to the loop).
    func flushIfNeeded() {
        webSocket.flush()
    }
}
