import SynclineProtocol

/// Filters written on a command line (`syncline tail --where account_id=alice-checking`).
public enum FilterArguments {
    /// `col=value` pairs to a filter: a value that parses as a JSON scalar (`7`, `true`, `null`,
    /// `"7"`) is that value, anything else is the text as a string. Pairs without `=` are skipped.
    public static func parse(_ pairs: [String]) -> [String: JSONValue] {
        var out: [String: JSONValue] = [:]
        for pair in pairs {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty else { continue }
            let text = String(parts[1])
            if let value = try? JSONParser.parse(text), value.isScalar {
                out[String(parts[0])] = value
            } else {
                out[String(parts[0])] = .string(text)
            }
        }
        return out
    }
}
