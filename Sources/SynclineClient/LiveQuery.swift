import NIOConcurrencyHelpers
import SynclineProtocol

/// A live query: the rows of a collection that match a filter, kept current from the store, the
/// server's snapshot and changes, and the optimistic effects of pending mutations.
///
/// Read ``rows`` at any time; iterate ``events(limit:)`` to learn about every change.
public final class LiveQuery: Sendable {
    private struct State {
        var rows: [String: ClientCore.ViewRow] = [:]
        var live = false
        var ended: (code: String, message: String)?
        var consumers: [EventQueue<LiveQueryEvent>] = []
        var finished = false
    }

    /// The collection.
    public let collection: String
    /// The filter (column → value).
    public let filter: [String: JSONValue]
    let key: String
    private let state: NIOLockedValueBox<State>
    private let onUnsubscribe: @Sendable () async -> Void

    init(collection: String, filter: [String: JSONValue], key: String, rows: [String: ClientCore.ViewRow], live: Bool,
         onUnsubscribe: @escaping @Sendable () async -> Void) {
        self.collection = collection
        self.filter = filter
        self.key = key
        state = NIOLockedValueBox(State(rows: rows, live: live))
        self.onUnsubscribe = onUnsubscribe
    }

    /// The rows shown now (confirmed plus optimistic), sorted by key.
    public var rows: [JSONValue] {
        state.withLockedValue { state in state.rows.keys.sorted().map { state.rows[$0]!.row } }
    }

    /// The rows shown now by key string (``JSONValue/keyString`` of the key object).
    public var rowsByKey: [String: JSONValue] {
        state.withLockedValue { $0.rows.mapValues(\.row) }
    }

    /// The row with `key` (e.g. `["id": "alice-checking"]`), or nil.
    public func row(forKey key: JSONValue) -> JSONValue? {
        state.withLockedValue { $0.rows[key.keyString]?.row }
    }

    /// Whether the row with `key` shows an optimistic effect that is not yet confirmed.
    public func isPending(key: JSONValue) -> Bool {
        state.withLockedValue { $0.rows[key.keyString]?.pending ?? false }
    }

    /// Whether the feed has caught up with the server on the current connection.
    public var isLive: Bool { state.withLockedValue { $0.live } }

    /// Why the feed ended (`forbidden`, `revoked`, …), nil while it runs.
    public var endReason: (code: String, message: String)? { state.withLockedValue { $0.ended } }

    /// A new sequence of this query's events, starting with `.snapshot(rows)` of the rows now.
    /// At most `limit` events wait for the consumer; past that they are replaced by one
    /// `.resynced(rows)` with the rows at that moment.
    public func events(limit: Int = 1024) -> SynclineEvents<LiveQueryEvent> {
        let queue = EventQueue<LiveQueryEvent>(limit: limit) { [weak self] _ in
            [.resynced(self?.rows ?? [])]
        }
        let (current, finished) = state.withLockedValue { state -> ([JSONValue], Bool) in
            if !state.finished { state.consumers.append(queue) }
            return (state.rows.keys.sorted().map { state.rows[$0]!.row }, state.finished)
        }
        queue.push(.snapshot(current))
        if finished { queue.finish() }
        return SynclineEvents(queue: queue)
    }

    /// Gives up this subscription. When it was the last one for this collection and filter, the
    /// feed stops, its stored rows are forgotten, and every event sequence ends.
    public func unsubscribe() async {
        await onUnsubscribe()
    }

    func finish() {
        let consumers = state.withLockedValue { state -> [EventQueue<LiveQueryEvent>] in
            state.finished = true
            defer { state.consumers = [] }
            return state.consumers
        }
        for consumer in consumers { consumer.finish() }
    }

    /// Applies events the core published (`view`: the whole new view, for a snapshot or reset),
    /// then hands them to every consumer.
    func apply(_ events: [LiveQueryEvent], view: [String: ClientCore.ViewRow]?) {
        let consumers = state.withLockedValue { state -> [EventQueue<LiveQueryEvent>] in
            if let view { state.rows = view }
            for event in events {
                switch event {
                case .snapshot, .reset, .resynced, .cursor:
                    break
                case .changes(let changes):
                    for change in changes {
                        if let row = change.row {
                            state.rows[change.key.keyString] = ClientCore.ViewRow(key: change.key, row: row, pending: change.pending)
                        } else {
                            state.rows[change.key.keyString] = nil
                        }
                    }
                case .live: state.live = true
                case .ended(let code, let message):
                    state.ended = (code, message)
                    state.live = false
                }
            }
            return state.consumers
        }
        for consumer in consumers {
            for event in events { consumer.push(event) }
        }
    }

    func setLive(_ live: Bool) {
        state.withLockedValue { $0.live = live }
    }
}

/// A topic subscription: published messages, in log order, resumed from the stored cursor.
public final class TopicSubscription: Sendable {
    /// The topic.
    public let topic: String
    let key: String
    private let queue: EventQueue<TopicEvent>
    private let onUnsubscribe: @Sendable () async -> Void

    init(topic: String, key: String, limit: Int, onUnsubscribe: @escaping @Sendable () async -> Void) {
        self.topic = topic
        self.key = key
        self.onUnsubscribe = onUnsubscribe
        queue = EventQueue(limit: limit) { waiting in
            // Keep the newest half; say how many were dropped (a `.dropped` already waiting adds up).
            var dropped = 0
            for event in waiting.prefix(waiting.count - waiting.count / 2) {
                if case .dropped(let n) = event { dropped += n } else { dropped += 1 }
            }
            return [.dropped(dropped)] + waiting.suffix(waiting.count / 2)
        }
    }

    /// The subscription's events. One consumer: every call returns the same underlying sequence.
    /// At most the configured bound wait; past it the oldest half is dropped and counted.
    public var events: SynclineEvents<TopicEvent> { SynclineEvents(queue: queue) }

    /// Gives up this subscription; the last one stops the feed and ends its events.
    public func unsubscribe() async {
        await onUnsubscribe()
    }

    func push(_ event: TopicEvent) { queue.push(event) }
    func finish() { queue.finish() }
}
