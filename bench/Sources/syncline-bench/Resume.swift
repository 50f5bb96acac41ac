import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

/// The resume storm: C clients, each on its own account's feed, take their snapshot and save its
/// cursor, then disconnect; while they are away the writer commits M rows spread over their accounts
/// (M / C each, numbered `seq:1` … per account); then all C reconnect at once and subscribe `after`
/// their saved cursor. Measures how long until every client is live again (`subscribed`, mode
/// `resume`) and until every one has all its missed rows, and checks per client that the numbers
/// arrive complete, once each, in order — what a client must be able to rely on after a server
/// restart or a network blip sends everyone back at the same moment.
struct Resume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Resume storm: C clients disconnect, M changes commit, all reconnect at once with their cursors; time to caught up, gap/duplicate check.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "PostgreSQL URL of the server's database (the writer connects to it directly).")
    var databaseURL: String

    @Option(help: "Clients; client n (1 … C) is user bench<n> on account bench-<n> (bench/sql/setup.sql).")
    var clients: Int = 5000

    @Option(help: "Rows committed while the clients are away, spread evenly over their accounts (a multiple of --clients).")
    var changes: Int = 50000

    @Option(help: "Rows per transaction of the writer.")
    var rowsPerCommit: Int = 1000

    @Option(help: "Connections setting up at once during the storm (default: all of them).")
    var stormConcurrency: Int?

    @Option(help: "Seconds to wait, from the first reconnect, for every client to catch up.")
    var timeout: Double = 120

    @Option(help: "PID of the server, for its CPU time (/proc/<pid>/stat).")
    var serverPid: Int32?

    @Option(help: "Scenario name for the report.")
    var name: String?

    @Option(help: "Write the results as a JSON object to this file.")
    var json: String?

    func validate() throws {
        guard self.clients > 0, self.changes > 0, self.changes % self.clients == 0 else {
            throw ValidationError("--changes must be a positive multiple of --clients")
        }
        guard self.rowsPerCommit > 0 else { throw ValidationError("--rows-per-commit must be > 0") }
        guard self.connection.wireProtocol == .syncline else { throw ValidationError("resume needs --protocol syncline (bridges have no cursors)") }
    }

    func run() async throws {
        try ensureFileLimit(self.clients + 256)
        let c = self.clients
        let perAccount = self.changes / c
        let name = self.name ?? "resume-\(c)x\(self.changes)"
        print("[\(name)] \(c) clients on their own feeds, \(self.changes) changes (\(perAccount) each) while away, then all reconnect")
        let writerGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            try await self.run(name: name, perAccount: perAccount, writerGroup: writerGroup)
            try? await writerGroup.shutdownGracefully()
        } catch {
            try? await writerGroup.shutdownGracefully()
            throw error
        }
    }

    private func run(name: String, perAccount: Int, writerGroup: MultiThreadedEventLoopGroup) async throws {
        let c = self.clients
        let writer = try await ChangeWriter.connect(url: self.databaseURL, on: writerGroup.next())
        let feeds = FeedSettings()
        let prefix = runID()

        // 1. Everyone subscribes, saves its snapshot cursor, and leaves.
        let deleted = try await writer.deletePreviousRows(accountPrefix: feeds.accountPrefix)
        if deleted > 0 { print("  cleanup: deleted \(deleted) rows of earlier runs") }
        let (cursors, setupSeconds): ([String], Double) = try await self.connection.withClient(
            mode: .feeds(feeds), expected: 0, clientIDPrefix: prefix
        ) { factory in
            let seconds = try await openAllOrFail(factory: factory, count: c, concurrency: self.connection.connectConcurrency,
                                                  waitingFor: "their snapshot", onFailure: { await writer.close() })
            var byIndex = [String](repeating: "", count: c)
            for (loop, bound) in zip(factory.loops, factory.states) {
                let saved = try await loop.submit { bound.value.cursors }.get()
                for (i, cursor) in saved where Int(i) < c { byIndex[Int(i)] = cursor }
            }
            await closeAll(loops: factory.loops, states: factory.states, timeoutSeconds: 10)
            return (byIndex, seconds)
        }
        let withoutCursor = cursors.filter(\.isEmpty).count
        guard withoutCursor == 0 else {
            await writer.close()
            throw BenchError("\(withoutCursor) of \(c) snapshots carried no cursor")
        }
        print("  phase 1: \(c) clients subscribed and saved their cursors in \(fmt(setupSeconds)) s, then disconnected")

        // 2. The changes they miss.
        let writeSeconds: Double
        do {
            writeSeconds = try await writer.writeSequenced(
                accounts: c, perAccount: perAccount, rowsPerCommit: self.rowsPerCommit, prefix: feeds.accountPrefix)
        } catch {
            await writer.close()
            throw BenchError("writing the missed changes failed: \(String(reflecting: error))")
        }
        await writer.close()
        let transactions = perAccount * ((c + self.rowsPerCommit - 1) / self.rowsPerCommit)
        print("  phase 2: \(self.changes) rows in \(transactions) transactions committed in \(fmt(writeSeconds)) s")

        // 3. The storm: all at once, each `after` its cursor, checking sequence numbers.
        var resumed = feeds
        resumed.after = cursors
        resumed.verifySequence = true
        let concurrency = self.stormConcurrency ?? c
        let (outcome, complete): (JSONOut, Bool) = try await self.connection.withClient(
            mode: .feeds(resumed), expected: perAccount, clientIDPrefix: prefix
        ) { factory in
            let serverCPUBefore = self.serverPid.flatMap { ProcFS.cpuSeconds(pid: $0) }
            let startWall = wallMicros()
            let liveSeconds = try await openAllOrFail(factory: factory, count: c, concurrency: concurrency,
                                                      waitingFor: "subscribed (mode resume)")
            var doneFutures: [EventLoopFuture<Void>] = []
            for (loop, bound) in zip(factory.loops, factory.states) {
                let remaining = max(1, self.timeout - liveSeconds)
                doneFutures.append(loop.flatSubmit { bound.value.startMeasuring(on: loop, timeoutSeconds: remaining) })
            }
            for f in doneFutures { try? await f.get() }
            let serverCPUAfter = self.serverPid.flatMap { ProcFS.cpuSeconds(pid: $0) }
            let results = try await collectResults(loops: factory.loops, states: factory.states)
            var tally = SequenceTally()
            for (loop, bound) in zip(factory.loops, factory.states) {
                let t = try await loop.submit { () -> SequenceTally in
                    var t = bound.value.sequence
                    t.finish(nextSeqs: bound.value.connections.map(\.nextSeq), expected: Int32(perAccount))
                    return t
                }.get()
                tally.add(t)
            }
            await closeAll(loops: factory.loops, states: factory.states, timeoutSeconds: 5)
            return self.report(
                name: name, results: results, tally: tally, setupSeconds: setupSeconds, writeSeconds: writeSeconds,
                liveSeconds: liveSeconds, startWall: startWall,
                serverCPU: serverCPUBefore.flatMap { b in serverCPUAfter.map { $0 - b } })
        }
        if let path = self.json {
            try outcome.write(to: path)
            print("  → \(path)")
        }
        if !complete {
            print("  INCOMPLETE: gaps, duplicates, resets or lost clients (see above)")
            throw ExitCode(3)
        }
    }

    func report(
        name: String, results: [LoopResults], tally: SequenceTally, setupSeconds: Double, writeSeconds: Double,
        liveSeconds: Double, startWall: Int64, serverCPU: Double?
    ) -> (JSONOut, Bool) {
        let deliveries = results.reduce(0) { $0 + $1.deliveries }
        let lastDelivery = results.map(\.lastDelivery).max() ?? 0
        let caughtUp = lastDelivery > startWall ? Double(lastDelivery - startWall) / 1e6 : 0
        let timedOut = results.contains { $0.timedOut }
        let dropped = results.reduce(0) { $0 + $1.dropped }
        let errorFrames = results.reduce(0) { $0 + $1.errorFrames }
        let firstError = results.compactMap(\.firstError).first
        let resets = results.reduce(0) { $0 + $1.resets }
        var closeCodes: [Int: Int] = [:]
        for r in results { for (k, v) in r.closeCodes { closeCodes[k, default: 0] += v } }
        let complete = tally.gaps == 0 && tally.duplicates == 0 && tally.unparsable == 0 && resets == 0
            && dropped == 0 && !timedOut && deliveries == self.changes

        print("  storm: all \(self.clients) live again (subscribed, mode resume) after \(fmt(liveSeconds)) s; all caught up after \(fmt(caughtUp)) s"
            + (timedOut ? " — TIMED OUT" : ""))
        print("  check: \(grouped(Double(deliveries))) of \(grouped(Double(self.changes))) rows; gaps \(tally.gaps) (\(tally.shortConnections) clients short), duplicates or out of order \(tally.duplicates), unparsable \(tally.unparsable), resets \(resets)")
        if let serverCPU { print("  server CPU during the storm: \(fmt(serverCPU)) s") }
        if dropped > 0 || errorFrames > 0 || !closeCodes.isEmpty {
            print("  anomalies: dropped connections \(dropped), error frames \(errorFrames)\(firstError.map { " (first: \($0))" } ?? ""), server closes \(closeCodes)")
        }
        let (cores, cpu) = machineDescription()
        return (.object([
            ("scenario", .string("resume")),
            ("complete", .bool(complete)),
            ("name", .string(name)),
            ("server", .string(self.connection.serverName)),
            ("clients", .int(self.clients)),
            ("changes", .int(self.changes)),
            ("rows_per_commit", .int(self.rowsPerCommit)),
            ("storm_concurrency", .int(self.stormConcurrency ?? self.clients)),
            ("client_threads", .int(self.connection.threads)),
            ("setup_s", .number(setupSeconds)),
            ("write_s", .number(writeSeconds)),
            ("live_s", .number(liveSeconds)),
            ("caught_up_s", .number(caughtUp)),
            ("deliveries", .int(deliveries)),
            ("gaps", .int(tally.gaps)),
            ("short_clients", .int(tally.shortConnections)),
            ("duplicates", .int(tally.duplicates)),
            ("unparsable", .int(tally.unparsable)),
            ("resets", .int(resets)),
            ("timed_out", .bool(timedOut)),
            ("server_cpu_s", .optional(serverCPU)),
            ("dropped_connections", .int(dropped)),
            ("error_frames", .int(errorFrames)),
            ("first_error", firstError.map { .string($0) } ?? .null),
            ("server_close_codes", .object(closeCodes.sorted { $0.key < $1.key }.map { (String($0.key), .int($0.value)) })),
            ("machine", .object([("cores", .int(cores)), ("cpu", .string(cpu))])),
            ("time", .string(ISO8601DateFormatter().string(from: Date()))),
        ]), complete)
    }
}
