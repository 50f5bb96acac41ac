import ArgumentParser
import Foundation
import NIOConcurrencyHelpers
import SynclineClient

/// One client's history file: JSON lines in scripts/check-history's format, buffered and appended
/// by the flusher (the observer must not block the client's task).
final class Recorder: @unchecked Sendable {
    private let client: String
    private let rowsEvery: Int
    private let handle: FileHandle
    private let lock = NIOLock()
    private var buffer: [UInt8] = []
    private var saves: [String: Int] = [:]
    // Touched only by the client's mutation task.
    var enqueued = 0
    var midMismatches = 0

    init(path: String, client: String, rowsEvery: Int) throws {
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        guard let handle = FileHandle(forWritingAtPath: path) else { throw ValidationError("cannot write \(path)") }
        self.handle = handle
        self.client = client
        self.rowsEvery = rowsEvery
    }

    private func line(_ kind: String, _ rest: String) {
        let ts = String(format: "%.3f", Date().timeIntervalSince1970)
        let text = "{\"t\":\"\(kind)\",\"client\":\"\(client)\",\"ts\":\(ts)\(rest)}\n"
        lock.withLock { buffer.append(contentsOf: text.utf8) }
    }

    func record(_ observation: ClientObservation) {
        switch observation {
        case .connecting(let connection):
            line("connect", ",\"connection\":\(connection)")
        case .sent(_, let text):
            // Only what the checker reads: subscribes and mutations (not hello with its token, pings).
            guard text.contains("\"type\":\"subscribe\"") || text.contains("\"type\":\"mutate\"") else { return }
            line("send", ",\"msg\":\(text)")
        case .received(_, let message):
            if message["type"]?.stringValue == "pong" { return }
            line("recv", ",\"msg\":\(message.jsonText)")
        case .saved(let subscription, let spec, let cursor, let rows):
            guard spec.collection != nil else { return }
            let n = lock.withLock { () -> Int in
                saves[spec.storageKey, default: 0] += 1
                return saves[spec.storageKey]!
            }
            var rest = ",\"sub\":\(JSONValue.quoted(subscription)),\"cursor\":\(JSONValue.quoted(cursor))"
            if let rows, n % rowsEvery == 0 || n == 1 {
                rest += ",\"rows\":\(JSONValue.array(rows).jsonText)"
            }
            line("save", rest)
        }
    }

    func end(status: ClientStatus) {
        line("end", ",\"state\":\"\(status.state.rawValue)\",\"pending\":\(status.pending)")
    }

    func flush() {
        let bytes = lock.withLock { () -> [UInt8] in
            defer { buffer = [] }
            return buffer
        }
        if !bytes.isEmpty { handle.write(Data(bytes)) }
    }
}
