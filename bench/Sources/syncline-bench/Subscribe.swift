import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

/// `subscribe`: N clients subscribe at once; the time until every one has its snapshot
/// (`done: true`; for a bridge, which has no snapshot: its WebSocket open). Either all on one feed
/// (`alice-checking`) or each on its own (`--own-feeds`: user `bench<n>` on `bench-<n>`). This is
/// the after-a-deploy case: most clients of a busy feed wait for their first rows this long.
struct Subscribe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N clients subscribe at once: time until every one has its snapshot (one feed, or --own-feeds).")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Subscriber connections.")
    var subscribers: Int = 10_000

    @Flag(help: "Subscriber n (1 … N) is user bench<n> on its own account bench-<n> (bench/sql/setup.sql); with --protocol peer, ?account=bench-<n> is appended to --url.")
    var ownFeeds = false

    @Option(help: "The account_id of the one feed (without --own-feeds).")
    var account: String = "alice-checking"

    @Option(help: "With --cleanup: PostgreSQL URL of the server's database.")
    var databaseURL: String?

    @Flag(help: "Delete earlier runs' rows of the feeds first (as fanout --cleanup does), so snapshots stay small and every run sends the same.")
    var cleanup = false

    @Option(help: "PID of the server, for its CPU time (/proc/<pid>/stat).")
    var serverPid: Int32?

    @Option(help: "Scenario name for the report.")
    var name: String?

    @Option(help: "Write the results as a JSON object to this file.")
    var json: String?

    func validate() throws {
        guard self.subscribers > 0 else { throw ValidationError("--subscribers must be > 0") }
        if self.connection.wireProtocol == .notify { throw ValidationError("--protocol notify is for fanout only") }
        if self.cleanup && self.databaseURL == nil { throw ValidationError("--cleanup needs --database-url") }
    }

    func run() async throws {
        try ensureFileLimit(self.subscribers + 256)
        let n = self.subscribers
        let name = self.name ?? "subscribe-\(n)-\(self.ownFeeds ? "own-feeds" : "one-feed")"
        print("[\(name)] \(n) subscribers\(self.ownFeeds ? " on their own feeds" : " of one feed"), "
            + "\(self.connection.connectConcurrency) setting up at once, \(self.connection.threads) client threads")
        if self.cleanup, let url = self.databaseURL {
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            do {
                let writer = try await ChangeWriter.connect(url: url, on: group.next())
                let deleted = self.ownFeeds
                    ? try await writer.deletePreviousRows(accountPrefix: FeedSettings().accountPrefix)
                    : try await writer.deletePreviousRows(account: self.account)
                await writer.close()
                if deleted > 0 { print("  cleanup: deleted \(deleted) rows of earlier runs") }
            } catch {
                try? await group.shutdownGracefully()
                throw error
            }
            try? await group.shutdownGracefully()
        }
        let subscribe = #"{"type":"subscribe","id":"t","collection":"transactions","where":{"account_id":"\#(self.account)"}}"#
        let cpuBefore = self.serverPid.flatMap { ProcFS.cpuSeconds(pid: $0) }
        let outcome: JSONOut = try await self.connection.withClient(
            mode: self.ownFeeds ? .feeds(FeedSettings()) : .subscribe(frame: subscribe),
            expected: 1, clientIDPrefix: runID()
        ) { factory in
            let seconds = try await openAllOrFail(factory: factory, count: n, concurrency: self.connection.connectConcurrency,
                                                  waitingFor: self.connection.wireProtocol == .peer ? "their WebSocket" : "their snapshot")
            let serverCPU = cpuBefore.flatMap { b in self.serverPid.flatMap { ProcFS.cpuSeconds(pid: $0) }.map { $0 - b } }
            print("  all \(n) have their snapshot after \(fmt(seconds)) s (\(grouped(Double(n) / seconds)) /s)"
                + (serverCPU.map { "; server CPU \(fmt($0)) s" } ?? ""))
            await closeAll(loops: factory.loops, states: factory.states, timeoutSeconds: 10)
            let (cores, cpu) = machineDescription()
            return .object([
                ("scenario", .string("subscribe")),
                ("complete", .bool(true)),
                ("name", .string(name)),
                ("feeds", .string(self.ownFeeds ? "own" : "one")),
                ("server", .string(self.connection.serverName)),
                ("protocol", .string(self.connection.wireProtocol.rawValue)),
                ("subscribers", .int(n)),
                ("connect_concurrency", .int(self.connection.connectConcurrency)),
                ("setup_s", .number(seconds, 3)),
                ("subscribes_per_s", .number(Double(n) / seconds, 1)),
                ("server_cpu_s", .optional(serverCPU)),
                ("machine", .object([("cores", .int(cores)), ("cpu", .string(cpu))])),
                ("time", .string(ISO8601DateFormatter().string(from: Date()))),
            ])
        }
        if let path = self.json {
            try outcome.write(to: path)
            print("  → \(path)")
        }
    }
}
