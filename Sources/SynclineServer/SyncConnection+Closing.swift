import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SynclineCore
import SynclinePostgres
import SynclineProtocol

/// The close handshake and the heartbeat.
extension SyncConnection {
    /// Starts the close handshake with `code`; the channel closes when the client answers, or
    /// after a short grace period.
    func close(_ code: CloseCode, reason: String) {
        guard !closing, let context else { return }
        closing = true
        session.closed()
        environment.closesCounter.increment()
        logger.debug("closing", metadata: ["code": "\(code.rawValue)", "reason": "\(reason)"])
        var data = context.channel.allocator.buffer(capacity: 2 + 123)
        data.writeInteger(code.rawValue)
        data.writeString(String(decoding: reason.utf8.prefix(123), as: UTF8.self))
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .seconds(3)) { channel.close(promise: nil) }
        tearDown()
    }

    func receivedClose(_ frame: WebSocketFrame) {
        if closing {
            context.close(promise: nil)
            return
        }
        closing = true
        session.closed()
        var data = frame.unmaskedData
        var reply = context.channel.allocator.buffer(capacity: 2)
        if data.readableBytes >= 2, let code = data.readInteger(as: UInt16.self) {
            reply.writeInteger(Self.isValidCloseCode(code) ? code : CloseCode.protocolError.rawValue)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: reply))).whenComplete { _ in
            channel.close(promise: nil)
        }
        tearDown()
    }

    static func isValidCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1011, 3000...4999: return true
        default: return false
        }
    }

    /// Called by the loop's fan-out every heartbeat period (one timer per loop, not per connection).
    func heartbeatTick(period: TimeAmount) {
        guard !closing, let context else { return }
        // A client behind our own backlog answers pings late; the outbound limit (4008) deals with
        // slow readers, so silence only counts while our queue is drained.
        if NIODeadline.now() - lastReceived > period * 2 && context.channel.isWritable {
            logger.debug("closing a connection that stopped answering pings")
            close(.normal, reason: "no answer to pings")
            context.eventLoop.scheduleTask(in: .seconds(1)) { [channel = context.channel] in channel.close(promise: nil) }
            return
        }
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer())), promise: nil)
    }
}
