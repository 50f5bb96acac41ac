import NIOConcurrencyHelpers
@testable import SynclinePostgres
@testable import SynclineServer
import SynclineCore
import SynclineProtocol

/// `FeedReading` over rows and change records held in memory: what `SyncConnection` reads from
/// PostgreSQL, without PostgreSQL. A snapshot can be held after its `subscribed` until the test
/// releases it (`holdNextSnapshot`), to dispatch changes while it runs.
final class InMemoryFeed: FeedReading {
    struct State {
        var head: Int64
        var prunedThrough: Int64 = 0
        var collections: Set<String> = ["transactions"]
        /// Snapshot rows (JSON object texts) by feed.
        var rows: [FeedKey: [String]] = [:]
        /// Feeds no claims may read.
        var forbidden: Set<FeedKey> = []
        /// The change log, for catch-up pages.
        var log: [ChangeRecord] = []
        /// Catch-up pages read so far.
        var pagesRead = 0
        var hold: SnapshotHold?
    }

    let state: NIOLockedValueBox<State>

    init(head: Int64) {
        state = NIOLockedValueBox(State(head: head))
    }

    /// The next snapshot stops after `onAuthorized` (its `subscribed` is out) until `release()`.
    func holdNextSnapshot() -> SnapshotHold {
        let hold = SnapshotHold()
        state.withLockedValue { $0.hold = hold }
        return hold
    }

    func feedKey(collection: String, filter: [String: JSONValue]) async throws -> FeedKey {
        guard state.withLockedValue({ $0.collections.contains(collection) }) else {
            throw SynclinePostgresError(.unknownCollection, "no collection named '\(collection)'")
        }
        return .collection(collection, filter: filter)
    }

    func head() async throws -> (head: Int64, prunedThrough: Int64) {
        state.withLockedValue { ($0.head, $0.prunedThrough) }
    }

    func authorize(_ key: FeedKey, claims: String) async throws -> Bool {
        state.withLockedValue { !$0.forbidden.contains(key) }
    }

    func sharedSnapshot(
        _ key: FeedKey, claims: [String], chunkRows: Int, chunkBytes: Int,
        onAuthorized: @Sendable ([Bool], Int64) async throws -> Bool,
        onChunk: @Sendable ([String], Bool, Int64) async throws -> Bool
    ) async throws -> Int64 {
        let (position, rows, forbidden, hold) = state.withLockedValue { s in
            defer { s.hold = nil }
            return (s.head, s.rows[key] ?? [], s.forbidden.contains(key), s.hold)
        }
        guard try await onAuthorized(claims.map { _ in !forbidden }, position), !forbidden else { return position }
        if let hold {
            hold.started(at: position)
            await hold.waitForRelease()
        }
        var start = 0
        repeat {
            let end = min(rows.count, start + max(chunkRows, 1))
            guard try await onChunk(Array(rows[start..<end]), end == rows.count, position) else { return position }
            start = end
        } while start < rows.count
        return position
    }

    func changeLogPage(after: Int64, through: Int64, limit: Int, scope: ChangeLogReader.Scope) async throws -> ChangeLogReader.Page {
        state.withLockedValue { s in
            s.pagesRead += 1
            let records = s.log.filter { record in
                guard record.position > after, record.position <= through else { return false }
                switch scope {
                case .all: return true
                case .collection(let name): return record.collection == name
                case .topic(let topic): return record.topic == topic
                }
            }
            // Like the real reader, a full page goes on to the end of its last transaction.
            var page = Array(records.prefix(limit))
            if page.count == limit, let last = page.last {
                page += records.dropFirst(limit).prefix { $0.transaction == last.transaction }
            }
            return ChangeLogReader.Page(prunedThrough: s.prunedThrough, records: page)
        }
    }
}

/// One held snapshot: `waitUntilStarted` returns its position once its `subscribed` is written;
/// the rows follow after `release`.
final class SnapshotHold: Sendable {
    private let startedStream: AsyncStream<Int64>
    private let startedContinuation: AsyncStream<Int64>.Continuation
    private let releaseStream: AsyncStream<Void>
    private let releaseContinuation: AsyncStream<Void>.Continuation

    init() {
        (startedStream, startedContinuation) = AsyncStream.makeStream(of: Int64.self)
        (releaseStream, releaseContinuation) = AsyncStream.makeStream(of: Void.self)
    }

    func started(at position: Int64) {
        startedContinuation.yield(position)
        startedContinuation.finish()
    }

    func waitUntilStarted() async throws -> Int64 {
        try await withDeadline("the held snapshot never started") {
            for await position in self.startedStream { return position }
            return nil
        }
    }

    func release() { releaseContinuation.finish() }

    func waitForRelease() async {
        for await _ in releaseStream {}
    }
}

/// `ClientRegistering` as a dictionary: client id → owner and last decided `mid`.
final class InMemoryClientRegistry: ClientRegistering {
    let clients = NIOLockedValueBox<[String: (owner: String, lastMID: Int64)]>([:])

    func register(clientID: String, sub: String) async throws -> (owner: String, lastMID: Int64) {
        clients.withLockedValue { clients in
            if let known = clients[clientID] { return known }
            clients[clientID] = (sub, 0)
            return (sub, 0)
        }
    }
}

/// `MutationSubmitting` that decides nothing by itself: the test takes each submitted request
/// (`next`) and answers it with `request.reply(...)` when it chooses. With `accepting` false it
/// refuses like an executor whose queue is full.
final class HeldMutations: MutationSubmitting {
    let accepting = NIOLockedValueBox(true)
    private let stream: AsyncStream<MutationExecutor.Request>
    private let continuation: AsyncStream<MutationExecutor.Request>.Continuation

    init() {
        (stream, continuation) = AsyncStream.makeStream(of: MutationExecutor.Request.self)
    }

    func submit(_ request: MutationExecutor.Request) -> Bool {
        guard accepting.withLockedValue({ $0 }) else { return false }
        continuation.yield(request)
        return true
    }

    /// The next mutation the connection submitted.
    func next() async throws -> MutationExecutor.Request {
        try await withDeadline("no mutation was submitted") {
            for await request in self.stream { return request }
            return nil
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs `body`, failing with `message` when it returns nil or takes longer than `seconds`.
func withDeadline<T: Sendable>(_ message: String, seconds: Double = 10, _ body: @escaping @Sendable () async throws -> T?) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        let first = try await group.next()!
        group.cancelAll()
        guard let first else { throw TestFailure(message) }
        return first
    }
}
