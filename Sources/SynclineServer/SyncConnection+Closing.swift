import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SynclineCore
import SynclinePostgres
import SynclineProtocol

/// The close handshake and the heartbeat.
extension SyncConnection {
    /// Starts the close handshake with `code` (the WebSocket layer sends the close frame after
    /// everything sent before it, and closes TCP when the client answers or after its close
    /// timeout) and releases what the connection holds.
    func close(_ code: CloseCode, reason: String) {
        guard !closing, context != nil else { return }
        closing = true
        session.closed()
        environment.closesCounter.increment()
        logger.debug("closing", metadata: ["code": "\(code.rawValue)", "reason": "\(reason)"])
        webSocket.close(code, reason: reason)
        tearDown()
    }

    /// Called by the loop's fan-out every heartbeat period (one timer per loop, not per connection).
    func heartbeatTick(period: TimeAmount) {
        guard !closing, context != nil else { return }
        // A client behind our own backlog answers pings late; the outbound limit (4008) deals with
        // slow readers, so silence only counts while our queue is drained.
        if NIODeadline.now() - lastReceived > period * 2 && webSocket.isWritable {
            logger.debug("closing a connection that stopped answering pings")
            return close(.normal, reason: "no answer to pings")
        }
        webSocket.sendPing()
        webSocket.flush()
    }
}
