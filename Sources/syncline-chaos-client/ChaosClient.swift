import ArgumentParser
import Crypto
import Foundation
import NIOConcurrencyHelpers
import SynclineClient

/// N SynclineClient instances in one process for scripts/chaos: mixed feeds, transfers tagged with
/// "<client_id>:<mid>" memos, and each client's history recorded (scripts/check-history's format)
/// through the SDK's observer hook.
///
/// Control: the harness writes `quiesce` into --control: no new mutations; once every client has
/// nothing pending and is live (or --settle-timeout passes), each client's end line is written,
/// a summary is printed as one JSON line, and the process exits.
@main
struct ChaosClient: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "syncline-chaos-client",
                                                    abstract: "Chaos-test clients on SynclineClient (scripts/chaos).")

    @Option(help: "WebSocket URL (the fault proxy in front of haproxy).")
    var url: String

    @Option(help: "Number of clients.")
    var clients = 200

    @Option(help: "Number of users (u0…); clients share users round-robin.")
    var users = 40

    @Option(name: .customLong("accounts-per-user"), help: "Accounts each user owns in the schema (u7-0, u7-1, …).")
    var accountsPerUser = 2

    @Option(name: .customLong("jwt-secret"), help: "The nodes' HS256 secret.")
    var jwtSecret: String

    @Option(help: "Folder for the histories (one <client_id>.jsonl each).")
    var out: String

    @Option(help: "File the harness writes `quiesce` into.")
    var control: String

    @Option(name: .customLong("mutation-interval-ms"), help: "Mean pause between one client's mutations.")
    var mutationIntervalMS = 2_000

    @Option(name: .customLong("rows-every"), help: "Record the rows with every Nth saved cursor of a feed (1 = all).")
    var rowsEvery = 10

    @Option(name: .customLong("settle-timeout"), help: "Seconds to wait after quiesce for every client to be live with nothing pending.")
    var settleTimeout = 120.0

    @Option(name: .customLong("tail-seconds"), help: "Seconds to keep receiving after settling (late deliveries, idle advances).")
    var tailSeconds = 5.0

    func run() async throws {
        guard clients >= 1, users >= 1, accountsPerUser >= 1, rowsEvery >= 1 else {
            throw ValidationError("--clients, --users, --accounts-per-user and --rows-every must be at least 1")
        }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let secret = SymmetricKey(data: Data(jwtSecret.utf8))
        var started: [(Recorder, SynclineClient, Task<Void, Never>)] = []
        let quiesced = NIOLockedValueBox(false)
        for i in 0..<clients {
            let user = "u\(i % users)"
            let clientID = "chaos\(i)"
            let recorder = try Recorder(path: "\(out)/\(clientID).jsonl", client: clientID, rowsEvery: rowsEvery)
            var configuration = SynclineClient.Configuration()
            configuration.backoffCap = .seconds(3)
            configuration.observer = { recorder.record($0) }
            configuration.logger.logLevel = .error
            let client = SynclineClient(url: url, tokenProvider: { Self.token(sub: user, secret: secret) },
                                        store: MemoryClientStore(StoredState(clientID: clientID)), configuration: configuration)
            // Mixed feeds: own accounts (owner filter), one account's ledger, the gold tier (rows move
            // in and out as balances cross the line), and the user's topic.
            _ = try await client.subscribe(collection: "accounts", where: ["owner": .string(user)])
            _ = try await client.subscribe(collection: "ledger", where: ["account_id": .string("\(user)-\(i % accountsPerUser)")])
            if i % 3 == 0 { _ = try await client.subscribe(collection: "accounts", where: ["tier": "gold"]) }
            if i % 2 == 0 { _ = try await client.subscribe(topic: "user:\(user)") }
            let task = Task {
                await Self.mutate(client: client, clientID: clientID, user: user, index: i, users: users,
                                  accountsPerUser: accountsPerUser, intervalMS: mutationIntervalMS, recorder: recorder, quiesced: quiesced)
            }
            started.append((recorder, client, task))
        }
        let flusher = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                for (recorder, _, _) in started { recorder.flush() }
            }
        }
        while (try? String(contentsOfFile: control, encoding: .utf8))?.contains("quiesce") != true {
            try await Task.sleep(for: .milliseconds(200))
        }
        quiesced.withLockedValue { $0 = true }
        for (_, _, task) in started { await task.value }
        let deadline = Date().addingTimeInterval(settleTimeout)
        var settled = false
        while Date() < deadline {
            if started.allSatisfy({ $0.1.status.state == .live && $0.1.status.pending == 0 }) {
                settled = true
                break
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        try await Task.sleep(for: .seconds(tailSeconds))
        flusher.cancel()
        var states: [String: Int] = [:]
        var pending = 0, enqueued = 0, midMismatches = 0
        for (recorder, client, _) in started {
            let status = client.status
            states[status.state.rawValue, default: 0] += 1
            pending += status.pending
            recorder.end(status: status)
            enqueued += recorder.enqueued
            midMismatches += recorder.midMismatches
            await client.close()
            recorder.flush()
        }
        let summary: [String: Any] = ["settled": settled, "states": states, "pending": pending, "enqueued": enqueued,
                                      "mid_mismatches": midMismatches, "clients": clients]
        let data = try JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    }

    static func mutate(client: SynclineClient, clientID: String, user: String, index: Int, users: Int, accountsPerUser: Int,
                       intervalMS: Int, recorder: Recorder, quiesced: NIOLockedValueBox<Bool>) async {
        var nextMID: Int64 = 1
        while !quiesced.withLockedValue({ $0 }) {
            try? await Task.sleep(for: .milliseconds(Int.random(in: max(1, intervalMS / 2)...max(1, intervalMS * 3 / 2))))
            if quiesced.withLockedValue({ $0 }) { break }
            let from = "\(user)-\(Int.random(in: 0..<accountsPerUser))"
            let to = "u\(Int.random(in: 0..<users))-\(Int.random(in: 0..<accountsPerUser))"
            guard from != to else { continue }
            // Cents as an exact decimal; now and then more than any balance holds (a reject).
            let cents = Int.random(in: 0..<20) == 0 ? 10_000_000 : Int.random(in: 100...9_000)
            let amount = JSONValue.number(String(format: "%d.%02d", cents / 100, cents % 100))
            let memo = "\(clientID):\(nextMID)"
            let args: JSONValue = .object([("from", .string(from)), ("to", .string(to)), ("amount", amount), ("memo", .string(memo))])
            do {
                let pending = try await client.enqueue("transfer", args: args)
                recorder.enqueued += 1
                if pending.mid != nextMID { recorder.midMismatches += 1 }
                nextMID = pending.mid + 1
            } catch {
                break  // the client stopped (store failure): nothing more can be queued
            }
        }
    }

    /// An HS256 JWT for `sub`, valid for an hour.
    static func token(sub: String, secret: SymmetricKey) -> String {
        func b64(_ data: Data) -> String {
            data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                .replacingOccurrences(of: "=", with: "")
        }
        let header = b64(Data("{\"alg\":\"HS256\",\"typ\":\"JWT\"}".utf8))
        let claims = b64(Data("{\"sub\":\"\(sub)\",\"exp\":\(Int(Date().timeIntervalSince1970) + 3600)}".utf8))
        let signature = HMAC<SHA256>.authenticationCode(for: Data("\(header).\(claims)".utf8), using: secret)
        return "\(header).\(claims).\(b64(Data(signature)))"
    }
}
