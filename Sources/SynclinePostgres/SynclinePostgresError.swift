/// Errors of the Postgres side of Syncline, with stable codes for logs and metrics.
///
/// Messages meant for clients never carry Postgres's own error text: the server maps these to
/// protocol codes and logs the detail.
public struct SynclinePostgresError: Error, CustomStringConvertible, Sendable {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let clusterSetup = Code(rawValue: "cluster_setup")
        public static let migration = Code(rawValue: "migration")
        public static let notMigrated = Code(rawValue: "not_migrated")
        public static let unknownCollection = Code(rawValue: "unknown_collection")
        public static let unknownColumn = Code(rawValue: "unknown_column")
        public static let invalidValue = Code(rawValue: "invalid_value")
        public static let forbidden = Code(rawValue: "forbidden")
        public static let unavailable = Code(rawValue: "unavailable")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
