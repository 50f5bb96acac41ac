import ArgumentParser
import Foundation
import Histogram
import Logging
import NIOCore
import NIOPosix
import PostgresNIO

// MARK: - mutate

struct Mutate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "C clients in a closed loop of `transfer` mutations (send, wait for the ack, send the next): confirmed mutations/s, ack latency, CPU.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "PostgreSQL URL of the server's database (bench accounts are created there first).")
    var databaseURL: String

    @Option(help: "Concurrent clients, one connection each, each its own user, client_id and accounts.")
    var clients: Int = 16

    @Option(help: "Seconds measured, after the warm-up.")
    var duration: Double = 10

    @Option(help: "Seconds of load before the measurement starts.")
    var warmup: Double = 2

    @Option(help: "Client n (1-based) is user `bench<n>`; with this offset, n starts here.")
    var firstAccount: Int = 1

    @Option(help: "Amount of each transfer (a JSON number with at most two decimals).")
    var amount: String = "0.01"

    @Option(help: "PID of the server, for its CPU time (/proc/<pid>/stat).")
    var serverPid: Int32?

    @Option(help: "PID of the postmaster: CPU time of it and its children (the backends) over the window.")
    var postgresPid: Int32?

    @Option(help: "The server's Prometheus endpoint, for the mean batch size (default: /metrics on --url's host and port).")
    var metricsURL: String?

    @Option(help: "Label of this configuration in the report, e.g. `a` (group commit) or `b` (batching off).")
    var variant: String = "a"

    @Option(help: "Seconds to wait, after the window, for the last answers.")
    var drainTimeout: Double = 30

    @Option(help: "Scenario name for the report.")
    var name: String?

    @Option(help: "Write the results as a JSON object to this file.")
    var json: String?

    func validate() throws {
        guard self.clients > 0 else { throw ValidationError("--clients must be > 0") }
        guard self.duration > 0, self.warmup >= 0 else { throw ValidationError("--duration must be > 0, --warmup >= 0") }
    }

    func run() async throws {
        try ensureFileLimit(self.clients + 256)
        let name = self.name ?? "mutate-\(self.variant)-\(self.clients)"
        print("[\(name)] \(self.clients) clients, closed loop of `transfer`, \(fmt(self.warmup, 0)) s warm-up + \(fmt(self.duration, 0)) s, \(self.connection.threads) client threads")

        let setupGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            let created = try await createAccounts(url: self.databaseURL, first: self.firstAccount, count: self.clients, on: setupGroup.next())
            if created > 0 { print("  setup: created \(created) bench accounts") }
            try? await setupGroup.shutdownGracefully()
        } catch {
            try? await setupGroup.shutdownGracefully()
            throw error
        }

        let settings = MutateSettings(
            firstAccount: self.firstAccount, subPrefix: "bench", accountPrefix: "bench-", sinkSuffix: "-sink",
            mutator: "transfer", amount: self.amount)
        let metrics = try self.metricsEndpoint()
        let (outcome, complete): (JSONOut, Bool) = try await self.connection.withClient(
            mode: .mutate(settings), expected: 0, clientIDPrefix: "bench-mut"
        ) { factory in
            let setupSeconds = try await openAllOrFail(factory: factory, count: self.clients, concurrency: self.connection.connectConcurrency,
                                                       waitingFor: "their welcome")
            print("  setup: \(self.clients) connections welcomed in \(fmt(setupSeconds)) s")

            let t0 = monotonicNanos() + 50_000_000
            let start = t0 + UInt64(self.warmup * 1e9)
            let end = start + UInt64(self.duration * 1e9)
            var doneFutures: [EventLoopFuture<Void>] = []
            let timeout = self.warmup + self.duration + self.drainTimeout
            for (loop, bound) in zip(factory.loops, factory.states) {
                let delay = Int64(t0) - Int64(monotonicNanos())
                doneFutures.append(loop.flatScheduleTask(in: .nanoseconds(max(0, delay))) {
                    bound.value.startMutating(on: loop, start: start, end: end, timeoutSeconds: timeout)
                }.futureResult)
            }
            try await sleepUntil(start)
            let before = Sample.take(serverPid: self.serverPid, postgresPid: self.postgresPid, metrics: metrics)
            try await sleepUntil(end)
            let after = Sample.take(serverPid: self.serverPid, postgresPid: self.postgresPid, metrics: metrics)
            for f in doneFutures { try? await f.get() }
            let results = try await collectResults(loops: factory.loops, states: factory.states)
            await closeAll(loops: factory.loops, states: factory.states, timeoutSeconds: 5)
            return self.report(name: name, results: results, setupSeconds: setupSeconds, before: before, after: after)
        }
        if let path = self.json {
            try outcome.write(to: path)
            print("  → \(path)")
        }
        if !complete {
            print("  INCOMPLETE: rejects, errors, lost connections or no acks")
            throw ExitCode(3)
        }
    }

    private func metricsEndpoint() throws -> (host: String, port: Int, path: String)? {
        if let url = self.metricsURL {
            if url.isEmpty { return nil }
            guard let c = URLComponents(string: url), c.scheme == "http", let host = c.host else {
                throw ValidationError("--metrics-url must look like http://host:port/metrics")
            }
            return (host, c.port ?? 80, c.percentEncodedPath.isEmpty ? "/metrics" : c.percentEncodedPath)
        }
        let ep = try self.connection.endpoint()
        return (ep.host, ep.port, "/metrics")
    }

    private func report(name: String, results: [LoopResults], setupSeconds: Double, before: Sample, after: Sample) -> (JSONOut, Bool) {
        var histogram = results[0].histogram
        for r in results.dropFirst() { histogram.add(r.histogram) }
        let acked = results.reduce(0) { $0 + $1.acked }
        let ackedTotal = results.reduce(0) { $0 + $1.ackedTotal }
        let duplicates = results.reduce(0) { $0 + $1.duplicates }
        let rejects = results.reduce(0) { $0 + $1.rejects }
        let firstReject = results.compactMap(\.firstReject).first
        let errors = results.reduce(0) { $0 + $1.mutationErrors }
        let firstMutationError = results.compactMap(\.firstMutationError).first
        let otherErrors = results.reduce(0) { $0 + $1.errorFrames }
        let firstOther = results.compactMap(\.firstError).first
        let dropped = results.reduce(0) { $0 + $1.dropped }
        let timedOut = results.contains { $0.timedOut }
        var closeCodes: [Int: Int] = [:]
        for r in results { for (k, v) in r.closeCodes { closeCodes[k, default: 0] += v } }
        let perSecond = Double(acked) / self.duration
        func ms(_ p: Double) -> Double { Double(histogram.valueAtPercentile(p)) / 1000 }
        let p50 = ms(50), p99 = ms(99), p999 = ms(99.9)
        let maxMs = Double(histogram.max) / 1000
        let meanMs = histogram.totalCount > 0 ? histogram.mean / 1000 : 0

        func delta(_ a: Double?, _ b: Double?) -> Double? { a.flatMap { x in b.map { $0 - x } } }
        let serverCPU = delta(before.serverCPU, after.serverCPU)
        let postgresCPU = delta(before.postgresCPU, after.postgresCPU)
        let clientCPU = delta(before.clientCPU, after.clientCPU)
        func per1k(_ cpu: Double?) -> Double? { cpu.flatMap { acked > 0 ? $0 * 1000 / Double(acked) * 1000 : nil } }  // CPU-ms per 1k
        let batchCount = delta(before.metric("syncline_mutation_batch_size_count"), after.metric("syncline_mutation_batch_size_count"))
        let batchSum = delta(before.metric("syncline_mutation_batch_size_sum"), after.metric("syncline_mutation_batch_size_sum"))
        let batchSeconds = delta(before.metric("syncline_mutation_batch_seconds_sum"), after.metric("syncline_mutation_batch_seconds_sum"))
        let meanBatch = batchCount.flatMap { c in c > 0 ? batchSum.map { $0 / c } : nil }
        let meanBatchMs = batchCount.flatMap { c in c > 0 ? batchSeconds.map { $0 / c * 1000 } : nil }

        print("  confirmed: \(grouped(Double(acked))) acks in \(fmt(self.duration, 1)) s → \(grouped(perSecond)) mutations/s (2 cores shared by server, PostgreSQL and client)")
        if histogram.totalCount > 0 {
            print("  ack latency (send → ack): p50 \(fmt(p50)) ms, p99 \(fmt(p99)) ms, p99.9 \(fmt(p999)) ms, max \(fmt(maxMs)) ms")
        }
        if let meanBatch {
            print("  batches: \(grouped(batchCount ?? 0)) in the window, mean size \(fmt(meanBatch, 1)), mean apply_batch round trip \(meanBatchMs.map { fmt($0) } ?? "–") ms")
        }
        if ProcessInfo.processInfo.environment["SYNCLINE_BENCH_DEBUG"] != nil {
            print("  debug: samples \(Double(after.at - before.at) / 1e9) s apart; server CPU \(before.serverCPU ?? -1) → \(after.serverCPU ?? -1), PostgreSQL \(before.postgresCPU ?? -1) → \(after.postgresCPU ?? -1)")
        }
        print("  CPU over the window: server \(serverCPU.map { fmt($0) } ?? "–") s, PostgreSQL \(postgresCPU.map { fmt($0) } ?? "–") s, client \(clientCPU.map { fmt($0) } ?? "–") s"
            + " → per 1k mutations: server \(per1k(serverCPU).map { fmt($0, 0) } ?? "–") ms, PostgreSQL \(per1k(postgresCPU).map { fmt($0, 0) } ?? "–") ms")
        if rejects > 0 || errors > 0 || otherErrors > 0 || dropped > 0 || !closeCodes.isEmpty || duplicates > 0 || timedOut {
            print("  anomalies: rejects \(rejects)\(firstReject.map { " (first: \($0))" } ?? ""), errors \(errors)\(firstMutationError.map { " (first: \($0))" } ?? ""), other error frames \(otherErrors)\(firstOther.map { " (first: \($0))" } ?? ""), duplicate acks \(duplicates), dropped connections \(dropped), server closes \(closeCodes)\(timedOut ? ", TIMED OUT waiting for the last answers" : "")")
        }
        let complete = acked > 0 && rejects == 0 && errors == 0 && otherErrors == 0 && dropped == 0 && !timedOut
        let (cores, cpu) = machineDescription()
        return (.object([
            ("scenario", .string("mutate")),
            ("complete", .bool(complete)),
            ("name", .string(name)),
            ("variant", .string(self.variant)),
            ("clients", .int(self.clients)),
            ("duration_s", .number(self.duration)),
            ("warmup_s", .number(self.warmup)),
            ("client_threads", .int(self.connection.threads)),
            ("setup_s", .number(setupSeconds)),
            ("acked", .int(acked)),
            ("acked_total", .int(ackedTotal)),
            ("mutations_per_s", .number(perSecond, 1)),
            ("latency_ms", .object([
                ("p50", .number(p50)), ("p99", .number(p99)), ("p999", .number(p999)), ("max", .number(maxMs)), ("mean", .number(meanMs)),
            ])),
            ("rejects", .int(rejects)),
            ("first_reject", firstReject.map { .string($0) } ?? .null),
            ("errors", .int(errors)),
            ("first_error", firstMutationError.map { .string($0) } ?? .null),
            ("other_error_frames", .int(otherErrors)),
            ("duplicate_acks", .int(duplicates)),
            ("dropped_connections", .int(dropped)),
            ("timed_out", .bool(timedOut)),
            ("server_close_codes", .object(closeCodes.sorted { $0.key < $1.key }.map { (String($0.key), .int($0.value)) })),
            ("batches", .optional(batchCount, 0)),
            ("mean_batch_size", .optional(meanBatch, 2)),
            ("mean_batch_ms", .optional(meanBatchMs)),
            ("server_cpu_s", .optional(serverCPU)),
            ("postgres_cpu_s", .optional(postgresCPU)),
            ("client_cpu_s", .optional(clientCPU)),
            ("server_cpu_ms_per_1k", .optional(per1k(serverCPU), 1)),
            ("postgres_cpu_ms_per_1k", .optional(per1k(postgresCPU), 1)),
            ("machine", .object([("cores", .int(cores)), ("cpu", .string(cpu))])),
            ("time", .string(ISO8601DateFormatter().string(from: Date()))),
        ]), complete)
    }
}

/// Creates accounts `bench-<n>` and `bench-<n>-sink`, owned by user `bench<n>`, for n in
/// first..<first+count (balance 10^12, so transfers never run out). Returns how many were new.
func createAccounts(url: String, first: Int, count: Int, on loop: any EventLoop) async throws -> Int {
    var logger = Logger(label: "syncline-bench.setup")
    logger.logLevel = .warning
    let connection = try await PostgresConnection.connect(on: loop, configuration: try postgresConfiguration(url: url), id: 2, logger: logger)
    do {
        let last = first + count - 1
        let rows = try await connection.query("""
            WITH ins AS (
                INSERT INTO public.accounts (id, owner, name, balance)
                SELECT 'bench-' || i || s.suffix, 'bench' || i, 'Bench ' || i || s.suffix, 1e12
                FROM generate_series(\(first)::int, \(last)::int) AS i, (VALUES (''), ('-sink')) AS s(suffix)
                ON CONFLICT (id) DO NOTHING
                RETURNING 1)
            SELECT count(*)::int8 FROM ins
            """, logger: logger)
        var created = 0
        for try await n in rows.decode(Int64.self) { created = Int(n) }
        try? await connection.close()
        return created
    } catch {
        try? await connection.close()
        throw BenchError("creating the bench accounts failed: \(String(reflecting: error))")
    }
}

func sleepUntil(_ deadline: UInt64) async throws {
    let now = monotonicNanos()
    if deadline > now { try await Task.sleep(nanoseconds: deadline - now) }
}

/// CPU times and server metrics at one instant.
struct Sample: Sendable {
    var serverCPU: Double?
    var postgresCPU: Double?
    var clientCPU: Double?
    var metrics: [String: Double]
    var at = monotonicNanos()

    func metric(_ name: String) -> Double? { self.metrics[name] }

    static func take(serverPid: Int32?, postgresPid: Int32?, metrics endpoint: (host: String, port: Int, path: String)?) -> Sample {
        // CPU first: the metrics request takes a moment.
        var sample = Sample(
            serverCPU: serverPid.flatMap { ProcFS.cpuSeconds(pid: $0) },
            postgresCPU: postgresPid.flatMap { ProcFS.treeCPUSeconds(root: $0) },
            clientCPU: ProcFS.cpuSeconds(pid: getpid()),
            metrics: [:])
        if let endpoint, let text = httpGet(host: endpoint.host, port: endpoint.port, path: endpoint.path) {
            sample.metrics = parsePrometheus(text)
        }
        return sample
    }
}

/// Unlabelled samples of a Prometheus text exposition (`name value`); labelled ones are keyed
/// with their labels as written.
func parsePrometheus(_ text: String) -> [String: Double] {
    var out: [String: Double] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        let parts = line.split(separator: " ")
        guard parts.count >= 2, let v = Double(parts[parts.count - 1]) ?? Double(parts[1]) else { continue }
        out[String(parts[0])] = v
    }
    return out
}

/// A blocking HTTP/1.0 GET on a plain TCP socket (for /metrics on loopback); nil on any failure.
func httpGet(host: String, port: Int, path: String) -> String? {
    guard let address = try? SocketAddress.makeAddressResolvingHost(host, port: port), case .v4(let v4) = address else { return nil }
    #if os(Linux)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var tv = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var sin = v4.address
    let connected = withUnsafePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { return nil }
    let request = Array("GET \(path) HTTP/1.0\r\nHost: \(host):\(port)\r\nConnection: close\r\n\r\n".utf8)
    guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else { return nil }
    // Read until the Content-Length is complete (the server keeps the connection open) or it closes.
    var response = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    var expected: Int?
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        response.append(contentsOf: buffer[0..<n])
        let text = String(decoding: response, as: UTF8.self)
        if expected == nil, let headEnd = text.range(of: "\r\n\r\n") {
            let head = text[..<headEnd.lowerBound].lowercased()
            if let r = head.range(of: "content-length:") {
                let length = Int(head[r.upperBound...].prefix(while: { $0 != "\r" }).trimmingCharacters(in: " ")) ?? 0
                expected = text.utf8.distance(from: text.utf8.startIndex, to: headEnd.upperBound) + length
            }
        }
        if let expected, response.count >= expected { break }
    }
    let text = String(decoding: response, as: UTF8.self)
    guard text.hasPrefix("HTTP/1.") && text.contains(" 200 "), let body = text.range(of: "\r\n\r\n") else { return nil }
    return String(text[body.upperBound...])
}
