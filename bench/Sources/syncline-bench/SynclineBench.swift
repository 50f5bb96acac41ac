import ArgumentParser
import Foundation
import Histogram
import NIOCore
import NIOPosix

@main
struct SynclineBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "syncline-bench",
        abstract: "Load client for the Syncline sync server (fan-out latency/throughput, idle memory, mutations).",
        subcommands: [Fanout.self, Subscribe.self, Idle.self, Resume.self, Mutate.self, PgBench.self, Report.self])
}

/// Options shared by the scenarios that open WebSocket connections.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "WebSocket endpoint of the server.")
    var url: String = "ws://127.0.0.1:8080/v1/sync"

    @Option(help: "Comma-separated local source addresses to spread connections over (127.0.0.x all work on Linux loopback).")
    var sources: String = "127.0.0.1"

    @Option(help: "Client event-loop threads (default: number of cores).")
    var threads: Int = System.coreCount

    @Option(help: "The `sub` of the unsigned development token.")
    var user: String = "alice"

    @Option(help: "Connections completing their setup at the same time.")
    var connectConcurrency: Int = 256

    @Option(help: "Seconds one connection may take to be set up.")
    var setupTimeout: Double = 120

    @Option(help: "Largest WebSocket frame accepted from the server, in bytes.")
    var maxFrameSize: Int = 64 << 20

    @Option(name: .customLong("protocol"), help: "syncline: Syncline v1; peer: a bench/peers bridge (--url with ?account=…, each message one row); notify (fanout only): no WebSocket, one LISTEN on channel 'bridge' of --database-url, the raw NOTIFY floor.")
    var wireProtocol: WireProtocol = .syncline

    @Option(help: "The server this run measures, recorded in the JSON (syncline, go, node, python, …).")
    var serverName: String = "syncline"

    @Flag(help: "Offer permessage-deflate (with client_no_context_takeover) and inflate what arrives compressed; the JSON records what the server negotiated and the bytes on the wire.")
    var compression = false

    struct Endpoint {
        var host: String
        var port: Int
        var path: String
    }

    func endpoint() throws -> Endpoint {
        guard let c = URLComponents(string: self.url), c.scheme == "ws", let host = c.host else {
            throw ValidationError("--url must look like ws://host:port/v1/sync (wss is not supported)")
        }
        let path = c.percentEncodedPath.isEmpty ? "/" : c.percentEncodedPath
        let query = c.percentEncodedQuery.map { "?" + $0 } ?? ""
        return Endpoint(host: host, port: c.port ?? 80, path: path + query)
    }

    func sourceAddresses() throws -> [SocketAddress] {
        try self.sources.split(separator: ",").map { s in
            let ip = s.trimmingCharacters(in: " ")
            do { return try SocketAddress(ipAddress: ip, port: 0) } catch {
                throw ValidationError("--sources: '\(ip)' is not an IP address")
            }
        }
    }

    /// Sets up the event loops and a connection factory; `body` runs the scenario.
    func withClient<T>(
        mode: ConnectionMode, expected: Int, clientIDPrefix: String,
        _ body: (ConnectionFactory) async throws -> T
    ) async throws -> T {
        let ep = try self.endpoint()
        let target = try SocketAddress.makeAddressResolvingHost(ep.host, port: ep.port)
        let settings = ClientSettings(
            host: ep.host, port: ep.port, path: ep.path, token: devToken(sub: self.user),
            clientIDPrefix: clientIDPrefix, mode: mode, maxFrameSize: self.maxFrameSize,
            expectedPerConnection: expected, peer: self.wireProtocol == .peer, compression: self.compression)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, self.threads))
        var loops: [any EventLoop] = []
        var states: [NIOLoopBound<LoopState>] = []
        for loop in group.makeIterator() {
            loops.append(loop)
            states.append(try await loop.submit { NIOLoopBound(LoopState(expected: expected), eventLoop: loop) }.get())
        }
        let factory = ConnectionFactory(
            loops: loops, states: states, settings: settings, sources: try self.sourceAddresses(), target: target,
            setupTimeout: .milliseconds(Int64(self.setupTimeout * 1000)))
        do {
            let result = try await body(factory)
            try? await group.shutdownGracefully()
            return result
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }
}

func runID() -> String {
    "bench-\(getpid())-\(Int(Date().timeIntervalSince1970) % 1_000_000)"
}

func fmt(_ v: Double, _ digits: Int = 2) -> String { String(format: "%.\(digits)f", v) }

func grouped(_ v: Double) -> String {
    let n = Int(v.rounded())
    let s = String(abs(n))
    var out = ""
    for (i, ch) in s.enumerated() {
        if i > 0, (s.count - i) % 3 == 0 { out.append(",") }
        out.append(ch)
    }
    return (n < 0 ? "-" : "") + out
}

// MARK: - fanout

struct Fanout: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N subscribers of one feed, one writer committing M single-row transactions; insert→receive latency, throughput, server CPU.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "PostgreSQL URL of the server's database (the writer connects to it directly).")
    var databaseURL: String

    @Option(help: "Subscriber connections.")
    var subscribers: Int = 100

    @Option(help: "Single-row transactions the writer commits.")
    var changes: Int = 1000

    @Option(help: "Commits per second (0: as fast as one connection can).")
    var rate: Double = 0

    @Option(help: "The account_id the feed filters on and the writer inserts into.")
    var account: String = "alice-checking"

    @Option(help: "Seconds to wait for all deliveries, from the first commit.")
    var timeout: Double = 60

    @Option(help: "PID of the server, for its CPU time (/proc/<pid>/stat).")
    var serverPid: Int32?

    @Flag(help: "Delete earlier runs' rows (memo = 'bench') of the account first, so snapshots stay small.")
    var cleanup = false

    @Flag(help: "Many feeds: subscriber n (1 … N) is user bench<n> on its own account bench-<n> (bench/sql/setup.sql); the writer spreads --changes rows over those accounts (a multiple of --subscribers). With --protocol peer, ?account=bench-<n> is appended to --url.")
    var manyFeeds = false

    @Option(help: "Many feeds: rows per transaction (consecutive accounts); --rate counts transactions.")
    var rowsPerCommit: Int = 1

    @Option(help: "Measurements on one set of subscriptions; with more than one, round k is named <name>-run<k> and written to <json without .json>-run<k>.json. A round that misses deliveries gets the next one a fresh set.")
    var rounds: Int = 1

    @Flag(help: "After the setup, wait for a line on stdin before committing (bench/syscalls attaches strace then).")
    var waitForGo = false

    @Option(help: "Scenario name for the report.")
    var name: String?

    @Option(help: "Write the results as a JSON object to this file.")
    var json: String?

    func validate() throws {
        guard self.subscribers > 0, self.changes > 0 else { throw ValidationError("--subscribers and --changes must be > 0") }
        guard self.rate >= 0 else { throw ValidationError("--rate must be >= 0") }
        guard self.rounds > 0 else { throw ValidationError("--rounds must be > 0") }
        if self.manyFeeds {
            guard self.changes % self.subscribers == 0 else { throw ValidationError("--many-feeds: --changes must be a multiple of --subscribers") }
            guard self.rowsPerCommit > 0, self.changes % self.rowsPerCommit == 0 else { throw ValidationError("--rows-per-commit must divide --changes") }
        } else if self.rowsPerCommit != 1 {
            throw ValidationError("--rows-per-commit is for --many-feeds")
        }
    }

    /// Deliveries each committed row makes: every subscriber (one feed), or one (many feeds).
    var deliveriesPerRow: Int { self.manyFeeds ? 1 : self.subscribers }

    func run() async throws {
        try ensureFileLimit(self.subscribers + 256)
        let n = self.subscribers
        let m = self.changes
        let rateText = self.rate > 0 ? "\(fmt(self.rate, 0))/s" : "flat out"
        let name = self.name ?? (self.manyFeeds ? "feeds-" : "fanout-") + "\(n)x\(m)" + (self.rate > 0 ? "-r\(fmt(self.rate, 0))" : "")
        print("[\(name)] \(n) subscribers\(self.manyFeeds ? " on \(n) feeds (\(self.rowsPerCommit) rows per commit)" : " of one feed") × \(m) changes, rate \(rateText), \(self.connection.threads) client threads")

        let writerGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            try await self.run(name: name, writerGroup: writerGroup)
            try? await writerGroup.shutdownGracefully()
        } catch {
            try? await writerGroup.shutdownGracefully()
            throw error
        }
    }

    private func run(name: String, writerGroup: MultiThreadedEventLoopGroup) async throws {
        let n = self.subscribers
        let m = self.changes
        let writer = try await ChangeWriter.connect(url: self.databaseURL, on: writerGroup.next())
        if self.cleanup {
            let deleted = self.manyFeeds
                ? try await writer.deletePreviousRows(accountPrefix: FeedSettings().accountPrefix)
                : try await writer.deletePreviousRows(account: self.account)
            if deleted > 0 { print("  cleanup: deleted \(deleted) rows of earlier runs") }
        }
        if self.connection.wireProtocol == .notify {
            // runNotifyFloor closes its writer: each round gets a new one.
            for round in 1...self.rounds {
                let roundWriter = round == 1 ? writer : try await ChangeWriter.connect(url: self.databaseURL, on: writerGroup.next())
                try await self.runNotifyFloor(
                    name: self.roundName(name, round), writer: roundWriter, json: self.json.map { self.roundFile($0, round) })
            }
            return
        }

        let subscribe = #"{"type":"subscribe","id":"t","collection":"transactions","where":{"account_id":"\#(self.account)"}}"#
        let feeds = FeedSettings()
        var round = 1
        var allComplete = true
        while round <= self.rounds {
            try await self.connection.withClient(
                mode: self.manyFeeds ? .feeds(feeds) : .subscribe(frame: subscribe),
                expected: self.manyFeeds ? m / n : m, clientIDPrefix: runID()
            ) { factory in
                let setupSeconds = try await openAllOrFail(factory: factory, count: n, concurrency: self.connection.connectConcurrency,
                                                           waitingFor: "their snapshot", onFailure: { await writer.close() })
                print("  setup: \(n) connections subscribed, snapshots received, in \(fmt(setupSeconds)) s")
                if self.waitForGo {
                    print("  waiting for a line on stdin")
                    fflush(nil)
                    _ = readLine()
                }
                // A bridge registers a client just after its upgrade response: let the last ones land.
                if self.connection.wireProtocol == .peer { try await Task.sleep(nanoseconds: 200_000_000) }
                // Setting up 10,000 subscriptions takes longer than measuring them: the rounds share
                // one set while every round is complete (late rows of a cut-off round would be
                // counted in the next, so an incomplete round ends the set).
                while round <= self.rounds {
                    if round > 1 {
                        try? await Task.sleep(nanoseconds: 1_000_000_000)
                        for (loop, bound) in zip(factory.loops, factory.states) {
                            try await loop.submit { bound.value.startNextRound() }.get()
                        }
                    }
                    let roundName = self.roundName(name, round)
                    if self.rounds > 1 { print("  round \(round) of \(self.rounds): \(roundName)") }
                    let (outcome, complete) = try await self.measure(
                        name: roundName, factory: factory, writer: writer, feeds: feeds, setupSeconds: setupSeconds)
                    if let path = self.json {
                        let file = self.roundFile(path, round)
                        try outcome.write(to: file)
                        print("  → \(file)")
                    }
                    round += 1
                    if !complete { allComplete = false; break }
                }
                await closeAll(loops: factory.loops, states: factory.states, timeoutSeconds: 5)
            }
        }
        await writer.close()
        if !allComplete {
            print("  INCOMPLETE: deliveries missing or duplicated, or the writer failed")
            throw ExitCode(3)
        }
    }

    func roundName(_ name: String, _ round: Int) -> String {
        self.rounds > 1 ? "\(name)-run\(round)" : name
    }

    /// `out.json` → `out-run<k>.json` when there are several rounds.
    func roundFile(_ path: String, _ round: Int) -> String {
        guard self.rounds > 1 else { return path }
        return (path.hasSuffix(".json") ? String(path.dropLast(5)) : path) + "-run\(round).json"
    }

    /// One measurement on subscriptions that are set up: the writer's commits, every delivery, CPU.
    private func measure(
        name: String, factory: ConnectionFactory, writer: ChangeWriter, feeds: FeedSettings, setupSeconds: Double
    ) async throws -> (JSONOut, Bool) {
        let m = self.changes
        let n = self.subscribers
        var doneFutures: [EventLoopFuture<Void>] = []
        for (loop, bound) in zip(factory.loops, factory.states) {
            let timeout = self.timeout
            doneFutures.append(loop.flatSubmit { bound.value.startMeasuring(on: loop, timeoutSeconds: timeout) })
        }
        let serverCPUBefore = self.serverPid.flatMap { ProcFS.cpuSeconds(pid: $0) }
        let clientCPUBefore = ProcFS.cpuSeconds(pid: getpid())
        let deadline = monotonicSeconds() + self.timeout
        let written = self.manyFeeds
            ? await writer.runSpread(rows: m, rowsPerCommit: self.rowsPerCommit, accounts: n, prefix: feeds.accountPrefix,
                                     rate: self.rate, deadline: deadline)
            : await writer.run(count: m, rate: self.rate, account: self.account, deadline: deadline)
        for f in doneFutures { try? await f.get() }
        let serverCPUAfter = self.serverPid.flatMap { ProcFS.cpuSeconds(pid: $0) }
        let clientCPUAfter = ProcFS.cpuSeconds(pid: getpid())

        let results = try await collectResults(loops: factory.loops, states: factory.states)
        return self.report(
            name: name, results: results, written: written, setupSeconds: setupSeconds,
            serverCPU: serverCPUBefore.flatMap { b in serverCPUAfter.map { $0 - b } },
            clientCPU: clientCPUBefore.flatMap { b in clientCPUAfter.map { $0 - b } })
    }

    func report(
        name: String, results: [LoopResults], written: ChangeWriter.Outcome, setupSeconds: Double,
        serverCPU: Double?, clientCPU: Double?
    ) -> (JSONOut, Bool) {
        let n = self.subscribers
        var histogram = results[0].histogram
        for r in results.dropFirst() { histogram.add(r.histogram) }
        let deliveries = results.reduce(0) { $0 + $1.deliveries }
        // Missing is counted against what was actually committed.
        let missingVsM = results.reduce(0) { $0 + $1.missing }
        let perRow = self.deliveriesPerRow
        let missing = max(0, missingVsM - perRow * (self.changes - written.commits))
        let extra = results.reduce(0) { $0 + $1.extra }
        let lastDelivery = results.map(\.lastDelivery).max() ?? 0
        let window = lastDelivery > written.startMicros ? Double(lastDelivery - written.startMicros) / 1e6 : 0
        let perSecond = window > 0 ? Double(deliveries) / window : 0
        let timedOut = results.contains { $0.timedOut }
        let dropped = results.reduce(0) { $0 + $1.dropped }
        let errorFrames = results.reduce(0) { $0 + $1.errorFrames }
        let firstError = results.compactMap(\.firstError).first
        let resets = results.reduce(0) { $0 + $1.resets }
        let badTimestamps = results.reduce(0) { $0 + $1.badTimestamps }
        var closeCodes: [Int: Int] = [:]
        for r in results { for (k, v) in r.closeCodes { closeCodes[k, default: 0] += v } }
        func ms(_ p: Double) -> Double { Double(histogram.valueAtPercentile(p)) / 1000 }
        let p50 = ms(50), p99 = ms(99), p999 = ms(99.9)
        let maxMs = Double(histogram.max) / 1000
        let perServerCPU = serverCPU.flatMap { $0 > 0 ? Double(deliveries) / $0 : nil }

        let commitRate = written.seconds > 0 ? Double(written.commits) / written.seconds : 0
        print("  writer: \(written.commits) commits in \(fmt(written.seconds)) s (\(grouped(commitRate)) commits/s)"
            + (written.error.map { " — \($0)" } ?? ""))
        print("  deliveries: \(grouped(Double(deliveries))) of \(grouped(Double(perRow * written.commits))) expected, missing \(missing), extra \(extra)"
            + (timedOut ? " — TIMED OUT after \(fmt(self.timeout, 0)) s" : ""))
        print("  throughput: \(grouped(perSecond)) deliveries/s over \(fmt(window, 3)) s (first commit → last delivery)")
        if histogram.totalCount > 0 {
            print("  latency (commit-side created_at → received): p50 \(fmt(p50)) ms, p99 \(fmt(p99)) ms, p99.9 \(fmt(p999)) ms, max \(fmt(maxMs)) ms")
        }
        if let serverCPU {
            print("  server CPU: \(fmt(serverCPU)) s → \(perServerCPU.map { grouped($0) } ?? "n/a") deliveries per server CPU-second")
        } else {
            print("  server CPU: not measured (pass --server-pid)")
        }
        if let clientCPU { print("  client CPU: \(fmt(clientCPU)) s") }
        if self.connection.compression { printCompression(results) }
        if dropped > 0 || errorFrames > 0 || resets > 0 || !closeCodes.isEmpty || badTimestamps > 0 {
            print("  anomalies: dropped connections \(dropped), error frames \(errorFrames)\(firstError.map { " (first: \($0))" } ?? ""), feed resets \(resets), server closes \(closeCodes), unparsable timestamps \(badTimestamps)")
        }

        let (cores, cpu) = machineDescription()
        let complete = missing == 0 && extra == 0 && written.error == nil && written.commits == self.changes
        return (.object([
            ("scenario", .string("fanout")),
            ("complete", .bool(complete)),
            ("name", .string(name)),
            ("feeds", .string(self.manyFeeds ? "many" : "one")),
            ("rows_per_commit", .int(self.rowsPerCommit)),
            ("server", .string(self.connection.serverName)),
            ("protocol", .string(self.connection.wireProtocol.rawValue)),
            ("subscribers", .int(n)),
            ("changes", .int(self.changes)),
            ("rate", .number(self.rate, 1)),
            ("client_threads", .int(self.connection.threads)),
            ("sources", .int((try? self.connection.sourceAddresses().count) ?? 1)),
            ("setup_s", .number(setupSeconds)),
            ("commits", .int(written.commits)),
            ("commit_s", .number(written.seconds)),
            ("commits_per_s", .number(commitRate, 1)),
            ("writer_error", written.error.map { .string($0) } ?? .null),
            ("expected_deliveries", .int(perRow * written.commits)),
            ("deliveries", .int(deliveries)),
            ("missing", .int(missing)),
            ("extra", .int(extra)),
            ("timed_out", .bool(timedOut)),
            ("window_s", .number(window, 4)),
            ("deliveries_per_s", .number(perSecond, 1)),
            ("latency_ms", .object([
                ("p50", .number(p50)), ("p99", .number(p99)), ("p999", .number(p999)), ("max", .number(maxMs)),
                ("mean", .number(histogram.totalCount > 0 ? histogram.mean / 1000 : 0)),
            ])),
            ("server_cpu_s", .optional(serverCPU)),
            ("deliveries_per_server_cpu_s", .optional(perServerCPU, 1)),
            ("client_cpu_s", .optional(clientCPU)),
            ("dropped_connections", .int(dropped)),
            ("error_frames", .int(errorFrames)),
            ("first_error", firstError.map { .string($0) } ?? .null),
            ("feed_resets", .int(resets)),
            ("server_close_codes", .object(closeCodes.sorted { $0.key < $1.key }.map { (String($0.key), .int($0.value)) })),
            ("unparsable_timestamps", .int(badTimestamps)),
            ("compression", compressionSummary(results, offered: self.connection.compression)),
            ("machine", .object([("cores", .int(cores)), ("cpu", .string(cpu))])),
            ("time", .string(ISO8601DateFormatter().string(from: Date()))),
        ]), complete)
    }
}

// MARK: - idle

struct Idle: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Server RSS per idle connection: N connections that completed hello → welcome, no subscription.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Connections to open.")
    var connections: Int = 1000

    @Option(help: "PID of the server (VmRSS from /proc/<pid>/status).")
    var serverPid: Int32

    @Option(help: "Seconds to wait with all connections open before reading RSS again.")
    var settle: Double = 3

    @Option(help: "Scenario name for the report.")
    var name: String?

    @Option(help: "Write the results as a JSON object to this file.")
    var json: String?

    func run() async throws {
        try ensureFileLimit(self.connections + 256)
        if self.connection.wireProtocol == .notify { throw ValidationError("--protocol notify is for fanout only") }
        let n = self.connections
        let name = self.name ?? "idle-\(n)"
        print("[\(name)] \(n) idle connections (hello → welcome), \(self.connection.threads) client threads")
        guard let before = ProcFS.rssKiB(pid: self.serverPid) else {
            throw BenchError("cannot read VmRSS of pid \(self.serverPid)")
        }
        let (outcome, complete): (JSONOut, Bool) = try await self.connection.withClient(
            mode: .idle, expected: 0, clientIDPrefix: runID()
        ) { factory in
            let setupSeconds = try await openAllOrFail(factory: factory, count: n, concurrency: self.connection.connectConcurrency,
                                                       waitingFor: "their welcome")
            print("  setup: \(n) connections welcomed in \(fmt(setupSeconds)) s (\(grouped(Double(n) / setupSeconds)) /s)")
            try await Task.sleep(nanoseconds: UInt64(self.settle * 1e9))
            let after = ProcFS.rssKiB(pid: self.serverPid) ?? before
            let results = try await collectResults(loops: factory.loops, states: factory.states)
            let dropped = results.reduce(0) { $0 + $1.dropped }
            var closeCodes: [Int: Int] = [:]
            for r in results { for (k, v) in r.closeCodes { closeCodes[k, default: 0] += v } }
            await closeAll(loops: factory.loops, states: factory.states, timeoutSeconds: 10)
            try await Task.sleep(nanoseconds: 1_000_000_000)
            let afterClose = ProcFS.rssKiB(pid: self.serverPid)

            let perConnection = Double(after - before) / Double(n)
            print("  server RSS: \(grouped(Double(before))) KiB before, \(grouped(Double(after))) KiB with \(n) open → \(fmt(perConnection, 2)) KiB per connection"
                + (afterClose.map { "; \(grouped(Double($0))) KiB after closing" } ?? ""))
            if dropped > 0 || !closeCodes.isEmpty {
                print("  anomalies: \(dropped) connections lost while idle, server closes \(closeCodes)")
            }
            if self.connection.compression { printCompression(results) }
            let (cores, cpu) = machineDescription()
            return (.object([
                ("scenario", .string("idle")),
                ("complete", .bool(dropped == 0)),
                ("name", .string(name)),
                ("server", .string(self.connection.serverName)),
                ("protocol", .string(self.connection.wireProtocol.rawValue)),
                ("connections", .int(n)),
                ("setup_s", .number(setupSeconds)),
                ("rss_before_kib", .int(before)),
                ("rss_open_kib", .int(after)),
                ("rss_after_close_kib", afterClose.map { .int($0) } ?? .null),
                ("rss_per_connection_kib", .number(perConnection, 3)),
                ("dropped_connections", .int(dropped)),
                ("server_close_codes", .object(closeCodes.sorted { $0.key < $1.key }.map { (String($0.key), .int($0.value)) })),
                ("compression", compressionSummary(results, offered: self.connection.compression)),
                ("machine", .object([("cores", .int(cores)), ("cpu", .string(cpu))])),
                ("time", .string(ISO8601DateFormatter().string(from: Date()))),
            ]), dropped == 0)
        }
        if let path = self.json {
            try outcome.write(to: path)
            print("  → \(path)")
        }
        if !complete {
            print("  INCOMPLETE: connections were lost while idle")
            throw ExitCode(3)
        }
    }
}

// MARK: - report

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print result JSON files as markdown tables.")

    @Option(help: "Machine description to print (default: cores and CPU model of this machine).")
    var machine: String?

    @Argument(help: "Result files written with --json.")
    var files: [String]

    func run() throws {
        var fanouts: [[String: Any]] = []
        var idles: [[String: Any]] = []
        var subscribes: [[String: Any]] = []
        var mutations: [[String: Any]] = []
        var machine: [String: Any]?
        for file in self.files {
            guard let data = FileManager.default.contents(atPath: file),
                  let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            else {
                print("(skipping unreadable \(file))")
                continue
            }
            if machine == nil { machine = object["machine"] as? [String: Any] }
            switch object["scenario"] as? String {
            case "fanout": fanouts.append(object)
            case "idle": idles.append(object)
            case "subscribe": subscribes.append(object)
            case "mutate", "pgbench": mutations.append(object)
            default: break
            }
        }
        let (cores, cpu) = machineDescription()
        let m = machine ?? ["cores": cores, "cpu": cpu]
        let described = self.machine ?? "\(m["cores"] ?? cores) cores, \(m["cpu"] ?? cpu)"
        print("Machine: \(described); server, PostgreSQL and load client share these cores (loopback).")
        print("")
        func num(_ o: [String: Any], _ k: String) -> Double? { (o[k] as? NSNumber)?.doubleValue }
        func cell(_ v: Double?, _ digits: Int = 2) -> String { v.map { fmt($0, digits) } ?? "–" }
        func big(_ v: Double?) -> String { v.map { grouped($0) } ?? "–" }
        if !fanouts.isEmpty {
            print("| scenario | subscribers | changes | rate | commits/s | deliveries | missing | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | server CPU s | deliveries / server CPU-s | client CPU s |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for o in fanouts {
                let lat = o["latency_ms"] as? [String: Any] ?? [:]
                let rate = num(o, "rate") ?? 0
                let timedOut = (o["timed_out"] as? Bool) == true ? " (timed out)" : ""
                print("| \(o["name"] ?? "fanout") | \(big(num(o, "subscribers"))) | \(big(num(o, "changes"))) | \(rate > 0 ? "\(fmt(rate, 0))/s" : "flat out") | \(big(num(o, "commits_per_s"))) | \(big(num(o, "deliveries"))) | \(big(num(o, "missing")))\(timedOut) | \(big(num(o, "deliveries_per_s"))) | \(cell(num(lat, "p50"))) | \(cell(num(lat, "p99"))) | \(cell(num(lat, "p999"))) | \(cell(num(lat, "max"))) | \(cell(num(o, "server_cpu_s"))) | \(big(num(o, "deliveries_per_server_cpu_s"))) | \(cell(num(o, "client_cpu_s"))) |")
            }
            print("")
        }
        if !idles.isEmpty {
            print("| scenario | connections | setup s | server RSS before MiB | RSS open MiB | KiB / idle connection |")
            print("|---|---:|---:|---:|---:|---:|")
            for o in idles {
                print("| \(o["name"] ?? "idle") | \(big(num(o, "connections"))) | \(cell(num(o, "setup_s"))) | \(cell(num(o, "rss_before_kib").map { $0 / 1024 }, 1)) | \(cell(num(o, "rss_open_kib").map { $0 / 1024 }, 1)) | \(cell(num(o, "rss_per_connection_kib"))) |")
            }
            print("")
        }
        if !subscribes.isEmpty {
            print("| scenario | subscribers | feeds | all have their snapshot s | subscribes/s | server CPU s |")
            print("|---|---:|---|---:|---:|---:|")
            for o in subscribes {
                print("| \(o["name"] ?? "subscribe") | \(big(num(o, "subscribers"))) | \(o["feeds"] ?? "–") | \(cell(num(o, "setup_s"))) | \(big(num(o, "subscribes_per_s"))) | \(cell(num(o, "server_cpu_s"))) |")
            }
            print("")
        }
        if !mutations.isEmpty { MutationReport(runs: mutations).print() }
    }
}

/// Opens `count` connections and returns how long that took; if any did not get what it waited for,
/// reports them, closes everything (and runs `onFailure`) and exits with status 2.
func openAllOrFail(
    factory: ConnectionFactory, count: Int, concurrency: Int, waitingFor what: String,
    onFailure: () async -> Void = {}
) async throws -> Double {
    let start = monotonicSeconds()
    let (failures, errors) = await openConnections(factory: factory, count: count, concurrency: concurrency, progress: count >= 2000)
    let seconds = monotonicSeconds() - start
    if failures > 0 {
        print("  setup FAILED: \(failures) of \(count) connections did not get \(what)")
        for e in errors { print("    \(e)") }
        await closeAll(loops: factory.loops, states: factory.states, timeoutSeconds: 2)
        await onFailure()
        throw ExitCode(2)
    }
    return seconds
}

// MARK: - compression figures

/// What the connections negotiated and how many bytes data messages took on the wire vs inflated.
func compressionSummary(_ results: [LoopResults], offered: Bool) -> JSONOut {
    var negotiated: [NegotiatedCompression: Int] = [:]
    for r in results { for (k, v) in r.negotiated { negotiated[k, default: 0] += v } }
    let wire = results.reduce(0) { $0 + $1.wireBytes }
    let inflated = results.reduce(0) { $0 + $1.messageBytes }
    return .object([
        ("offered", .bool(offered)),
        ("negotiated", .object(negotiated.sorted { $0.key.rawValue < $1.key.rawValue }.map { ($0.key.label, .int($0.value)) })),
        ("compressed_messages", .int(results.reduce(0) { $0 + $1.compressedMessages })),
        ("wire_bytes", .int(wire)),
        ("message_bytes", .int(inflated)),
        ("wire_ratio", .number(inflated > 0 ? Double(wire) / Double(inflated) : 0, 4)),
    ])
}

func printCompression(_ results: [LoopResults]) {
    var negotiated: [NegotiatedCompression: Int] = [:]
    for r in results { for (k, v) in r.negotiated { negotiated[k, default: 0] += v } }
    let wire = results.reduce(0) { $0 + $1.wireBytes }
    let inflated = results.reduce(0) { $0 + $1.messageBytes }
    let compressed = results.reduce(0) { $0 + $1.compressedMessages }
    let modes = negotiated.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.label): \($0.value)" }.joined(separator: ", ")
    print("  compression: negotiated \(modes); \(grouped(Double(compressed))) compressed messages; "
        + "\(grouped(Double(wire))) bytes on the wire for \(grouped(Double(inflated))) bytes of messages"
        + (inflated > 0 ? " (\(fmt(100 * Double(wire) / Double(inflated), 1)) %)" : ""))
}
