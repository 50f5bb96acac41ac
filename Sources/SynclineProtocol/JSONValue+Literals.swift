/// Literals for building messages and mutation arguments in Swift: `["from": "alice-checking", "amount": 10]`.
///
/// There is deliberately no nil literal (it would turn `Optional<JSONValue>.none` into `.null`) and no float literal: `10.50` would pass through `Double`. Write decimals as
/// `.number("10.50")` (or `JSONValue(decimal:)` in SynclineClient) so their digits are kept.
extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    /// A JSON string.
    public init(stringLiteral value: String) { self = .string(value) }
    /// A JSON number with the integer's decimal digits.
    public init(integerLiteral value: Int64) { self = .number(String(value)) }
    /// A JSON boolean.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    /// A JSON array.
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    /// A JSON object, members in the order written.
    public init(dictionaryLiteral elements: (String, JSONValue)...) { self = .object(elements) }
}
