import Logging
import NIOConcurrencyHelpers

/// A logger whose lines a test can read: level, message and metadata, as one string each.
final class CapturedLog: Sendable {
    private let box = NIOLockedValueBox<[String]>([])

    var lines: [String] { box.withLockedValue { $0 } }

    func logger(level: Logger.Level = .debug) -> Logger {
        var logger = Logger(label: "syncline-captured") { _ in Handler(box: self.box) }
        logger.logLevel = level
        return logger
    }

    private struct Handler: LogHandler {
        let box: NIOLockedValueBox<[String]>
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
                 file: String, function: String, line: UInt) {
            let all = self.metadata.merging(metadata ?? [:]) { $1 }
            let text = "\(level) \(message)" + (all.isEmpty ? "" : " \(all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
            box.withLockedValue { $0.append(text) }
        }
    }
}
