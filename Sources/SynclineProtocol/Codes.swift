/// Error and reject codes of protocol v1 (`error.code`, `reject.code`, `revoked.code`).
public struct ErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    public static let badRequest = ErrorCode(rawValue: "bad_request")
    public static let unknownType = ErrorCode(rawValue: "unknown_type")
    public static let notFound = ErrorCode(rawValue: "not_found")
    public static let forbidden = ErrorCode(rawValue: "forbidden")
    public static let conflict = ErrorCode(rawValue: "conflict")
    public static let invalid = ErrorCode(rawValue: "invalid")
    public static let outOfOrder = ErrorCode(rawValue: "out_of_order")
    public static let outcomeExpired = ErrorCode(rawValue: "outcome_expired")
    public static let duplicateID = ErrorCode(rawValue: "duplicate_id")
    public static let rateLimited = ErrorCode(rawValue: "rate_limited")
    public static let timeout = ErrorCode(rawValue: "timeout")
    public static let unavailable = ErrorCode(rawValue: "unavailable")
    public static let `internal` = ErrorCode(rawValue: "internal")
}

/// WebSocket close codes used by protocol v1.
public enum CloseCode: UInt16, Sendable {
    case normal = 1000
    case goingAway = 1001
    case protocolError = 1002
    case unsupportedData = 1003
    case invalidPayload = 1007
    case policyViolation = 1008
    case messageTooBig = 1009
    case internalError = 1011
    case overloaded = 1013
    case tokenInvalid = 4001
    case forbidden = 4003
    case tooSlow = 4008
    case protocolViolation = 4400
}

/// The subprotocol name negotiated on `/v1/sync`.
public let synclineSubprotocol = "syncline.v1"
