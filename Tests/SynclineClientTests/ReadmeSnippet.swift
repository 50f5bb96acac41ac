import SynclineClient

/// The README's Swift example, verbatim, compiled with the tests so it cannot rot (not run: it
/// needs `serve --demo`; the same calls are exercised by the integration tests).
enum ReadmeSwiftSnippet {
    static func run() async throws {
        let client = SynclineClient(url: "ws://127.0.0.1:8080/v1/sync",
            tokenProvider: { try await DevToken.fromDemoServer("http://127.0.0.1:8080/demo/token", sub: "alice") },
            store: try await SQLiteClientStore(path: "alice.sqlite"))      // rows, cursors and queue survive restarts
        client.register(mutator: "transfer") { rows, args in               // the optimistic effect, re-run until decided
            rows.update("accounts", key: ["id": args["from"]!]) { $0 = $0.setting("balance", to: $0["balance"]!.subtracting(args["amount"]!)!) }
        }
        let accounts = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
        Task { for await _ in accounts.events() { print(accounts.rows.map { "\($0["id"]!.stringValue!) \($0["balance"]!.numberText!)" }) } }
        let transfer = try await client.enqueue("transfer", args: ["from": "alice-checking", "to": "bob-checking", "amount": .number("1.00")])
        print(try await transfer.result)   // the mutator's result, or throws MutationRejected(code: "insufficient_funds", …)
    }
}
