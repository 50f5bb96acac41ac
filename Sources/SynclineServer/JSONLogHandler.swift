import Foundation
import Logging
import NIOConcurrencyHelpers
import SynclineProtocol
#if canImport(Glibc)
import Glibc
#endif

/// A swift-log handler that writes one JSON object per line (`--log-format json`), for log
/// pipelines that parse rather than grep:
///
///     {"time":"2026-12-01T17:40:00.123Z","level":"info","label":"syncline","message":"…","metadata":{…}}
///
/// `metadata` merges the handler's, the provider's and the call's (the call wins), so connection,
/// session, client and request ids set on a connection's logger are on every line it writes.
/// Lines are written whole under a lock: concurrent loggers never interleave inside a line.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let output: JSONLogOutput

    /// A handler writing to standard error (the default) or standard output.
    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil, output: JSONLogOutput = .standardError) {
        self.label = label
        self.metadataProvider = metadataProvider
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let own = event.metadata { merged.merge(own) { _, new in new } }
        output.write(Self.line(time: Date(), level: event.level, label: label, message: "\(event.message)",
                               metadata: merged, source: event.source))
    }

    /// The line for one entry (without its newline); also what the unit tests check.
    static func line(time: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata,
                     source: String) -> String {
        var out = "{\"time\":"
        JSONValue.writeString(timestamp(time), to: &out)
        out += ",\"level\":"
        JSONValue.writeString(level.rawValue, to: &out)
        out += ",\"label\":"
        JSONValue.writeString(label, to: &out)
        out += ",\"message\":"
        JSONValue.writeString(message, to: &out)
        out += ",\"source\":"
        JSONValue.writeString(source, to: &out)
        out += ",\"metadata\":"
        appendMetadata(metadata, to: &out)
        out += "}"
        return out
    }

    private static func appendMetadata(_ metadata: Logger.Metadata, to out: inout String) {
        out += "{"
        // Sorted: lines of one kind read (and diff) alike.
        for (index, key) in metadata.keys.sorted().enumerated() {
            if index > 0 { out += "," }
            JSONValue.writeString(key, to: &out)
            out += ":"
            appendValue(metadata[key]!, to: &out)
        }
        out += "}"
    }

    private static func appendValue(_ value: Logger.Metadata.Value, to out: inout String) {
        switch value {
        case .string(let string): JSONValue.writeString(string, to: &out)
        case .stringConvertible(let convertible): JSONValue.writeString(convertible.description, to: &out)
        case .dictionary(let dictionary): appendMetadata(dictionary, to: &out)
        case .array(let array):
            out += "["
            for (index, element) in array.enumerated() {
                if index > 0 { out += "," }
                appendValue(element, to: &out)
            }
            out += "]"
        }
    }

    /// RFC 3339 in UTC with milliseconds, without a formatter (they are costly and not Sendable).
    static func timestamp(_ date: Date) -> String {
        let seconds = date.timeIntervalSince1970
        var whole = time_t(seconds.rounded(.down))
        let millis = Int((seconds - Double(whole)) * 1000)
        var parts = tm()
        gmtime_r(&whole, &parts)
        func pad(_ n: Int32, _ width: Int) -> String {
            let text = String(n)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }
}

/// Where `JSONLogHandler` writes: a whole line per call, under one process-wide lock.
public struct JSONLogOutput: Sendable {
    private let writeLine: @Sendable (String) -> Void

    public static let standardError = JSONLogOutput.descriptor(2)
    public static let standardOutput = JSONLogOutput.descriptor(1)
    private static let lock = NIOLock()

    /// Lines handed to `write` (tests collect them).
    public init(_ write: @escaping @Sendable (String) -> Void) {
        self.writeLine = write
    }

    /// Straight to the file descriptor (no stdio buffer, which is shared mutable state): each line
    /// in as few `write`s as the kernel takes, under the lock so lines never interleave.
    private static func descriptor(_ fd: Int32) -> JSONLogOutput {
        JSONLogOutput { line in
            let bytes = Array((line + "\n").utf8)
            lock.withLock {
                bytes.withUnsafeBytes { raw in
                    var offset = 0
                    while offset < raw.count {
                        let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                        if n < 0 {
                            if errno == EINTR { continue }
                            return  // nowhere to report a broken log; drop the line
                        }
                        offset += n
                    }
                }
            }
        }
    }

    func write(_ line: String) { writeLine(line) }
}
