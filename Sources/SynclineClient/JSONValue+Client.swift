import Foundation
import SynclineProtocol


extension JSONValue {
    /// The number as a `Decimal`, read from its digits (never through `Double`); nil for non-numbers.
    ///
    /// `Decimal` holds 38 significant digits; Postgres `numeric` values beyond that lose precision here
    /// (the row itself keeps every digit: use ``numberText`` for those).
    public var decimal: Decimal? {
        guard case .number(let text) = self else { return nil }
        return Decimal(string: text, locale: Locale(identifier: "en_US_POSIX"))
    }

    /// The number's text exactly as the server sent it (e.g. `1250.00`), nil for non-numbers.
    public var numberText: String? {
        if case .number(let text) = self { return text }
        return nil
    }

    /// The number as an `Int64` when it is an integer in range (no fraction, no exponent), else nil.
    public var int64: Int64? {
        guard case .number(let text) = self else { return nil }
        return Int64(text)
    }

    /// The boolean, or nil.
    public var bool: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// The elements of an array, or nil.
    public var array: [JSONValue]? {
        if case .array(let values) = self { return values }
        return nil
    }

    /// The members of an object in their order, or nil.
    public var members: [(String, JSONValue)]? {
        if case .object(let members) = self { return members }
        return nil
    }

    /// A number with `decimal`'s value written with at least `scale` fraction digits (`1149.5`, scale 2 →
    /// `1149.50`), so arithmetic on money keeps the scale Postgres uses.
    public init(decimal: Decimal, scale: Int = 0) {
        self = .number(Self.text(of: decimal, scale: scale))
    }

    /// The number of digits after the decimal point of a number's text (`1250.00` → 2), 0 otherwise.
    public var scale: Int {
        guard case .number(let text) = self, let dot = text.firstIndex(of: ".") else { return 0 }
        let fraction = text[text.index(after: dot)...].prefix { $0.isNumber }
        return fraction.count
    }

    static func text(of decimal: Decimal, scale: Int) -> String {
        var value = decimal
        var rounded = Decimal()
        NSDecimalRound(&rounded, &value, max(scale, 0), .plain)
        var text = rounded.description
        guard scale > 0 else { return text }
        if let dot = text.firstIndex(of: ".") {
            let have = text.distance(from: text.index(after: dot), to: text.endIndex)
            if have < scale { text += String(repeating: "0", count: scale - have) }
        } else {
            text += "." + String(repeating: "0", count: scale)
        }
        return text
    }

    /// `self` plus `other` for two numbers, keeping the larger scale (`1250.00 + -100.5` → `1149.50`).
    public func adding(_ other: JSONValue) -> JSONValue? {
        guard let a = decimal, let b = other.decimal else { return nil }
        return JSONValue(decimal: a + b, scale: max(scale, other.scale))
    }

    /// `self` minus `other` for two numbers, keeping the larger scale.
    public func subtracting(_ other: JSONValue) -> JSONValue? {
        guard let a = decimal, let b = other.decimal else { return nil }
        return JSONValue(decimal: a - b, scale: max(scale, other.scale))
    }

    /// A copy of an object with member `key` set to `value` (appended when absent); other values unchanged.
    public func setting(_ key: String, to value: JSONValue) -> JSONValue {
        guard case .object(var members) = self else { return self }
        if let index = members.lastIndex(where: { $0.0 == key }) {
            members[index].1 = value
        } else {
            members.append((key, value))
        }
        return .object(members)
    }

    /// Canonical JSON text: objects with members sorted by name (last duplicate wins), numbers' digits
    /// as sent. Two keys are the same key exactly when their key strings are equal.
    public var keyString: String {
        var out = ""
        writeCanonical(to: &out)
        return out
    }

    private func writeCanonical(to out: inout String) {
        switch self {
        case .array(let values):
            out += "["
            for (i, value) in values.enumerated() {
                if i > 0 { out += "," }
                value.writeCanonical(to: &out)
            }
            out += "]"
        case .object(let members):
            var unique: [String: JSONValue] = [:]
            for (name, value) in members { unique[name] = value }
            out += "{"
            for (i, name) in unique.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                JSONValue.writeString(name, to: &out)
                out += ":"
                unique[name]!.writeCanonical(to: &out)
            }
            out += "}"
        default:
            write(to: &out)
        }
    }

    /// Whether two scalars are the same value: numbers compare by value (`10` = `10.0`), others exactly.
    func sameScalar(as other: JSONValue) -> Bool {
        if case .number(let a) = self, case .number(let b) = other {
            if a == b { return true }
            guard let x = decimal, let y = other.decimal else { return false }
            return x == y
        }
        return self == other
    }

    /// Whether an object row satisfies `filter` (every column equal; `null` matches a null or absent column).
    func matches(_ filter: [String: JSONValue]) -> Bool {
        for (column, expected) in filter {
            let actual = self[column] ?? .null
            guard actual.sameScalar(as: expected) else { return false }
        }
        return true
    }
}
