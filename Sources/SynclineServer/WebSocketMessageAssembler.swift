import NIOCore
import NIOWebSocket
import SynclineProtocol

/// Reassembles fragmented WebSocket data frames into messages, enforcing the message size limit
/// and UTF-8 validity of text. Control frames are not its business.
struct WebSocketMessageAssembler {
    enum Outcome {
        case none
        case text(ByteBuffer)
        case binary(ByteBuffer)
        case fail(CloseCode, String)
    }

    let maximumBytes: Int
    private var buffer: ByteBuffer?
    private var isText = false

    init(maximumBytes: Int) {
        self.maximumBytes = maximumBytes
    }

    mutating func receive(_ frame: WebSocketFrame) -> Outcome {
        var data = frame.unmaskedData
        switch frame.opcode {
        case .text, .binary:
            guard buffer == nil else { return .fail(.protocolError, "new message before the previous one ended") }
            guard data.readableBytes <= maximumBytes else { return .fail(.messageTooBig, "message exceeds \(maximumBytes) bytes") }
            if frame.fin {
                return finish(data, text: frame.opcode == .text)
            }
            isText = frame.opcode == .text
            buffer = data
            return .none
        case .continuation:
            guard var current = buffer else { return .fail(.protocolError, "continuation frame without a message") }
            guard current.readableBytes + data.readableBytes <= maximumBytes else {
                buffer = nil
                return .fail(.messageTooBig, "message exceeds \(maximumBytes) bytes")
            }
            buffer = nil
            current.writeBuffer(&data)
            if frame.fin {
                return finish(current, text: isText)
            }
            buffer = current
            return .none
        default:
            return .none
        }
    }

    private func finish(_ data: ByteBuffer, text: Bool) -> Outcome {
        guard text else { return .binary(data) }
        let valid = data.withUnsafeReadableBytes { String(validating: $0, as: UTF8.self) != nil }
        return valid ? .text(data) : .fail(.invalidPayload, "text message is not valid UTF-8")
    }
}
