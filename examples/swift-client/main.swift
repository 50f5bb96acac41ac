// A console app on SynclineClient: a live query of one account, and transfers typed at the prompt.
// It works offline: rows come from its SQLite store at once, transfers are queued durably and sent
// (exactly once) when the server is back, also after the app was killed and started again.
//
//   swift run syncline serve --demo --insecure-dev-auth        # another terminal
//   swift run syncline-swift-client-example --account alice-checking
//   > transfer bob-checking 12.50 lunch
//
// Commands: `transfer <to> <amount> [memo]`, `rows`, `status`, `wait` (until nothing is pending), `quit`.
import Foundation
import SynclineClient

struct Options {
    var url = "ws://127.0.0.1:8080/v1/sync"
    var sub = "alice"
    var account = "alice-checking"
    var store = ".syncline-swift-client.sqlite"
    var tokenURL: String?
    var devToken = false

    init(_ arguments: [String]) {
        var it = arguments.makeIterator()
        while let arg = it.next() {
            switch arg {
            case "--url": url = it.next() ?? url
            case "--sub": sub = it.next() ?? sub
            case "--account": account = it.next() ?? account
            case "--store": store = it.next() ?? store
            case "--token-url": tokenURL = it.next()
            case "--dev-token": devToken = true
            default:
                FileHandle.standardError.write(Data("unknown option \(arg)\n".utf8))
                exit(2)
            }
        }
    }
}

/// One line to stdout, written at once (tests read it through a pipe).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

let options = Options(Array(CommandLine.arguments.dropFirst()))
let tokenURL = options.tokenURL ?? options.url.replacingOccurrences(of: "ws://", with: "http://")
    .replacingOccurrences(of: "wss://", with: "https://").replacingOccurrences(of: "/v1/sync", with: "/demo/token")
let store = try await SQLiteClientStore(path: options.store)
let client = SynclineClient(url: options.url, tokenProvider: { [options] in
    options.devToken ? DevToken.unsigned(sub: options.sub) : try await DevToken.fromDemoServer(tokenURL, sub: options.sub)
}, store: store)

// The transfer's optimistic effect: re-run over the confirmed rows until the server decides.
client.register(mutator: "transfer") { rows, args in
    guard let from = args["from"], let to = args["to"], let amount = args["amount"] else { return }
    rows.update("accounts", key: ["id": from]) { $0 = $0.setting("balance", to: $0["balance"]?.subtracting(amount) ?? .null) }
    rows.update("accounts", key: ["id": to]) { $0 = $0.setting("balance", to: $0["balance"]?.adding(amount) ?? .null) }
}

let query = try await client.subscribe(collection: "accounts", where: ["id": .string(options.account)])
func show() {
    for row in query.rows {
        let pending = query.isPending(key: ["id": row["id"] ?? .null]) ? " (pending)" : ""
        say("row \(row["id"]?.stringValue ?? "?") balance=\(row["balance"]?.numberText ?? "?")\(pending)")
    }
}
Task.detached {
    for await event in query.events() {
        switch event {
        case .snapshot, .reset, .resynced, .changes: show()
        case .live: say("live")
        case .cursor: break
        case .ended(let code, let message): say("query ended: \(code) \(message)")
        }
    }
}
Task.detached {
    for await outcome in client.outcomes {
        switch outcome.decision {
        case .acked: say("outcome mid=\(outcome.mid) acked")
        case .rejected(let rejection): say("outcome mid=\(outcome.mid) rejected code=\(rejection.code)")
        case .expired: say("outcome mid=\(outcome.mid) expired")
        }
    }
}
Task.detached {
    for await status in client.statusUpdates() { say("status \(status.state.rawValue) pending=\(status.pending)") }
}

// readLine blocks; on a detached task it leaves the main actor (and the tasks above) free.
while let line = await Task.detached(operation: { readLine() }).value {
    let words = line.split(separator: " ").map(String.init)
    switch words.first {
    case "transfer" where words.count >= 3:
        let args: JSONValue = [
            "from": .string(options.account), "to": .string(words[1]), "amount": .number(words[2]),
            "memo": .string(words.dropFirst(3).joined(separator: " ")),
        ]
        do {
            let pending = try await client.enqueue("transfer", args: args)
            say("queued mid=\(pending.mid)")
            show()
            Task.detached {
                do {
                    let result = try await pending.result
                    say("acked mid=\(pending.mid) result=\(result.jsonText)")
                } catch let rejected as MutationRejected {
                    say("rejected mid=\(pending.mid) code=\(rejected.code) \(rejected.message)")
                } catch {
                    say("failed mid=\(pending.mid) \(error)")
                }
            }
        } catch {
            say("not queued: \(error)")
        }
    case "rows": show()
    case "status": say("status \(client.status.state.rawValue) pending=\(client.status.pending)")
    case "wait":
        while client.status.pending > 0 { try await Task.sleep(for: .milliseconds(20)) }
        say("idle")
    case "quit": break
    default: say("commands: transfer <to> <amount> [memo] | rows | status | wait | quit")
    }
    if words.first == "quit" { break }
}
await client.close()
try await store.close()
