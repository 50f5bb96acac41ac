import Foundation
import Logging
import NIOConcurrencyHelpers
import SynclineProtocol

/// What the shell's loop consumes: core events and API commands, one at a time.
enum ClientInput: Sendable {
    case event(ClientCore.Event)
    case subscribeQuery(String, [String: JSONValue], Bool, CheckedContinuation<LiveQuery, any Error>)
    case subscribeTopic(String, Int, CheckedContinuation<TopicSubscription, any Error>)
    case unsubscribe(String, CheckedContinuation<Void, Never>)
    case enqueue(String, JSONValue, MutationPromise, CheckedContinuation<Int64, any Error>)
    case register(String, MutatorEffect)
    case close(CheckedContinuation<Void, Never>)
}

/// A Syncline client: live queries kept current over `/v1/sync`, and mutations queued durably and
/// decided exactly once, across reconnects and process restarts.
///
/// ```swift
/// let store = try await SQLiteClientStore(path: "app.sqlite")
/// let client = SynclineClient(url: "ws://127.0.0.1:8080/v1/sync", tokenProvider: { try await fetchToken() }, store: store)
/// let accounts = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
/// for await event in accounts.events() { print(accounts.rows) }
/// ```
///
/// All methods may be called from any task. The client starts connecting at once and keeps
/// reconnecting (full-jitter backoff) until ``close()``.
public final class SynclineClient: Sendable {
    /// Tuning; the defaults suit apps.
    public struct Configuration: Sendable {
        /// First reconnect delay ceiling (full jitter: each wait is uniform in [0, min(cap, base·2ⁿ)]).
        public var backoffBase: Duration = .milliseconds(250)
        /// Largest reconnect delay ceiling.
        public var backoffCap: Duration = .seconds(10)
        /// Time allowed for socket, `hello` and `welcome`.
        public var connectTimeout: Duration = .seconds(10)
        /// Events waiting per live query consumer before they collapse into one `.resynced(rows)`.
        public var eventLimit = 1024
        /// Key columns per collection, when not `["id"]` (they are also learned from changes).
        public var keyColumns: [String: [String]] = [:]
        /// Largest message accepted from the server.
        public var maxMessageBytes = 64 << 20
        /// Where the client logs.
        public var logger = Logger(label: "syncline-client")
        /// Sees the wire traffic and the saved cursors (``ClientObservation``); for test harnesses
        /// that record a client's history. Nil (the default) costs nothing.
        public var observer: ClientObserver?

        /// The defaults.
        public init() {}
    }

    private let inbox = InputQueue<ClientInput>()
    private let statusBox: NIOLockedValueBox<ClientStatus>
    private let statusQueues = NIOLockedValueBox<[EventQueue<ClientStatus>]>([])
    private let outcomeQueue: EventQueue<MutationOutcome>
    private let errorQueue: EventQueue<SynclineClientError>
    private let loop: NIOLockedValueBox<Task<Void, Never>?> = NIOLockedValueBox(nil)

    /// Starts a client: loads `store`, then connects to `url` (`ws://` or `wss://`, path `/v1/sync`).
    /// `tokenProvider` is called at start, before the token's `exp` (the new one is sent in-band with
    /// `auth`) and after the server closes with 4001.
    public init(url: String, tokenProvider: @escaping @Sendable () async throws -> String, store: any ClientStore,
                configuration: Configuration = Configuration()) {
        statusBox = NIOLockedValueBox(ClientStatus(state: .connecting, pending: 0))
        outcomeQueue = EventQueue(limit: 10_000) { Array($0.suffix(10_000)) }
        errorQueue = EventQueue(limit: 100) { Array($0.suffix(100)) }
        let engine = ClientEngine(url: url, tokenProvider: tokenProvider, store: store, configuration: configuration,
                                  inbox: inbox, statusBox: statusBox, statusQueues: statusQueues,
                                  outcomes: outcomeQueue, errors: errorQueue)
        loop.withLockedValue { $0 = Task { await engine.run() } }
    }

    /// The current status.
    public var status: ClientStatus { statusBox.withLockedValue { $0 } }

    /// Status changes, starting with the current status. Bounded: a consumer that falls behind
    /// skips to the newest status.
    public func statusUpdates() -> SynclineEvents<ClientStatus> {
        let queue = EventQueue<ClientStatus>(limit: 64) { Array($0.suffix(1)) }
        statusQueues.withLockedValue { $0.append(queue) }
        queue.push(status)
        return SynclineEvents(queue: queue)
    }

    /// Outcomes of mutations enqueued by earlier processes (restored from the store), as they are
    /// decided. One consumer; at most 10,000 wait.
    public var outcomes: SynclineEvents<MutationOutcome> { SynclineEvents(queue: outcomeQueue) }

    /// Problems worth reporting (see ``SynclineClientError``); fatal ones also stop the client.
    public var errors: SynclineEvents<SynclineClientError> { SynclineEvents(queue: errorQueue) }

    /// Registers the optimistic effect of mutator `name`: it runs over the confirmed rows for every
    /// queued mutation of that name (also those restored after a restart) until it is decided.
    /// Register effects before subscribing or enqueueing so restored mutations show at once.
    public func register(mutator name: String, effect: @escaping MutatorEffect) {
        inbox.push(.register(name, effect))
    }

    /// A live query of `collection` rows whose columns equal `filter` (only the collection's
    /// filterable columns). It shows the stored rows at once, and resumes from the stored cursor.
    /// `conflate`: while the connection is behind, the server may merge the feed's pending changes
    /// by key (protocol §3.8); such a query is a feed of its own. Once it returns, ``status``
    /// counts the new feed: `resyncing` on a ready connection until the feed has caught up.
    public func subscribe(collection: String, where filter: [String: JSONValue] = [:], conflate: Bool = false) async throws -> LiveQuery {
        try await withCheckedThrowingContinuation { inbox.push(.subscribeQuery(collection, filter, conflate, $0)) }
    }

    /// A topic's messages, resumed from the stored cursor.
    public func subscribe(topic: String, limit: Int = 1024) async throws -> TopicSubscription {
        try await withCheckedThrowingContinuation { inbox.push(.subscribeTopic(topic, limit, $0)) }
    }

    /// Queues mutation `name` with `args` (an object). Returns once it is durably stored; it is then
    /// sent (now, or when the connection is back) until the server decides it, exactly once.
    public func enqueue(_ name: String, args: JSONValue) async throws -> PendingMutation {
        guard case .object = args else { throw MutationRejected(code: "bad_request", message: "args must be a JSON object") }
        let promise = MutationPromise()
        let mid = try await withCheckedThrowingContinuation { inbox.push(.enqueue(name, args, promise, $0)) }
        return PendingMutation(mid: mid, name: name, args: args, promise: promise)
    }

    /// Closes the connection and stops. What is stored stays for the next start; every event
    /// sequence ends.
    public func close() async {
        await withCheckedContinuation { inbox.push(.close($0)) }
        let task = loop.withLockedValue { $0 }
        await task?.value
    }
}

