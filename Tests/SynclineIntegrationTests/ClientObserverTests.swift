import Foundation
import NIOConcurrencyHelpers
import SynclineClient
import SynclineServer
import Testing

/// The SDK's observer hook (what scripts/chaos records for scripts/check-history), against a real
/// server: every subscribe and mutate sent, every message received, and saved cursors with the
/// rows held at them.
@Suite("Swift client: observer")
struct ClientObserverTests {
    @Test("the observer sees the wire traffic in order and every saved cursor with its rows")
    func observesHistory() async throws {
        try await TestServer.with { server in
            let seen = NIOLockedValueBox<[ClientObservation]>([])
            var configuration = SynclineClient.Configuration()
            configuration.logger.logLevel = .error
            configuration.observer = { observation in seen.withLockedValue { $0.append(observation) } }
            let client = SynclineClient(url: server.url, tokenProvider: { DevToken.unsigned(sub: "alice") },
                                        store: MemoryClientStore(), configuration: configuration)
            _ = try await client.subscribe(collection: "accounts", where: ["owner": "alice"])
            try await eventually("live") { client.status.state == .live }
            let pending = try await client.enqueue("transfer", args: ["from": "alice-checking", "to": "bob-checking", "amount": 1])
            _ = try await pending.result
            try await eventually("the ack observed") {
                seen.withLockedValue { $0 }.contains { if case .received(_, let m) = $0 { m["type"]?.stringValue == "ack" } else { false } }
            }
            await client.close()

            let all = seen.withLockedValue { $0 }
            guard case .connecting(let connection) = all.first else {
                Issue.record("first observation: \(String(describing: all.first))")
                return
            }
            var kinds: [String] = []
            var subscribeID: String?
            for observation in all {
                switch observation {
                case .connecting: kinds.append("connect")
                case .sent(let c, let text):
                    #expect(c == connection)
                    let message = try JSONParser.parse(text)
                    let type = message["type"]?.stringValue ?? "?"
                    if type == "subscribe" { subscribeID = message["id"]?.stringValue }
                    kinds.append("send " + type)
                case .received(let c, let message):
                    #expect(c == connection)
                    kinds.append("recv " + (message["type"]?.stringValue ?? "?"))
                case .saved(let sub, let spec, let cursor, let rows):
                    #expect(sub == subscribeID)
                    #expect(spec == .collection(name: "accounts", filter: ["owner": "alice"]))
                    #expect(cursor.contains("."))
                    // alice's two accounts, confirmed rows only (the overlay is not the server's).
                    #expect(rows?.count == 2)
                    kinds.append("save")
                }
            }
            let order = ["connect", "send hello", "recv welcome", "send subscribe", "recv subscribed", "recv snapshot", "save", "send mutate", "recv ack"]
            var rest = kinds[...]
            for step in order {
                guard let at = rest.firstIndex(of: step) else {
                    Issue.record("no '\(step)' in order in \(kinds)")
                    return
                }
                rest = rest[(at + 1)...]
            }
            // The snapshot's cursor, then the transfer's changes (published with its ack): two saves.
            #expect(kinds.filter { $0 == "save" }.count >= 2, "\(kinds)")
        }
    }
}
