import ArgumentParser
import Foundation
import Histogram
import NIOPosix

// MARK: - pgbench

/// Runs `pgbench` against the server's database with a script that does the same business
/// transaction as the `transfer` mutation, and reports it in the same form as `mutate`:
/// transactions (and transfers) per second over a window after a warm-up, latency percentiles from
/// pgbench's per-transaction log, PostgreSQL CPU.
struct PgBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pgbench",
        abstract: "pgbench with a transfer script, reported like `mutate` (window after a warm-up, p50/p99 from the per-transaction log).")

    @Option(help: "PostgreSQL URL of the server's database.")
    var databaseURL: String

    @Option(help: "pgbench script file.")
    var script: String

    @Option(help: "pgbench clients (connections).")
    var clients: Int = 16

    @Option(help: "pgbench threads (default: min(clients, cores)).")
    var jobs: Int?

    @Option(help: "Seconds measured, after the warm-up.")
    var duration: Double = 10

    @Option(help: "Seconds of load before the measurement starts.")
    var warmup: Double = 2

    @Option(name: .customLong("define"), help: "A pgbench variable, NAME=VALUE (repeatable).")
    var defines: [String] = []

    @Option(help: "Transfers each script transaction applies (the batched script applies K).")
    var transfersPerTransaction: Int = 1

    @Option(help: "pgbench query protocol: simple, extended or prepared.")
    var protocolMode: String = "prepared"

    @Option(help: "PID of the postmaster: CPU time of it and its children over the window.")
    var postgresPid: Int32?

    @Option(help: "The pgbench executable (default: pgbench in `pg_config --bindir`, then PATH).")
    var pgbench: String?

    @Option(help: "Label of this configuration in the report, e.g. `c` or `c-batched`.")
    var variant: String = "c"

    @Option(help: "Number of Syncline clients this run stands for in the report (default: --clients).")
    var reportClients: Int?

    @Option(help: "Scenario name for the report.")
    var name: String?

    @Option(help: "Write the results as a JSON object to this file.")
    var json: String?

    func run() async throws {
        let name = self.name ?? "pgbench-\(self.variant)-\(self.clients)"
        let jobs = self.jobs ?? max(1, min(self.clients, ProcessInfo.processInfo.activeProcessorCount))
        let executable = try self.findPgbench()
        guard let c = URLComponents(string: self.databaseURL), let host = c.host else {
            throw ValidationError("--database-url must look like postgres://user@host:port/database")
        }
        var database = c.path
        if database.hasPrefix("/") { database.removeFirst() }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("syncline-pgbench-\(getpid())-\(Int(Date().timeIntervalSince1970))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }

        // pgbench runs in a scratch directory (its logs land there): the script by absolute path.
        let scriptPath = self.script.hasPrefix("/") ? self.script : FileManager.default.currentDirectoryPath + "/" + self.script
        guard FileManager.default.isReadableFile(atPath: scriptPath) else { throw ValidationError("cannot read --script \(self.script)") }
        let total = Int((self.warmup + self.duration).rounded(.up)) + 1
        var arguments = ["-n", "-M", self.protocolMode, "-c", "\(self.clients)", "-j", "\(jobs)", "-T", "\(total)",
                         "-f", scriptPath, "-l", "--log-prefix=\(dir.path)/pgb",
                         "-h", host, "-p", "\(c.port ?? 5432)", "-U", c.user ?? "postgres"]
        for d in self.defines { arguments += ["-D", d] }
        arguments.append(database.isEmpty ? "postgres" : database)
        print("[\(name)] pgbench \(arguments.joined(separator: " "))")

        let outPath = dir.appendingPathComponent("stdout").path
        let errPath = dir.appendingPathComponent("stderr").path
        let launched = monotonicNanos()
        // posix_spawn with an empty signal mask: this process's threads block most signals, and a
        // child started with Foundation's Process inherits that mask — pgbench then never sees the
        // SIGALRM that ends its -T run.
        let pid = try spawn(executable, arguments, stdout: outPath, stderr: errPath)
        // pgbench needs a moment to open its connections; the CPU window is the launch plus the
        // warm-up, the transaction window (below) is exact.
        try await sleepUntil(launched + UInt64(self.warmup * 1e9) + 200_000_000)
        let cpu0 = self.postgresPid.flatMap { ProcFS.treeCPUSeconds(root: $0) }
        let client0 = ProcFS.cpuSeconds(pid: pid)
        try await sleepUntil(launched + UInt64((self.warmup + self.duration) * 1e9) + 200_000_000)
        let cpu1 = self.postgresPid.flatMap { ProcFS.treeCPUSeconds(root: $0) }
        let client1 = ProcFS.cpuSeconds(pid: pid)
        let status = try await waitForExit(pid, killAfter: launched + UInt64(Double(total + 60) * 1e9))
        let stdout = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let stderr = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""

        // Per-transaction log lines: client_id transaction_no time script_no time_epoch time_us
        // (time = latency in µs, or "failed"/"skipped"; epoch.us = when the transaction ended).
        struct Tx { var end: Int64; var latency: Int64 }
        var txs: [Tx] = []
        var failed = 0
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir.path))?.filter { $0.hasPrefix("pgb.") } ?? []
        for file in files {
            guard let text = try? String(contentsOfFile: dir.appendingPathComponent(file).path, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") {
                let f = line.split(separator: " ")
                guard f.count >= 6, let sec = Int64(f[4]), let usec = Int64(f[5]) else { continue }
                guard let latency = Int64(f[2]) else {
                    failed += 1
                    continue
                }
                txs.append(Tx(end: sec * 1_000_000 + usec, latency: latency))
            }
        }
        let firstStart = txs.map { $0.end - $0.latency }.min() ?? 0
        let windowStart = firstStart + Int64(self.warmup * 1e6)
        let windowEnd = windowStart + Int64(self.duration * 1e6)
        var histogram = Histogram<UInt64>(
            lowestDiscernibleValue: 1, highestTrackableValue: LoopState.histogramMax, numberOfSignificantValueDigits: .three)
        var counted = 0
        for tx in txs where tx.end >= windowStart && tx.end < windowEnd {
            counted += 1
            _ = histogram.record(UInt64(max(0, tx.latency)))
        }
        let lastEnd = txs.map(\.end).max() ?? 0
        let windowCovered = lastEnd >= windowEnd - 500_000
        let tps = Double(counted) / self.duration
        let k = self.transfersPerTransaction
        let transfersPerSecond = tps * Double(k)
        let warnings = stderr.components(separatedBy: "\n").filter { $0.contains("WARNING") }
        let errorLines = stderr.components(separatedBy: "\n").filter { $0.contains("ERROR") || $0.contains("FATAL") || $0.contains("aborted") }
        let reportedFailed = Self.number(after: "number of failed transactions: ", in: stdout) ?? 0
        func ms(_ p: Double) -> Double { Double(histogram.valueAtPercentile(p)) / 1000 }
        let p50 = ms(50), p99 = ms(99), p999 = ms(99.9)
        let maxMs = Double(histogram.max) / 1000
        let postgresCPU = cpu0.flatMap { a in cpu1.map { $0 - a } }
        let clientCPU = client0.flatMap { a in client1.map { $0 - a } }
        let transfers = counted * k
        let per1k = postgresCPU.flatMap { transfers > 0 ? $0 * 1e6 / Double(transfers) : nil }

        print("  \(grouped(Double(counted))) transactions in the \(fmt(self.duration, 1)) s window → \(grouped(tps)) tps × \(k) = \(grouped(transfersPerSecond)) transfers/s (2 cores shared)")
        if histogram.totalCount > 0 {
            print("  transaction latency: p50 \(fmt(p50)) ms, p99 \(fmt(p99)) ms, p99.9 \(fmt(p999)) ms, max \(fmt(maxMs)) ms")
        }
        print("  CPU over the window: PostgreSQL \(postgresCPU.map { fmt($0) } ?? "–") s, pgbench \(clientCPU.map { fmt($0) } ?? "–") s → PostgreSQL \(per1k.map { fmt($0, 0) } ?? "–") ms per 1k transfers")
        let errors = failed + reportedFailed + errorLines.count + warnings.count
        if status != 0 || errors > 0 || !windowCovered {
            print("  anomalies: exit status \(status), failed transactions \(max(failed, reportedFailed)), warnings (failed transfers in a batch) \(warnings.count), error lines \(errorLines.count)\(windowCovered ? "" : ", the log ends before the window does")")
            for line in (errorLines + warnings).prefix(5) { print("    \(line)") }
        }
        let complete = status == 0 && errors == 0 && counted > 0 && windowCovered
        let (cores, cpu) = machineDescription()
        let outcome = JSONOut.object([
            ("scenario", .string("pgbench")),
            ("complete", .bool(complete)),
            ("name", .string(name)),
            ("variant", .string(self.variant)),
            ("clients", .int(self.reportClients ?? self.clients)),
            ("pgbench_clients", .int(self.clients)),
            ("pgbench_jobs", .int(jobs)),
            ("protocol", .string(self.protocolMode)),
            ("script", .string(self.script)),
            ("defines", .array(self.defines.map { .string($0) })),
            ("duration_s", .number(self.duration)),
            ("warmup_s", .number(self.warmup)),
            ("transactions", .int(counted)),
            ("transfers_per_transaction", .int(k)),
            ("tps", .number(tps, 1)),
            ("mutations_per_s", .number(transfersPerSecond, 1)),
            ("latency_ms", .object([
                ("p50", .number(p50)), ("p99", .number(p99)), ("p999", .number(p999)), ("max", .number(maxMs)),
                ("mean", .number(histogram.totalCount > 0 ? histogram.mean / 1000 : 0)),
            ])),
            ("failed_transactions", .int(max(failed, reportedFailed))),
            ("failed_transfers_in_batches", .int(warnings.count)),
            ("exit_status", .int(Int(status))),
            ("postgres_cpu_s", .optional(postgresCPU)),
            ("pgbench_cpu_s", .optional(clientCPU)),
            ("postgres_cpu_ms_per_1k", .optional(per1k, 1)),
            ("machine", .object([("cores", .int(cores)), ("cpu", .string(cpu))])),
            ("time", .string(ISO8601DateFormatter().string(from: Date()))),
        ])
        if let path = self.json {
            try outcome.write(to: path)
            print("  → \(path)")
        }
        if !complete {
            print("  INCOMPLETE: pgbench failed, transfers failed, or no transactions in the window")
            if !stdout.isEmpty { print(stdout.split(separator: "\n").suffix(15).map { "    " + $0 }.joined(separator: "\n")) }
            if !stderr.isEmpty { print(stderr.split(separator: "\n").suffix(10).map { "    " + $0 }.joined(separator: "\n")) }
            throw ExitCode(3)
        }
    }

    private static func number(after prefix: String, in text: String) -> Int? {
        guard let r = text.range(of: prefix) else { return nil }
        return Int(text[r.upperBound...].prefix(while: { $0.isNumber }))
    }

    private func findPgbench() throws -> String {
        if let p = self.pgbench { return p }
        let fm = FileManager.default
        var candidates: [String] = []
        if let bindir = try? runCapture("/bin/sh", ["-c", "pg_config --bindir 2>/dev/null"]) {
            candidates.append(bindir.trimmingCharacters(in: " \n") + "/pgbench")
        }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
            candidates.append("\(dir)/pgbench")
        }
        if let versions = try? fm.contentsOfDirectory(atPath: "/usr/lib/postgresql") {
            for v in versions.sorted().reversed() { candidates.append("/usr/lib/postgresql/\(v)/bin/pgbench") }
        }
        guard let found = candidates.first(where: { fm.isExecutableFile(atPath: $0) }) else {
            throw BenchError("pgbench not found (install postgresql-client or pass --pgbench)")
        }
        return found
    }
}

/// Starts `executable` with `arguments` (paths in them absolute), stdout and stderr to files, with an empty
/// signal mask and default signal actions. Returns its pid.
func spawn(_ executable: String, _ arguments: [String], stdout: String, stderr: String) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attributes, &empty)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for signal in [SIGALRM, SIGINT, SIGTERM, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for a in argv { free(a) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
    guard rc == 0 else { throw BenchError("could not start \(executable): \(String(cString: strerror(rc)))") }
    return pid
}

/// Waits for `pid` (polling, so the async caller does not block a thread); SIGKILL at `killAfter`.
func waitForExit(_ pid: pid_t, killAfter: UInt64) async throws -> Int32 {
    var status: Int32 = 0
    while true {
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid { break }
        if r < 0 { return -1 }
        if monotonicNanos() > killAfter {
            kill(pid, SIGKILL)
            _ = waitpid(pid, &status, 0)
            return -9
        }
        try await Task.sleep(nanoseconds: 50_000_000)
    }
    // WIFEXITED / WEXITSTATUS, spelled out (the macros are not imported).
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -(status & 0x7f)
}

func runCapture(_ executable: String, _ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}
