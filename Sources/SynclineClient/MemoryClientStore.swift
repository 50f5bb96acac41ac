import NIOConcurrencyHelpers
import SynclineProtocol

/// A store that keeps everything in memory: nothing survives the process. For tests, tools that
/// keep their own cursor (`syncline tail`), and apps that need no offline state.
public final class MemoryClientStore: ClientStore {
    private let state: NIOLockedValueBox<StoredState>

    /// An empty store, or one holding `state`.
    public init(_ state: StoredState = StoredState()) {
        self.state = NIOLockedValueBox(state)
    }

    /// Everything stored.
    public func load() async throws -> StoredState { state.withLockedValue { $0 } }

    /// Applies `batch`.
    public func write(_ batch: StoreBatch) async throws {
        state.withLockedValue { $0.apply(batch) }
    }

    /// Applies `batches` in order, at once.
    public func write(all batches: [StoreBatch]) async throws {
        state.withLockedValue { state in for batch in batches { state.apply(batch) } }
    }
}

extension StoredState {
    /// `self` after `batch`, exactly as a durable store applies it.
    public mutating func apply(_ batch: StoreBatch) {
        if let clientID = batch.clientID { self.clientID = clientID }
        if let nextMID = batch.nextMID { self.nextMID = nextMID }
        if !batch.deleteMutations.isEmpty {
            let gone = Set(batch.deleteMutations)
            mutations.removeAll { gone.contains($0.mid) }
        }
        for mutation in batch.insertMutations {
            mutations.removeAll { $0.mid == mutation.mid }
            mutations.append(mutation)
        }
        mutations.sort { $0.mid < $1.mid }
        for write in batch.feeds {
            switch write {
            case .replace(let spec, let keyColumns, let cursor, let rows):
                feeds.removeAll { $0.spec == spec }
                feeds.append(StoredFeed(spec: spec, keyColumns: keyColumns, cursor: cursor, rows: rows))
            case .apply(let spec, let keyColumns, let cursor, let upserts, let deletes):
                var feed = feeds.first { $0.spec == spec } ?? StoredFeed(spec: spec, keyColumns: keyColumns, cursor: nil, rows: [])
                feeds.removeAll { $0.spec == spec }
                var byKey: [String: StoredRow] = [:]
                var order: [String] = []
                for row in feed.rows {
                    let k = row.key.keyString
                    if byKey[k] == nil { order.append(k) }
                    byKey[k] = row
                }
                for key in deletes { byKey[key.keyString] = nil }
                for row in upserts {
                    let k = row.key.keyString
                    if byKey[k] == nil { order.append(k) }
                    byKey[k] = row
                }
                feed.rows = order.compactMap { byKey[$0] }
                feed.cursor = cursor
                feed.keyColumns = keyColumns
                feeds.append(feed)
            case .remove(let spec):
                feeds.removeAll { $0.spec == spec }
            }
        }
    }
}
