import ArgumentParser
import Foundation
import Histogram
import Logging
import NIOCore
import NIOPosix
import PostgresNIO

/// What the load client's connections speak (`--protocol`).
enum WireProtocol: String, ExpressibleByArgument, CaseIterable, Sendable {
    /// Syncline v1: hello → welcome → subscribe → snapshot, then `changes` frames.
    case syncline
    /// A LISTEN/NOTIFY → WebSocket bridge of bench/peers: live once upgraded, one row per message.
    case peer
    /// No WebSocket at all: one PostgreSQL connection LISTENing on channel `bridge` (fanout only):
    /// commit → NOTIFY received, the floor every bridge's latency sits on.
    case notify
}

extension Fanout {
    /// The raw NOTIFY floor: the same writer and histogram as the WebSocket scenarios, but the
    /// "subscriber" is one LISTEN connection on channel `bridge` of `--database-url` (the peers'
    /// database, whose trigger sends each row as the payload: bench/peers/notify-trigger.sql).
    /// Latency = receipt of the notification − the row's `created_at` (taken inside the writing
    /// transaction).
    func runNotifyFloor(name: String, writer: ChangeWriter, json: String?) async throws {
        guard self.subscribers == 1 else {
            await writer.close()
            throw ValidationError("--protocol notify measures one LISTEN connection: pass --subscribers 1")
        }
        let m = self.changes
        var logger = Logger(label: "syncline-bench.listener")
        logger.logLevel = .warning
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let outcome: JSONOut
        let complete: Bool
        do {
            let setupStart = monotonicSeconds()
            let listener = try await PostgresConnection.connect(
                on: group.next(), configuration: try postgresConfiguration(url: self.databaseURL), id: 2, logger: logger)
            let collector = Task { () -> LoopResults in
                var histogram = Histogram<UInt64>(
                    lowestDiscernibleValue: 1, highestTrackableValue: LoopState.histogramMax, numberOfSignificantValueDigits: .three)
                var deliveries = 0
                var bad = 0
                var first: Int64 = .max
                var last: Int64 = 0
                do {
                    try await listener.listen(on: "bridge") { notifications in
                        for try await notification in notifications {
                            let now = wallMicros()
                            var payload = notification.payload
                            let found = payload.withUTF8 { p in
                                FrameScan.forEachCreatedAt(UnsafeRawBufferPointer(p)) { ts in
                                    if let ts {
                                        let latency = now - ts
                                        _ = histogram.record(latency <= 0 ? 0 : min(UInt64(latency), LoopState.histogramMax))
                                    } else {
                                        bad += 1
                                    }
                                }
                            }
                            deliveries += found
                            if now < first { first = now }
                            if now > last { last = now }
                            if deliveries >= m { break }
                        }
                    }
                } catch {
                    // Cancelled at the timeout, or the connection failed: report what arrived.
                }
                return LoopResults(
                    histogram: histogram, deliveries: deliveries, badTimestamps: bad, firstDelivery: first,
                    lastDelivery: last, missing: max(0, m - deliveries), extra: max(0, deliveries - m), dropped: 0,
                    errorFrames: 0, firstError: nil, resets: 0, closeCodes: [:], timedOut: deliveries < m)
            }
            // LISTEN is queued on the connection before anything sent after it: a round trip on the
            // same connection, once the collector has had time to issue it, means it is in effect.
            try await Task.sleep(nanoseconds: 200_000_000)
            try await listener.query("SELECT 1", logger: logger)
            let setupSeconds = monotonicSeconds() - setupStart
            print("  setup: LISTEN bridge on its own connection in \(fmt(setupSeconds)) s")

            let clientCPUBefore = ProcFS.cpuSeconds(pid: getpid())
            let deadline = monotonicSeconds() + self.timeout
            let written = await writer.run(count: m, rate: self.rate, account: self.account, deadline: deadline)
            let remaining = max(0, deadline - monotonicSeconds())
            let timer = Task {
                try? await Task.sleep(nanoseconds: UInt64(remaining * 1e9))
                if !Task.isCancelled { collector.cancel() }
            }
            let results = await collector.value
            timer.cancel()
            let clientCPUAfter = ProcFS.cpuSeconds(pid: getpid())
            await writer.close()
            try? await listener.close()
            (outcome, complete) = self.report(
                name: name, results: [results], written: written, setupSeconds: setupSeconds, serverCPU: nil,
                clientCPU: clientCPUBefore.flatMap { b in clientCPUAfter.map { $0 - b } })
        } catch {
            await writer.close()
            try? await group.shutdownGracefully()
            throw error
        }
        try? await group.shutdownGracefully()
        if let path = json {
            try outcome.write(to: path)
            print("  → \(path)")
        }
        if !complete {
            print("  INCOMPLETE: notifications missing or duplicated, or the writer failed")
            throw ExitCode(3)
        }
    }
}
