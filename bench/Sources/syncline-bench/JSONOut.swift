import SynclineProtocol
import Foundation

/// A tiny ordered JSON value for the result files (key order kept as written).
indirect enum JSONOut: Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double, digits: Int)
    case string(String)
    case array([JSONOut])
    case object([(String, JSONOut)])

    static func number(_ v: Double, _ digits: Int = 3) -> JSONOut { .double(v, digits: digits) }
    static func optional(_ v: Double?, _ digits: Int = 3) -> JSONOut { v.map { .double($0, digits: digits) } ?? .null }

    func render(indent: Int = 0) -> String {
        let pad = String(repeating: "  ", count: indent + 1)
        let end = String(repeating: "  ", count: indent)
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d, let digits):
            guard d.isFinite else { return "null" }
            return String(format: "%.\(digits)f", d)
        case .string(let s): return Self.quote(s)
        case .array(let items):
            if items.isEmpty { return "[]" }
            return "[\n" + items.map { pad + $0.render(indent: indent + 1) }.joined(separator: ",\n") + "\n" + end + "]"
        case .object(let fields):
            if fields.isEmpty { return "{}" }
            return "{\n"
                + fields.map { pad + Self.quote($0.0) + ": " + $0.1.render(indent: indent + 1) }.joined(separator: ",\n")
                + "\n" + end + "}"
        }
    }

    static func quote(_ s: String) -> String { JSONValue.quoted(s) }

    func write(to path: String) throws {
        let text = self.render() + "\n"
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(
            at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: url, atomically: true, encoding: .utf8)
    }
}

func machineDescription() -> (cores: Int, cpu: String) {
    (ProcessInfo.processInfo.activeProcessorCount, ProcFS.cpuModel())
}
