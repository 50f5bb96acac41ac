import SynclineProtocol

/// The rows a mutator's optimistic effect reads and writes. Reads see the confirmed rows of every
/// live query of a collection plus the effects of earlier pending mutations; writes are recorded as
/// effects, shown in every live query whose filter the new row matches, until the mutation is decided.
public struct OptimisticRows: Sendable {
    enum Effect: Sendable, Hashable {
        case put(StoredRow)
        case delete(key: JSONValue)
    }

    /// The `mid` of the mutation whose effect is running (e.g. for client-made keys `pending:<mid>:1`).
    public internal(set) var mid: Int64
    /// Confirmed rows by collection: one dictionary (key string → row) per live query.
    let confirmed: [String: [[String: StoredRow]]]
    /// Effects by collection, key string → effect.
    var effects: [String: [String: Effect]] = [:]

    init(mid: Int64, confirmed: [String: [[String: StoredRow]]]) {
        self.mid = mid
        self.confirmed = confirmed
    }

    /// The row of `collection` with `key` as it would be after the effects so far; nil when absent.
    public func get(_ collection: String, key: JSONValue) -> JSONValue? {
        let k = key.keyString
        if let effect = effects[collection]?[k] {
            if case .put(let row) = effect { return row.row }
            return nil
        }
        for rows in confirmed[collection] ?? [] {
            if let row = rows[k] { return row.row }
        }
        return nil
    }

    /// Every known row of `collection` (confirmed and optimistic), in no particular order.
    public func all(_ collection: String) -> [JSONValue] {
        var byKey: [String: JSONValue] = [:]
        for rows in confirmed[collection] ?? [] {
            for (k, row) in rows { byKey[k] = row.row }
        }
        for (k, effect) in effects[collection] ?? [:] {
            switch effect {
            case .put(let row): byKey[k] = row.row
            case .delete: byKey[k] = nil
            }
        }
        return Array(byKey.values)
    }

    /// Shows `row` under `key` in `collection` (insert or replace).
    public mutating func put(_ collection: String, key: JSONValue, row: JSONValue) {
        effects[collection, default: [:]][key.keyString] = .put(StoredRow(key: key, row: row))
    }

    /// Changes the row with `key` in place, when there is one.
    public mutating func update(_ collection: String, key: JSONValue, _ change: (inout JSONValue) -> Void) {
        guard var row = get(collection, key: key) else { return }
        change(&row)
        put(collection, key: key, row: row)
    }

    /// Removes the row with `key`.
    public mutating func delete(_ collection: String, key: JSONValue) {
        effects[collection, default: [:]][key.keyString] = .delete(key: key)
    }
}

/// An optimistic effect: what the mutator is expected to do, applied to `rows` for `args`. It is
/// re-run over the confirmed rows whenever they change (and after a restart), so it must depend on
/// nothing but its inputs.
public typealias MutatorEffect = @Sendable (inout OptimisticRows, JSONValue) -> Void
