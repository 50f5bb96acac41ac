import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO
import ServiceLifecycle
import SynclineCore
import SynclineProtocol

/// Decides mutations with group commit (docs/design.md, invariant 6).
///
/// Each lane owns one Postgres connection and runs one batch at a time: it takes whatever queued
/// while the previous batch committed (no timer) — up to `maximumBatchSize` mutations, below
/// Postgres's 64-subtransaction cache — and applies them with one `syncline.apply_batch` call: one
/// transaction, one round trip, one subtransaction per mutation. A client's mutations always go to
/// the same lane, so one node applies them in the order they arrived; across connections and nodes
/// the client's row lock in Postgres orders them.
///
/// Failures: a batch past `batchTimeout`, or one that fails as a whole on a constraint checked at
/// commit or on lock trouble, is re-run one mutation at a time (each with `mutationTimeout`), so a
/// slow or poisonous member is rejected alone (`timeout`, `conflict`/`invalid`) and the others
/// commit. A lost connection answers every member `error unavailable`: its outcome is unknown and
/// the client resends (a committed one then gets its stored outcome).
public final class MutationExecutor: Service, Sendable {
    public struct Configuration: Sendable {
        /// Mutations per transaction (1 turns group commit off); at most 63.
        public var maximumBatchSize = 50
        /// Bytes of arguments per transaction (a batch closes early past it).
        public var maximumBatchBytes = 4 << 20
        /// How long a batch that is not full waits for more mutations before it runs. Zero (the
        /// default) runs at once with whatever queued during the previous commit.
        public var batchWait: Duration = .zero
        /// Lanes (connections) running batches concurrently.
        public var lanes = 2
        /// Time limit of one mutation when run alone.
        public var mutationTimeout: Duration = .seconds(2)
        /// Time limit of one batch; past it the batch is re-run one mutation at a time.
        public var batchTimeout: Duration = .seconds(5)
        /// Mutations queued on this node, all lanes together; more are answered `unavailable`.
        public var maximumQueued = 10_000
        /// The role mutators run as (`SET LOCAL ROLE`), so row-level security applies; nil keeps
        /// Syncline's own login.
        public var role: String? = "syncline_writer"
        public var minimumBackoff: Duration = .milliseconds(100)
        public var maximumBackoff: Duration = .seconds(5)

        public init() {}
    }

    /// One mutation to decide. `reply` is called exactly once, from the executor's task.
    public struct Request: Sendable {
        public var clientID: String
        public var sub: String
        public var mid: Int64
        public var name: String
        /// The `args` object as JSON text.
        public var args: String
        /// The connection's JWT claims as JSON text (`request.jwt.claims`).
        public var claims: String
        public var reply: @Sendable (MutationOutcome) -> Void

        public init(clientID: String, sub: String, mid: Int64, name: String, args: String, claims: String,
                    reply: @escaping @Sendable (MutationOutcome) -> Void) {
            self.clientID = clientID
            self.sub = sub
            self.mid = mid
            self.name = name
            self.args = args
            self.claims = claims
            self.reply = reply
        }
    }

    private struct LaneState {
        var queue: [Request] = []
        var head = 0
        var waiter: CheckedContinuation<Void, Never>?
        /// Set while the lane's connection is down after a failure (not while it first connects):
        /// mutations are refused at once instead of waiting for a database that is not there.
        var refusing = false
        var stopped = false
        var pending: Int { queue.count - head }
    }

    private final class Lane: Sendable {
        let index: Int
        let state = NIOLockedValueBox(LaneState())
        init(index: Int) { self.index = index }
    }

    private let connectionConfiguration: PostgresConnection.Configuration
    private let configuration: Configuration
    private let logger: Logger
    private let lanes: [Lane]
    private let queued = NIOLockedValueBox(0)
    private let batchSizes = Recorder(label: "syncline_mutation_batch_size")
    private let decidedCounter = Counter(label: "syncline_mutations_total")
    private let batchDuration = Timer(label: "syncline_mutation_batch_seconds")

    public init(connection: PostgresConnection.Configuration, configuration: Configuration = .init(), logger: Logger) {
        var configuration = configuration
        configuration.maximumBatchSize = min(max(configuration.maximumBatchSize, 1), 63)
        configuration.lanes = max(configuration.lanes, 1)
        configuration.batchTimeout = max(configuration.batchTimeout, configuration.mutationTimeout)
        self.connectionConfiguration = connection
        self.configuration = configuration
        self.logger = logger
        self.lanes = (0..<configuration.lanes).map(Lane.init)
    }

    /// Queues a mutation. Returns false — and does not call `reply` — when this node's queue is
    /// full or its lane has no database connection: the caller answers `error unavailable`.
    public func submit(_ request: Request) -> Bool {
        let admitted = queued.withLockedValue { n -> Bool in
            guard n < configuration.maximumQueued else { return false }
            n += 1
            return true
        }
        guard admitted else { return false }
        let lane = lanes[Self.laneIndex(of: request.clientID, lanes: lanes.count)]
        let waiter = lane.state.withLockedValue { s -> CheckedContinuation<Void, Never>?? in
            guard !s.refusing, !s.stopped else { return .none }
            s.queue.append(request)
            defer { s.waiter = nil }
            return .some(s.waiter)
        }
        guard let waiter else {
            queued.withLockedValue { $0 -= 1 }
            return false
        }
        waiter?.resume()
        return true
    }

    /// FNV-1a of the client id: stable across processes, so a client's lane does not depend on the
    /// hash seed.
    static func laneIndex(of clientID: String, lanes: Int) -> Int {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in clientID.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        return Int(hash % UInt64(lanes))
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                for lane in lanes {
                    group.addTask { await self.runLane(lane) }
                }
            }
        } onGracefulShutdown: {
            for lane in self.lanes { self.stop(lane) }
        }
    }

    private func stop(_ lane: Lane) {
        let (waiter, dropped) = lane.state.withLockedValue { s -> (CheckedContinuation<Void, Never>?, [Request]) in
            s.stopped = true
            let dropped = Array(s.queue[s.head...])
            s.queue = []
            s.head = 0
            defer { s.waiter = nil }
            return (s.waiter, dropped)
        }
        answer(dropped, .error(.unavailable, message: "the server is shutting down; send the mutation again", retryAfterMS: 1000))
        waiter?.resume()
    }

    private func answer(_ requests: some Collection<Request>, _ outcome: MutationOutcome) {
        guard !requests.isEmpty else { return }
        queued.withLockedValue { $0 -= requests.count }
        for request in requests { request.reply(outcome) }
    }

    private func isStopped(_ lane: Lane) -> Bool { lane.state.withLockedValue { $0.stopped } }

    // MARK: Lanes

    private func runLane(_ lane: Lane) async {
        var backoff = configuration.minimumBackoff
        var attempt = 0
        while !isStopped(lane) {
            attempt += 1
            do {
                let connection = try await PostgresConnection.connect(
                    configuration: connectionConfiguration, id: lane.index * 1_000_000 + attempt, logger: logger)
                do {
                    try await setTimeout(configuration.batchTimeout, on: connection)
                    backoff = configuration.minimumBackoff
                    lane.state.withLockedValue { $0.refusing = false }
                    logger.debug("mutation lane connected", metadata: ["lane": "\(lane.index)"])
                    try await serve(lane, on: connection)
                } catch {
                    // Wait for the close: a connection released while its channel is still open
                    // trips PostgresNIO's assertion.
                    try? await connection.close()
                    throw error
                }
                try? await connection.close()
                return
            } catch {
                // Until the lane reconnects, new mutations are refused at once (submit returns false)
                // rather than waiting on a database that is not there.
                let dropped = lane.state.withLockedValue { s -> [Request] in
                    s.refusing = true
                    let dropped = Array(s.queue[s.head...])
                    s.queue = []
                    s.head = 0
                    return dropped
                }
                answer(dropped, .error(.unavailable, message: "the database is unreachable; send the mutation again",
                                       retryAfterMS: Int(backoff.components.seconds * 1000 + backoff.components.attoseconds / 1_000_000_000_000_000)))
                guard !isStopped(lane) else { return }
                logger.warning("mutation lane lost its connection; reconnecting", metadata: [
                    "lane": "\(lane.index)", "error": "\(String(reflecting: error))",
                ])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, configuration.maximumBackoff)
            }
        }
    }

    /// Waits for mutations and runs them batch after batch until the lane stops (returns) or the
    /// connection is lost (throws).
    private func serve(_ lane: Lane, on connection: PostgresConnection) async throws {
        while true {
            let batch = await nextBatch(lane)
            guard !batch.isEmpty else { return }
            try await execute(batch, on: connection)
        }
    }

    private func nextBatch(_ lane: Lane) async -> [Request] {
        var lingered = configuration.batchWait == .zero
        while true {
            // Optionally let a batch that is not yet full fill up a little longer (off by default:
            // what queues during the previous commit is the natural batch).
            if !lingered, lane.state.withLockedValue({ $0.pending > 0 && $0.pending < configuration.maximumBatchSize }) {
                lingered = true
                try? await Task.sleep(for: configuration.batchWait)
            }
            let taken = lane.state.withLockedValue { s -> [Request]? in
                if s.stopped { return [] }
                guard s.pending > 0 else { return nil }
                var bytes = 0
                var end = s.head
                while end < s.queue.count && end - s.head < configuration.maximumBatchSize {
                    bytes += s.queue[end].args.utf8.count
                    if end > s.head && bytes > configuration.maximumBatchBytes { break }
                    end += 1
                }
                let batch = Array(s.queue[s.head..<end])
                s.head = end
                if s.head == s.queue.count {
                    s.queue.removeAll(keepingCapacity: true)
                    s.head = 0
                } else if s.head > 4096 {
                    s.queue.removeFirst(s.head)
                    s.head = 0
                }
                return batch
            }
            if let taken { return taken }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = lane.state.withLockedValue { s -> Bool in
                    if s.stopped || s.pending > 0 { return true }
                    s.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        }
    }

    // MARK: Batches

    private struct BatchFailure: Error {
        var sqlState: String?
        var underlying: any Error
    }

    private func execute(_ batch: [Request], on connection: PostgresConnection) async throws {
        batchSizes.record(batch.count)
        let started = ContinuousClock.now
        defer { batchDuration.recordNanoseconds((ContinuousClock.now - started).nanosecondsClamped) }
        do {
            let outcomes = try await apply(batch, decided: [:], on: connection, timeout: configuration.batchTimeout)
            deliver(batch, outcomes)
        } catch let failure as BatchFailure where Self.isRetryableAlone(failure.sqlState) && batch.count > 1 {
            logger.info("mutation batch failed as a whole; re-running its members one by one", metadata: [
                "size": "\(batch.count)", "sqlstate": "\(failure.sqlState ?? "")",
            ])
            try await runOneByOne(batch, on: connection)
        } catch let failure as BatchFailure where Self.isRetryableAlone(failure.sqlState) {
            // Alone, past the batch limit (≥ its own): decided now.
            try await decideAlone(batch[0], after: failure, on: connection)
        } catch let failure as BatchFailure {
            logger.error("mutation batch failed", metadata: [
                "size": "\(batch.count)", "error": "\(String(reflecting: failure.underlying))",
            ])
            answer(batch, .error(.unavailable, message: "the mutation could not be applied right now; send it again", retryAfterMS: 500))
        } catch {
            // The connection is gone (or stopped answering): nobody knows whether the batch
            // committed. Every member is told to resend; a committed one gets its stored outcome.
            answer(batch, .error(.unavailable, message: "the outcome is unknown (database connection lost); send the mutation again", retryAfterMS: 500))
            throw error
        }
    }

    /// Timeouts, constraints checked at commit, serialization failures and deadlocks: a member
    /// alone may pass, or be found to be the culprit.
    private static func isRetryableAlone(_ sqlState: String?) -> Bool {
        guard let sqlState else { return false }
        return sqlState == "57014" || sqlState.hasPrefix("23") || sqlState == "40001" || sqlState == "40P01" || sqlState == "55P03"
    }

    private func runOneByOne(_ batch: [Request], on connection: PostgresConnection) async throws {
        try await setTimeout(configuration.mutationTimeout, on: connection)
        for (i, request) in batch.enumerated() {
            do {
                do {
                    let outcomes = try await apply([request], decided: [:], on: connection, timeout: configuration.mutationTimeout)
                    deliver([request], outcomes)
                } catch let failure as BatchFailure where Self.isRetryableAlone(failure.sqlState) {
                    try await decideAlone(request, after: failure, on: connection)
                } catch let failure as BatchFailure {
                    logger.error("mutation failed", metadata: ["error": "\(String(reflecting: failure.underlying))"])
                    answer([request], .error(.unavailable, message: "the mutation could not be applied right now; send it again", retryAfterMS: 500))
                }
            } catch {
                // decideAlone answered `request` already when it threw.
                answer(batch[(i + 1)...], .error(.unavailable, message: "the database connection was lost; send the mutation again", retryAfterMS: 500))
                throw error
            }
        }
        try await setTimeout(configuration.batchTimeout, on: connection)
    }

    /// A mutation that failed alone: a timeout or a constraint is its own doing and is decided as a
    /// reject (stored, `mid` consumed); lock trouble is not, and is answered `unavailable`.
    /// Answers `request` in every case; throws (after answering) when the connection is lost.
    private func decideAlone(_ request: Request, after failure: BatchFailure, on connection: PostgresConnection) async throws {
        let state = failure.sqlState ?? ""
        let decision: (code: String, message: String)
        if state == "57014" {
            let ms = configuration.mutationTimeout.components.seconds * 1000 + configuration.mutationTimeout.components.attoseconds / 1_000_000_000_000_000
            decision = ("timeout", "the mutation ran longer than its time limit of \(ms) ms")
        } else if state == "23505" {
            decision = ("conflict", "a row with this key already exists")
        } else if state.hasPrefix("23") {
            decision = ("invalid", "the mutation violates a constraint of the data")
        } else {
            answer([request], .error(.unavailable, message: "the mutation met a concurrent one; send it again", retryAfterMS: 50))
            return
        }
        logger.info("mutation decided as a reject after failing alone", metadata: [
            "client_id": "\(request.clientID)", "mid": "\(request.mid)", "code": "\(decision.code)",
        ])
        do {
            let outcomes = try await apply([request], decided: [0: decision], on: connection, timeout: configuration.mutationTimeout)
            deliver([request], outcomes)
        } catch let failure as BatchFailure {
            logger.error("recording a rejected mutation failed", metadata: ["error": "\(String(reflecting: failure.underlying))"])
            answer([request], .error(.unavailable, message: "the mutation could not be applied right now; send it again", retryAfterMS: 500))
        } catch {
            answer([request], .error(.unavailable, message: "the outcome is unknown (database connection lost); send the mutation again", retryAfterMS: 500))
            throw error
        }
    }

    private func setTimeout(_ timeout: Duration, on connection: PostgresConnection) async throws {
        let ms = max(1, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        try await connection.query(PostgresQuery(unsafeSQL: "SET statement_timeout = \(ms)"), logger: logger)
    }

    /// One `apply_batch` round trip. Throws `BatchFailure` for an error Postgres reported (the
    /// transaction rolled back, the connection is fine); anything else means the connection is lost.
    private func apply(_ batch: [Request], decided: [Int: (code: String, message: String)], on connection: PostgresConnection,
                       timeout: Duration) async throws -> [MutationOutcome] {
        var json = "{\"role\":"
        if let role = configuration.role { json += JSONValue.quoted(role) } else { json += "null" }
        json += ",\"items\":["
        for (i, request) in batch.enumerated() {
            if i > 0 { json += "," }
            json += "{\"c\":\(JSONValue.quoted(request.clientID)),\"s\":\(JSONValue.quoted(request.sub)),\"m\":\(request.mid),"
            json += "\"n\":\(JSONValue.quoted(request.name)),\"a\":\(request.args),\"j\":\(JSONValue.quoted(request.claims))"
            if let d = decided[i] {
                json += ",\"d\":{\"code\":\(JSONValue.quoted(d.code)),\"message\":\(JSONValue.quoted(d.message))}"
            }
            json += "}"
        }
        json += "]}"
        let text: String
        do {
            text = try await Self.queryWithDeadline(
                "SELECT syncline.apply_batch(\(json)::jsonb)::text", on: connection, deadline: timeout + .seconds(5), logger: logger)
        } catch let error as PSQLError where error.serverInfo != nil && !(error.sqlState ?? "").hasPrefix("57P") {
            // Postgres answered and rolled back; the connection is fine. (57P01–57P05 — the
            // backend is being shut down or terminated — mean the connection is gone.)
            throw BatchFailure(sqlState: error.sqlState, underlying: error)
        }
        return try parse(text, count: batch.count)
    }

    /// Runs a one-value query, giving up (and closing the connection) when the deadline passes or
    /// the connection closes: a query caught by a dying connection is not guaranteed to return.
    private static func queryWithDeadline(_ query: PostgresQuery, on connection: PostgresConnection, deadline: Duration,
                                          logger: Logger) async throws -> String {
        let settled = NIOLockedValueBox(false)
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<String, any Error>) in
            @Sendable func settle(_ result: Result<String, any Error>) {
                guard settled.withLockedValue({ s in defer { s = true }; return !s }) else { return }
                continuation.resume(with: result)
            }
            let nanos = deadline.components.seconds * 1_000_000_000 + deadline.components.attoseconds / 1_000_000_000
            let timer = connection.eventLoop.scheduleTask(in: .nanoseconds(nanos)) {
                settle(.failure(MutationExecutorError.deadlineExceeded))
                let _: EventLoopFuture<Void> = connection.close()
            }
            connection.closeFuture.whenComplete { _ in settle(.failure(MutationExecutorError.connectionClosed)) }
            Task {
                do {
                    let rows = try await connection.query(query, logger: logger)
                    var value: String?
                    for try await row in rows.decode(String.self) { value = row }
                    timer.cancel()
                    if let value { settle(.success(value)) } else { settle(.failure(MutationExecutorError.emptyResult)) }
                } catch {
                    timer.cancel()
                    settle(.failure(error))
                }
            }
        }
    }

    private func parse(_ text: String, count: Int) throws -> [MutationOutcome] {
        let value: JSONValue
        do { value = try JSONParser.parse(text) } catch { throw MutationExecutorError.malformedResult }
        guard case .array(let items)? = value["r"], items.count == count,
              case .number(let posText)? = value["pos"], let batchPosition = Int64(posText)
        else { throw MutationExecutorError.malformedResult }
        return items.map { item in
            let duplicate = item["dup"] == .bool(true)
            switch item["k"]?.stringValue {
            case "ack":
                var position = batchPosition
                if case .number(let p)? = item["pos"], let own = Int64(p) { position = own }
                return .ack(position: position, result: item["result"]?.jsonText ?? "null", duplicate: duplicate)
            case "reject":
                if let log = item["log"]?.stringValue {
                    logger.warning("mutator failed", metadata: ["postgres": "\(log)"])
                }
                return .reject(code: item["code"]?.stringValue ?? "internal", message: item["message"]?.stringValue ?? "rejected",
                               details: item["details"]?.jsonText, duplicate: duplicate)
            default:
                return .error(ErrorCode(rawValue: item["code"]?.stringValue ?? "internal"),
                              message: item["message"]?.stringValue ?? "not decided", retryAfterMS: nil)
            }
        }
    }

    private func deliver(_ batch: [Request], _ outcomes: [MutationOutcome]) {
        queued.withLockedValue { $0 -= batch.count }
        decidedCounter.increment(by: batch.count)
        for (request, outcome) in zip(batch, outcomes) { request.reply(outcome) }
    }
}

/// Why a batch's round trip ended without a Postgres answer.
public enum MutationExecutorError: Error, Sendable {
    case deadlineExceeded
    case connectionClosed
    case emptyResult
    case malformedResult
}

extension Duration {
    fileprivate var nanosecondsClamped: Int64 {
        let (s, a) = components
        return s > 9_000_000_000 ? .max : s * 1_000_000_000 + a / 1_000_000_000
    }
}
