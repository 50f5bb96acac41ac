import Foundation
@testable import SynclineClient
import SynclineProtocol
import Testing

/// The demo's `transfer` effect: move `amount` between two accounts' balances.
let transferEffect: MutatorEffect = { rows, args in
    guard let from = args["from"], let to = args["to"], let amount = args["amount"] else { return }
    rows.update("accounts", key: ["id": from]) { row in
        if let balance = row["balance"]?.subtracting(amount) { row = row.setting("balance", to: balance) }
    }
    rows.update("accounts", key: ["id": to]) { row in
        if let balance = row["balance"]?.adding(amount) { row = row.setting("balance", to: balance) }
    }
}

let accounts = FeedSpec.collection(name: "accounts", filter: ["owner": "alice"])

func account(_ id: String, _ balance: String, owner: String = "alice") -> String {
    "{\"id\":\"\(id)\",\"owner\":\"\(owner)\",\"balance\":\(balance)}"
}

@Suite("Client core: connection")
struct ClientCoreConnectionTests {
    @Test func helloCarriesClientIDAndTokenThenSubscribesBeforeResending() {
        var h = CoreHarness(state: StoredState(clientID: "dev-1", nextMID: 3, mutations: [StoredMutation(mid: 2, name: "transfer", args: ["amount": 1])],
                                               feeds: [StoredFeed(spec: accounts, keyColumns: ["id"], cursor: "E.10", rows: [])]))
        #expect(h.tokenFetches == 1)
        h.subscribe(accounts)
        h.event(.token(CoreHarness.token(exp: nil), nowSeconds: 0))
        #expect(h.opens == [1])
        h.connection = 1
        h.event(.opened(1))
        let hello = h.takeSent()
        #expect(hello.count == 1)
        #expect(hello[0]["type"] == "hello")
        #expect(hello[0]["client_id"] == "dev-1")
        #expect(hello[0]["token"]?.stringValue?.isEmpty == false)
        h.receive("{\"type\":\"welcome\",\"session\":\"x\",\"heartbeat_ms\":15000,\"last_mid\":1}")
        let sent = h.takeSent()
        #expect(sent.map { $0["type"]?.stringValue } == ["subscribe", "mutate"])
        #expect(sent[0]["after"] == "E.10")
        #expect(sent[1]["mid"] == 2)
    }

    @Test func closeCodesChooseHowToReconnect() {
        for (code, immediate) in [(UInt16(1001), true), (4008, true), (4001, true), (1011, false), (1013, false), (1000, false)] {
            var h = CoreHarness.connected()
            h.event(.closed(h.connection, code: code, reason: ""))
            #expect(h.core.link == .waiting)
            #expect(h.statuses.last?.state == .offline)
            let delay = h.timers[.reconnect]!.at - h.now
            if immediate { #expect(delay == .zero, "close \(code)") } else { #expect(delay <= .milliseconds(250), "close \(code)") }
            if code == 4001 {
                #expect(h.core.token == nil)
                h.fire(.reconnect)
                #expect(h.tokenFetches == 2)
            }
        }
    }

    @Test func backoffHasFullJitterAndACap() {
        var h = CoreHarness.connected()
        var delays: [Duration] = []
        for _ in 0..<12 {
            h.event(.closed(h.connection, code: nil, reason: "reset"))
            delays.append(h.timers[.reconnect]!.at - h.now)
            h.fire(.reconnect)
            h.connection = h.opens.last!
        }
        #expect(delays.allSatisfy { $0 <= .seconds(10) })
        #expect(Set(delays).count > 6)  // jittered, not a fixed ladder
        #expect(delays[0] <= .milliseconds(250))
    }

    @Test func forbiddenCloseStopsAndReports() {
        var h = CoreHarness.connected()
        h.event(.closed(h.connection, code: 4003, reason: "client_id owned by another user"))
        #expect(h.core.link == .stopped)
        #expect(h.statuses.last?.state == .offline)  // stopped for good, but only close() says .stopped
        #expect(h.reports.contains { if case .forbidden = $0 { return true } else { return false } })
        #expect(h.timers[.reconnect] == nil)
    }

    @Test func silenceSendsPingAndNoPongReconnects() {
        var h = CoreHarness.connected(heartbeatMS: 2000)
        h.takeSent()
        h.advance(to: .milliseconds(2000))
        #expect(h.takeSent().map { $0["type"] } == ["ping"])
        h.advance(to: .milliseconds(3000))
        #expect(h.closes.isEmpty)
        h.advance(to: .milliseconds(4001))
        #expect(h.closes == [h.connection])
        #expect(h.core.link == .waiting)
    }

    @Test func anyMessageKeepsTheConnectionAlive() {
        var h = CoreHarness.connected(heartbeatMS: 2000)
        h.takeSent()
        h.advance(to: .milliseconds(2000))
        #expect(h.takeSent().count == 1)
        h.receive("{\"type\":\"pong\"}")
        h.advance(to: .milliseconds(4100))
        #expect(h.closes.isEmpty)
        #expect(h.takeSent().map { $0["type"] } == ["ping"])
    }

    @Test func tokenIsRefreshedBeforeExpiryAndSentInBand() {
        var h = CoreHarness()
        h.event(.token(CoreHarness.token(exp: 1_000 + 600), nowSeconds: 1_000))
        h.connection = h.opens.last!
        h.event(.opened(h.connection))
        h.receive("{\"type\":\"welcome\",\"session\":\"s\",\"heartbeat_ms\":15000,\"last_mid\":0}")
        h.takeSent()
        let refresh = h.timers[.tokenRefresh]!.at
        #expect(refresh == .seconds(570))
        h.fire(.tokenRefresh)
        #expect(h.tokenFetches == 2)
        h.event(.token("next-token", nowSeconds: 1_570))
        #expect(h.takeSent() == [["type": "auth", "token": "next-token"]])
    }

    @Test func connectTimeoutGivesUp() {
        var h = CoreHarness()
        h.event(.token("t", nowSeconds: 0))
        h.advance(to: .seconds(9))
        #expect(h.closes.isEmpty)
        h.fire(.connectTimeout)
        #expect(h.closes == [1])
        #expect(h.core.link == .waiting)
    }
}

@Suite("Client core: live queries")
struct ClientCoreFeedTests {
    @Test func snapshotThenChangesAreStoredWithTheirCursorAndPublished() {
        var h = CoreHarness.connected()
        let (key, rows) = h.subscribe(accounts)
        #expect(rows.isEmpty)
        let id = h.wireID(key)!
        h.receive("{\"type\":\"subscribed\",\"id\":\"\(id)\",\"mode\":\"snapshot\",\"cursor\":\"E.5\"}")
        h.receive("{\"type\":\"snapshot\",\"sub\":\"\(id)\",\"cursor\":\"E.5\",\"done\":false,\"rows\":[\(account("a", "1250.00"))]}")
        #expect(h.store.feeds.isEmpty)  // never save the cursor of a chunk with done: false
        h.receive("{\"type\":\"snapshot\",\"sub\":\"\(id)\",\"cursor\":\"E.5\",\"done\":true,\"rows\":[\(account("b", "3"))]}")
        #expect(h.store.feeds.first?.cursor == "E.5")
        #expect(h.store.feeds.first?.rows.count == 2)
        #expect(h.statuses.last?.state == .resyncing)
        h.receive("{\"type\":\"changes\",\"sub\":\"\(id)\",\"cursor\":\"E.5\",\"changes\":[],\"live\":true}")
        #expect(h.statuses.last?.state == .live)
        h.receive("{\"type\":\"changes\",\"sub\":\"\(id)\",\"cursor\":\"E.7\",\"changes\":[{\"op\":\"update\",\"key\":{\"id\":\"a\"},\"row\":\(account("a", "1149.50"))},{\"op\":\"delete\",\"key\":{\"id\":\"b\"},\"row\":null}]}")
        #expect(h.view(key)["{\"id\":\"a\"}"]?["balance"]?.numberText == "1149.50")
        #expect(h.view(key).count == 1)
        #expect(h.store.feeds.first?.cursor == "E.7")
        #expect(h.store.feeds.first?.rows.map(\.row["balance"]) == [.number("1149.50")])
        let events = (h.published[key] ?? []).filter { if case .cursor = $0 { return false } else { return true } }
        #expect((h.published[key] ?? []).contains(.cursor("E.7")))
        #expect(events.count == 3)
        #expect(events[0] == .snapshot([try! JSONParser.parse(account("a", "1250.00")), try! JSONParser.parse(account("b", "3"))]))
        #expect(events[1] == .live)
        #expect(events[2] == .changes([
            RowChange(op: .update, key: ["id": "a"], row: try! JSONParser.parse(account("a", "1149.50")), pending: false),
            RowChange(op: .delete, key: ["id": "b"], row: nil, pending: false),
        ]))
    }

    @Test func resetReplacesAllRows() {
        var h = CoreHarness.connected()
        let (key, _) = h.subscribe(accounts)
        var id = h.wireID(key)!
        h.receive("{\"type\":\"subscribed\",\"id\":\"\(id)\",\"mode\":\"snapshot\",\"cursor\":\"E.5\"}")
        h.receive("{\"type\":\"snapshot\",\"sub\":\"\(id)\",\"cursor\":\"E.5\",\"done\":true,\"rows\":[\(account("a", "1")),\(account("b", "2"))]}")
        h.event(.closed(h.connection, code: 1001, reason: ""))
        h.takeSent()
        h.connect()
        let resubscribe = h.takeSent().first { $0["type"] == "subscribe" }!
        #expect(resubscribe["after"] == "E.5")
        id = resubscribe["id"]!.stringValue!
        h.receive("{\"type\":\"subscribed\",\"id\":\"\(id)\",\"mode\":\"reset\",\"cursor\":\"E.90\"}")
        #expect(h.view(key).count == 2)  // the old rows stay until the new snapshot is complete
        h.receive("{\"type\":\"snapshot\",\"sub\":\"\(id)\",\"cursor\":\"E.90\",\"done\":true,\"rows\":[\(account("c", "9"))]}")
        #expect(Array(h.view(key).keys) == ["{\"id\":\"c\"}"])
        #expect(h.published[key]?.suffix(2) == [.reset([try! JSONParser.parse(account("c", "9"))]), .cursor("E.90")])
        #expect(h.store.feeds.first?.rows.count == 1)
        #expect(h.store.feeds.first?.cursor == "E.90")
    }

    @Test func warmStoreShowsRowsAtOnceAndResumesWithoutSnapshot() {
        let stored = StoredFeed(spec: accounts, keyColumns: ["id"], cursor: "E.40", rows: [StoredRow(key: ["id": "a"], row: try! JSONParser.parse(account("a", "7.25")))])
        var h = CoreHarness(state: StoredState(clientID: "c", feeds: [stored]))
        let (key, rows) = h.subscribe(accounts)
        #expect(rows["{\"id\":\"a\"}"]?.row["balance"]?.numberText == "7.25")
        h.connect()
        let subscribe = h.takeSent().first { $0["type"] == "subscribe" }!
        #expect(subscribe["after"] == "E.40")
        _ = key
    }

    @Test func feedErrorsResubscribeFromTheCursorOrEnd() {
        var h = CoreHarness.connected()
        let (key, _) = h.subscribe(accounts)
        var id = h.wireID(key)!
        h.takeSent()
        h.receive("{\"type\":\"error\",\"code\":\"unavailable\",\"message\":\"db down\",\"ref\":\"\(id)\",\"retry_after_ms\":700}")
        #expect(h.timers[.feedRetry(key)]!.at == .milliseconds(700))
        h.fire(.feedRetry(key))
        let again = h.takeSent()
        #expect(again.count == 1 && again[0]["type"] == "subscribe")
        id = again[0]["id"]!.stringValue!
        h.receive("{\"type\":\"error\",\"code\":\"forbidden\",\"message\":\"no\",\"ref\":\"\(id)\"}")
        #expect(h.published[key]?.last == .ended(code: "forbidden", message: "no"))
        #expect(h.statuses.last?.state == .live)  // an ended feed does not hold the status at resyncing
    }

    @Test func revokedEndsTheFeedAndTopicMessagesAdvanceTheCursor() {
        var h = CoreHarness.connected()
        let (topic, _) = h.subscribe(.topic("user:alice"))
        let id = h.wireID(topic)!
        h.receive("{\"type\":\"subscribed\",\"id\":\"\(id)\",\"mode\":\"snapshot\",\"cursor\":\"E.1\"}")
        h.receive("{\"type\":\"snapshot\",\"sub\":\"\(id)\",\"cursor\":\"E.1\",\"done\":true,\"rows\":[]}")
        h.receive("{\"type\":\"message\",\"sub\":\"\(id)\",\"cursor\":\"E.3\",\"topic\":\"user:alice\",\"payload\":{\"amount\":96.40}}")
        #expect(h.topicEvents[topic]?.filter { if case .cursor = $0 { return false } else { return true } } == [.message(TopicMessage(topic: "user:alice", payload: ["amount": .number("96.40")], cursor: "E.3"))])
        #expect(h.store.feeds.first?.cursor == "E.3")
        h.receive("{\"type\":\"revoked\",\"sub\":\"\(id)\",\"code\":\"forbidden\",\"message\":\"gone\"}")
        #expect(h.topicEvents[topic]?.last == .ended(code: "forbidden", message: "gone"))
    }
}
