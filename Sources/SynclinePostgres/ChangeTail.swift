import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO
import ServiceLifecycle
import SynclineCore

/// What the tail reports to the fan-out.
public enum ChangeTailEvent: Sendable {
    /// Committed changes with positions in (`after`, `through`], whole transactions, in order.
    case changes([ChangeRecord], after: Int64, through: Int64)
    /// The log was pruned past the tail's position while it was away: history in
    /// (`after`, `prunedThrough`] is gone, every feed must restart. The tail resumes after it.
    case gap(after: Int64, prunedThrough: Int64)
    /// The LISTEN connection is up (true) or lost (false); readiness follows this.
    case listening(Bool)
}

/// Follows the change log: one dedicated connection LISTENs for wake-ups, and each wake-up (or a
/// slow safety-net poll) reads the new positions in pages that end on transaction boundaries. On
/// connection loss it reconnects with capped exponential backoff and catches up from its last
/// position: LISTEN first, then read, so a wake-up between the two is never missed.
public final class ChangeTail: Service, Sendable {
    public struct Configuration: Sendable {
        public var pageSize: Int = 1000
        public var pollInterval: Duration = .seconds(1)
        public var minimumBackoff: Duration = .milliseconds(100)
        public var maximumBackoff: Duration = .seconds(5)
        public init() {}
    }

    public static let channel = "syncline_wake"

    private let connectionConfiguration: PostgresConnection.Configuration
    private let configuration: Configuration
    private let startAfter: Int64
    private let sink: @Sendable (ChangeTailEvent) async -> Int64
    private let logger: Logger
    /// The position read through, and the connection losses: with the head (the canary's
    /// `syncline_tail_lag_positions`) they tell how far behind the tail is.
    private let positionGauge = Gauge(label: "syncline_tail_position")
    private let reconnectsCounter = Counter(label: "syncline_tail_reconnects_total")
    private let connectedGauge = Gauge(label: "syncline_tail_connected")

    /// - Parameters:
    ///   - startAfter: the position the fan-out has already dispatched through.
    ///   - sink: called on the tail's task, in order. The tail reads on only when it returns, so a
    ///     sink that returns once the batch is delivered makes batches grow with load: whatever
    ///     commits during one delivery goes out as the next batch (fewer frames and syscalls per
    ///     change exactly when the fan-out is busiest). It returns the position it has delivered
    ///     through, which the tail continues from.
    public init(
        connection: PostgresConnection.Configuration, configuration: Configuration = .init(), startAfter: Int64,
        logger: Logger, sink: @escaping @Sendable (ChangeTailEvent) async -> Int64
    ) {
        self.connectionConfiguration = connection
        self.configuration = configuration
        self.startAfter = startAfter
        self.sink = sink
        self.logger = logger
    }

    public func run() async throws {
        let position = NIOLockedValueBox(startAfter)
        var backoff = configuration.minimumBackoff
        var attempt = 0
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            attempt += 1
            do {
                logger.debug("change tail connecting", metadata: ["attempt": "\(attempt)"])
                let connection = try await PostgresConnection.connect(
                    configuration: connectionConfiguration, id: attempt, logger: logger)
                logger.debug("change tail connected", metadata: ["attempt": "\(attempt)"])
                backoff = configuration.minimumBackoff
                defer { Task { try? await connection.close() } }
                try await cancelWhenGracefulShutdown {
                    try await self.follow(connection, position: position)
                }
            } catch {
                if Task.isCancelled || Task.isShuttingDownGracefully { break }
                connectedGauge.record(Int(0))
                reconnectsCounter.increment()
                _ = await sink(.listening(false))
                logger.warning("change tail connection lost; reconnecting", metadata: [
                    "error": "\(String(reflecting: error))", "backoff_ms": "\(backoff.components.seconds * 1000 + backoff.components.attoseconds / 1_000_000_000_000_000)",
                ])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, configuration.maximumBackoff)
            }
        }
        _ = await sink(.listening(false))
    }

    private func follow(_ connection: PostgresConnection, position: NIOLockedValueBox<Int64>) async throws {
        // Closing the connection is what ends every wait below (the notification stream, the close
        // future, a query in flight), so cancellation — graceful shutdown — closes it.
        try await withTaskCancellationHandler {
            try await listenAndRead(connection, position: position)
        } onCancel: {
            let _: EventLoopFuture<Void> = connection.close()
        }
    }

    private func listenAndRead(_ connection: PostgresConnection, position: NIOLockedValueBox<Int64>) async throws {
        let (wakeups, wake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        try await connection.listen(on: Self.channel) { notifications in
            // LISTEN is active: from here on no commit can go unnoticed. Read what came before.
            self.logger.debug("change tail listening")
            self.connectedGauge.record(Int(1))
            _ = await sink(.listening(true))
            wake.yield()
            // Neither the notification stream nor a query caught by the connection's death is
            // guaranteed to end on cancellation, so both run outside the task group, which waits
            // only on things that do end: the close future, the poll timer and a stream that the
            // reader finishes. A reader left behind can deliver nothing stale: the hub accepts a
            // batch only if it starts where the previous one ended.
            let forward = Task {
                do {
                    for try await _ in notifications { wake.yield() }
                } catch {}
            }
            let (ended, end) = AsyncStream<(any Error)?>.makeStream()
            let reader = Task {
                do {
                    var current = position.withLockedValue { $0 }
                    for await _ in wakeups {
                        current = try await self.readAvailable(connection, after: current)
                        position.withLockedValue { [current] in $0 = max($0, current) }
                    }
                    end.yield(nil)
                } catch {
                    end.yield(error)
                }
            }
            defer {
                forward.cancel()
                reader.cancel()
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await connection.closeFuture.get()
                    throw SynclinePostgresError(.unavailable, "LISTEN connection closed")
                }
                group.addTask { [configuration] in
                    while true {
                        try await Task.sleep(for: configuration.pollInterval)
                        wake.yield()
                    }
                }
                group.addTask {
                    for await outcome in ended {
                        throw outcome ?? SynclinePostgresError(.unavailable, "change tail reader stopped")
                    }
                    try Task.checkCancellation()
                }
                do {
                    try await group.next()
                } catch {
                    let _: EventLoopFuture<Void> = connection.close()
                    group.cancelAll()
                    throw error
                }
                let _: EventLoopFuture<Void> = connection.close()
                group.cancelAll()
            }
        }
    }

    /// Reads every visible position after `after`; returns the new position.
    private func readAvailable(_ connection: PostgresConnection, after: Int64) async throws -> Int64 {
        var position = after
        while true {
            let page = try await ChangeLogReader.readTransactions(
                connection, after: position, limit: configuration.pageSize, logger: logger)
            if page.prunedThrough > position {
                logger.error("change log pruned past the tail; restarting every feed", metadata: [
                    "position": "\(position)", "pruned_through": "\(page.prunedThrough)",
                ])
                position = await sink(.gap(after: position, prunedThrough: page.prunedThrough))
                continue
            }
            guard let last = page.records.last else { return position }
            logger.trace("change tail delivering", metadata: ["through": "\(last.position)"])
            let delivered = await sink(.changes(page.records, after: position, through: last.position))
            logger.trace("change tail delivered", metadata: ["through": "\(delivered)"])
            position = delivered
            positionGauge.record(delivered)
            if page.records.count < configuration.pageSize { return position }
        }
    }
}
