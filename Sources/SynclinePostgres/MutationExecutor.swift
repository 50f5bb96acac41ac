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
/// commit. A lost connection (a terminated backend, a restart) is noticed at once even while the
/// lane is idle (its close future wakes the lane), and the lane reconnects at once; a batch caught
/// in flight is re-run on the new connection (`connectionLossRetries`), where a member that did
/// commit gets its stored outcome (`syncline.outcomes`), so each is decided exactly once. Only when
/// the database stays unreachable are mutations answered `error unavailable`.
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
        /// Backoff between failed connection attempts of a lane (doubling up to the maximum). A lane
        /// whose connection was lost while serving reconnects at once, first.
        public var minimumBackoff: Duration = .milliseconds(100)
        public var maximumBackoff: Duration = .seconds(5)
        /// How many times a batch caught by a lost connection is re-run on the lane's next
        /// connection before its members are answered `unavailable`. Re-running is safe: the
        /// outcome table answers a member that did commit with its stored outcome.
        public var connectionLossRetries = 2

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
        /// Times this request's batch was caught by a lost connection and re-queued.
        var lossRetries = 0

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

    let connectionConfiguration: PostgresConnection.Configuration
    let configuration: Configuration
    let logger: Logger
    let lanes: [Lane]
    let queued = NIOLockedValueBox(0)
    let batchSizes = Recorder(label: "syncline_mutation_batch_size")
    let decidedCounter = Counter(label: "syncline_mutations_total")
    let batchDuration = Timer(label: "syncline_mutation_batch_seconds")
    /// Lane connections re-established after one was lost (a terminated backend, a restart).
    let reconnects = Counter(label: "syncline_mutation_lane_reconnects_total")
    /// Milliseconds from noticing a lane's lost connection to serving on a new one.
    let reconnectDuration = Timer(label: "syncline_mutation_lane_reconnect_seconds")

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

    /// Mutations taken and not yet answered, all lanes together: queued or in a batch.
    public var pending: Int { queued.withLockedValue { $0 } }

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

    func answer(_ requests: some Collection<Request>, _ outcome: MutationOutcome) {
        guard !requests.isEmpty else { return }
        queued.withLockedValue { $0 -= requests.count }
        for request in requests { request.reply(outcome) }
    }

    func isStopped(_ lane: Lane) -> Bool { lane.state.withLockedValue { $0.stopped } }

}

/// Why a batch's round trip ended without a Postgres answer.
public enum MutationExecutorError: Error, Sendable {
    case deadlineExceeded
    case connectionClosed
    case emptyResult
    case malformedResult
}

extension Duration {
    var nanosecondsClamped: Int64 {
        let (s, a) = components
        return s > 9_000_000_000 ? .max : s * 1_000_000_000 + a / 1_000_000_000
    }
}
