import Logging
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO

extension MutationExecutor {
    struct LaneState {
        var queue: [Request] = []
        var head = 0
        var waiter: CheckedContinuation<Void, Never>?
        /// Set while the lane's connection is down after a failed attempt to connect (not while it
        /// first connects, nor during the immediate reconnect after a loss): mutations are refused at
        /// once instead of waiting for a database that is not there.
        var refusing = false
        var stopped = false
        /// Set by the serving connection's close future: the lane stops waiting and reconnects.
        var connectionLost = false
        var pending: Int { queue.count - head }

        /// Puts a batch caught by a lost connection back at the head of the queue, in order.
        mutating func requeue(_ batch: [Request]) {
            queue.replaceSubrange(queue.startIndex..<head, with: [])
            head = 0
            queue.insert(contentsOf: batch, at: 0)
        }
    }

    /// One connection's worth of batches, run one at a time.
    final class Lane: Sendable {
        let index: Int
        let state = NIOLockedValueBox(LaneState())
        init(index: Int) { self.index = index }
    }

    /// Thrown out of `serve` when the lane's connection closed while it was idle.
    struct IdleConnectionLost: Error {}

    func runLane(_ lane: Lane) async {
        var backoff = configuration.minimumBackoff
        var attempt = 0
        // After a lost connection the first attempt comes at once and keeps the queue, since a
        // terminated backend usually means a database that is still there; `lostAt` times it.
        var lostAt: ContinuousClock.Instant?
        var connectedAt = ContinuousClock.now
        var lastLossWasShortLived = false
        while !isStopped(lane) {
            attempt += 1
            do {
                let connection = try await PostgresConnection.connect(
                    configuration: connectionConfiguration, id: lane.index * 1_000_000 + attempt, logger: logger)
                connectedAt = .now
                do {
                    try await setTimeout(configuration.batchTimeout, on: connection)
                    lane.state.withLockedValue { s in
                        s.refusing = false
                        s.connectionLost = false
                    }
                    // Wake the idle lane the moment its connection closes (a terminated backend
                    // sends FATAL 57P01 and closes), so it reconnects before the next mutation.
                    connection.closeFuture.whenComplete { _ in
                        let waiter = lane.state.withLockedValue { s -> CheckedContinuation<Void, Never>? in
                            s.connectionLost = true
                            defer { s.waiter = nil }
                            return s.waiter
                        }
                        waiter?.resume()
                    }
                    if let lostAt {
                        let elapsed = ContinuousClock.now - lostAt
                        reconnects.increment()
                        reconnectDuration.recordNanoseconds(elapsed.nanosecondsClamped)
                        logger.info("mutation lane reconnected", metadata: [
                            "lane": "\(lane.index)", "after_ms": "\(elapsed.nanosecondsClamped / 1_000_000)",
                        ])
                    } else {
                        logger.debug("mutation lane connected", metadata: ["lane": "\(lane.index)"])
                    }
                    lostAt = nil
                    try await serve(lane, on: connection)
                } catch {
                    // Wait for the close: a connection released while its channel is still open
                    // trips PostgresNIO's assertion.
                    try? await connection.close()
                    guard !isStopped(lane) else { return }
                    // Two connections in a row lost within a second of being made (a database that
                    // accepts and then drops every backend) back off like a failed connect, so the
                    // lane never spins; an isolated loss reconnects at once.
                    let shortLived = ContinuousClock.now - connectedAt < .seconds(1)
                    let flapping = shortLived && lastLossWasShortLived
                    lastLossWasShortLived = shortLived
                    if lostAt == nil { lostAt = .now }
                    logger.warning("mutation lane lost its connection; reconnecting", metadata: [
                        "lane": "\(lane.index)", "error": "\(String(reflecting: error))",
                        "backoff_ms": "\(flapping ? backoff.nanosecondsClamped / 1_000_000 : 0)",
                    ])
                    if flapping {
                        try? await Task.sleep(for: backoff)
                        backoff = min(backoff * 2, configuration.maximumBackoff)
                    } else {
                        backoff = configuration.minimumBackoff
                    }
                    continue
                }
                try? await connection.close()
                return
            } catch {
                // Connecting failed: until the lane reconnects, new mutations are refused at once
                // (submit returns false) rather than waiting on a database that is not there.
                let dropped = lane.state.withLockedValue { s -> [Request] in
                    s.refusing = true
                    let dropped = Array(s.queue[s.head...])
                    s.queue = []
                    s.head = 0
                    return dropped
                }
                answer(dropped, .error(.unavailable, message: "the database is unreachable; send the mutation again",
                                       retryAfterMS: Int(backoff.nanosecondsClamped / 1_000_000)))
                guard !isStopped(lane) else { return }
                logger.warning("mutation lane cannot connect; retrying", metadata: [
                    "lane": "\(lane.index)", "error": "\(String(reflecting: error))", "backoff_ms": "\(backoff.nanosecondsClamped / 1_000_000)",
                ])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, configuration.maximumBackoff)
            }
        }
    }

    /// Waits for mutations and runs them batch after batch until the lane stops (returns) or the
    /// connection is lost (throws; a batch caught by the loss is back in the queue, or answered).
    func serve(_ lane: Lane, on connection: PostgresConnection) async throws {
        while true {
            guard let batch = await nextBatch(lane) else { throw IdleConnectionLost() }
            guard !batch.isEmpty else { return }
            do {
                try await execute(batch, on: connection)
            } catch let lost as BatchLost {
                // Nobody knows whether it committed: re-run it on the next connection, where a
                // member that did commit is answered from the outcome table.
                var retry: [Request] = []
                var giveUp: [Request] = []
                for var request in lost.batch {
                    request.lossRetries += 1
                    if request.lossRetries > configuration.connectionLossRetries { giveUp.append(request) } else { retry.append(request) }
                }
                answer(giveUp, .error(.unavailable, message: "the outcome is unknown (database connection lost); send the mutation again", retryAfterMS: 500))
                let stopped = lane.state.withLockedValue { s -> Bool in
                    if !s.stopped { s.requeue(retry) }
                    return s.stopped
                }
                if stopped {
                    answer(retry, .error(.unavailable, message: "the server is shutting down; send the mutation again", retryAfterMS: 1000))
                }
                throw lost.underlying
            }
        }
    }

    /// The next batch; `[]` when the lane stops, nil when its connection was lost while waiting.
    func nextBatch(_ lane: Lane) async -> [Request]? {
        var lingered = configuration.batchWait == .zero
        while true {
            // Optionally let a batch that is not yet full fill up a little longer (off by default:
            // what queues during the previous commit is the natural batch).
            if !lingered, lane.state.withLockedValue({ $0.pending > 0 && $0.pending < configuration.maximumBatchSize }) {
                lingered = true
                try? await Task.sleep(for: configuration.batchWait)
            }
            let taken = lane.state.withLockedValue { s -> [Request]?? in
                if s.stopped { return .some([]) }
                if s.connectionLost { return .some(nil) }
                guard s.pending > 0 else { return .none }
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
                return .some(batch)
            }
            if let taken { return taken }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = lane.state.withLockedValue { s -> Bool in
                    if s.stopped || s.pending > 0 || s.connectionLost { return true }
                    s.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        }
    }
}
