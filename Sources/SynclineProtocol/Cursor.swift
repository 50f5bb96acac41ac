/// A global position in a deployment's change log, rendered for clients as `<epoch>.<position>`.
///
/// The epoch is written once when the database is migrated, so positions reused after a restore
/// (or in another database) never resume the wrong history: a cursor of another epoch is answered
/// with a reset, not with changes.
public struct Cursor: Hashable, Sendable, CustomStringConvertible {
    public var epoch: String
    public var position: Int64

    public init(epoch: String, position: Int64) {
        self.epoch = epoch
        self.position = position
    }

    /// Parses `<epoch>.<position>`; nil for anything else (the caller answers `bad_request`).
    public init?(parsing text: String) {
        guard text.utf8.count <= 64, let dot = text.lastIndex(of: ".") else { return nil }
        let epoch = text[..<dot]
        let digits = text[text.index(after: dot)...]
        guard !epoch.isEmpty, epoch.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }),
              !digits.isEmpty, digits.utf8.count <= 19, digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let position = Int64(digits)
        else { return nil }
        self.epoch = String(epoch)
        self.position = position
    }

    public var description: String { "\(epoch).\(position)" }
}
