import NIOConcurrencyHelpers
import SynclineClient

/// Records everything a live query publishes, for checks of "each change once".
final class QueryRecorder: Sendable {
    let events = NIOLockedValueBox<[LiveQueryEvent]>([])
    private let task: Task<Void, Never>

    init(_ query: LiveQuery) {
        let events = self.events
        // Made here, not in the task: a task that starts late would see early changes folded into
        // its opening `.snapshot`, and count them as never inserted.
        let sequence = query.events(limit: 100_000)
        task = Task {
            for await event in sequence { events.withLockedValue { $0.append(event) } }
        }
    }

    /// How many times each key was inserted by a `changes` event.
    var insertsByKey: [String: Int] {
        var counts: [String: Int] = [:]
        for event in events.withLockedValue({ $0 }) {
            guard case .changes(let changes) = event else { continue }
            for change in changes where change.op == .insert { counts[change.key.keyString, default: 0] += 1 }
        }
        return counts
    }

    /// Every op each key got in `changes` events, in order ("insert", "update", …).
    var opsByKey: [String: [String]] {
        var ops: [String: [String]] = [:]
        for event in events.withLockedValue({ $0 }) {
            guard case .changes(let changes) = event else { continue }
            for change in changes { ops[change.key.keyString, default: []].append(change.op.rawValue) }
        }
        return ops
    }

    /// The `id`s of the rows in `snapshot` events (the sequence's opening one and the server's).
    var snapshotIDs: Set<String> {
        var ids: Set<String> = []
        for event in events.withLockedValue({ $0 }) {
            guard case .snapshot(let rows) = event else { continue }
            for row in rows { if let id = row["id"]?.stringValue { ids.insert(id) } }
        }
        return ids
    }

    var kinds: [String] {
        events.withLockedValue { $0 }.map { event in
            switch event {
            case .snapshot: return "snapshot"
            case .changes: return "changes"
            case .reset: return "reset"
            case .live: return "live"
            case .cursor: return "cursor"
            case .resynced: return "resynced"
            case .ended: return "ended"
            }
        }
    }

    func stop() { task.cancel() }
}
