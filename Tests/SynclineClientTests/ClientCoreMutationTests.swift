import Foundation
@testable import SynclineClient
import SynclineProtocol
import Testing

/// A connected harness with alice's accounts feed live: checking 100.00, savings 50.00.
func liveAccounts(lastMID: Int64 = 0, state: StoredState = StoredState()) -> (CoreHarness, key: String, wire: String) {
    var h = CoreHarness.connected(state: state, lastMID: lastMID)
    h.register("transfer", transferEffect)
    let (key, _) = h.subscribe(accounts)
    let id = h.wireID(key)!
    h.receive("{\"type\":\"subscribed\",\"id\":\"\(id)\",\"mode\":\"snapshot\",\"cursor\":\"E.1\"}")
    h.receive("{\"type\":\"snapshot\",\"sub\":\"\(id)\",\"cursor\":\"E.1\",\"done\":true,\"rows\":[\(account("checking", "100.00")),\(account("savings", "50.00"))]}")
    h.receive("{\"type\":\"changes\",\"sub\":\"\(id)\",\"cursor\":\"E.1\",\"changes\":[],\"live\":true}")
    h.takeSent()
    return (h, key, id)
}

func balance(_ h: CoreHarness, _ key: String, _ id: String) -> String? {
    h.view(key)["{\"id\":\"\(id)\"}"]?["balance"]?.numberText
}

@Suite("Client core: mutations")
struct ClientCoreMutationTests {
    @Test func mutationIsStoredBeforeItIsSent() {
        var (h, _, _) = liveAccounts()
        let queued = h.core.enqueue(name: "transfer", args: ["from": "checking", "to": "savings", "amount": 10], now: h.now)
        let persist = queued.actions.firstIndex { if case .persist(let b) = $0 { return !b.insertMutations.isEmpty } else { return false } }
        let send = queued.actions.firstIndex { if case .send(_, _, let mid) = $0 { return mid == 1 } else { return false } }
        #expect(persist != nil && send != nil && persist! < send!)
        h.run(queued.actions)
        #expect(h.store.mutations.map(\.mid) == [1])
        #expect(h.store.nextMID == 2)
    }

    @Test func ownChangesBeforeTheAckAreNeverCountedTwiceOrZeroTimes() {
        var (h, key, id) = liveAccounts()
        h.published = [:]
        h.enqueue("transfer", ["from": "checking", "to": "savings", "amount": .number("10.50")])
        #expect(balance(h, key, "checking") == "89.50")
        #expect(h.core.feeds[key]!.view["{\"id\":\"checking\"}"]!.pending)
        // The mutation's own changes arrive before its ack (§5): held, the overlay still shows.
        h.receive("{\"type\":\"changes\",\"sub\":\"\(id)\",\"cursor\":\"E.2\",\"changes\":[{\"op\":\"update\",\"key\":{\"id\":\"checking\"},\"row\":\(account("checking", "89.50"))},{\"op\":\"update\",\"key\":{\"id\":\"savings\"},\"row\":\(account("savings", "60.50"))}]}")
        #expect(balance(h, key, "checking") == "89.50")
        #expect(balance(h, key, "savings") == "60.50")
        #expect(h.store.feeds.first?.cursor == "E.1")  // nothing stored that the store's overlay would double
        h.receive("{\"type\":\"ack\",\"mid\":1,\"cursor\":\"E.2\",\"result\":{\"balance\":89.50}}")
        #expect(balance(h, key, "checking") == "89.50")
        #expect(balance(h, key, "savings") == "60.50")
        #expect(h.core.feeds[key]!.view["{\"id\":\"checking\"}"]!.pending == false)
        #expect(h.store.feeds.first?.cursor == "E.2")
        #expect(h.store.mutations.isEmpty)
        #expect(h.decided.count == 1)
        #expect(h.decided[0].1 == .acked(result: ["balance": .number("89.50")], cursor: "E.2"))
        // Every published state along the way showed the transfer exactly once.
        var shown: [String: String] = ["checking": "100.00", "savings": "50.00"]
        for event in h.published[key] ?? [] {
            guard case .changes(let changes) = event else { continue }
            for change in changes { shown[change.key["id"]!.stringValue!] = change.row?["balance"]?.numberText }
            #expect(shown["checking"] == "89.50")
            #expect(shown["savings"] == "60.50")
        }
    }

    @Test func pipelinedMutationsSharingACommitAreCountedOnce() {
        var (h, key, id) = liveAccounts()
        h.enqueue("transfer", ["from": "checking", "to": "savings", "amount": 1])
        h.enqueue("transfer", ["from": "checking", "to": "savings", "amount": 2])
        #expect(balance(h, key, "checking") == "97.00")
        h.receive("{\"type\":\"changes\",\"sub\":\"\(id)\",\"cursor\":\"E.9\",\"changes\":[{\"op\":\"update\",\"key\":{\"id\":\"checking\"},\"row\":\(account("checking", "97.00"))}]}")
        h.receive("{\"type\":\"ack\",\"mid\":1,\"cursor\":\"E.9\",\"result\":null}")
        #expect(balance(h, key, "checking") == "97.00")  // not 95.00: mid 2's effect is in the held changes too
        h.receive("{\"type\":\"ack\",\"mid\":2,\"cursor\":\"E.9\",\"result\":null}")
        #expect(balance(h, key, "checking") == "97.00")
        #expect(h.core.mutations.isEmpty)
    }

    @Test func rejectDropsTheOverlayAtOnceAndReportsTheCode() {
        var (h, key, _) = liveAccounts()
        let (local, _) = h.enqueue("transfer", ["from": "checking", "to": "savings", "amount": 500])
        #expect(balance(h, key, "checking") == "-400.00")
        h.receive("{\"type\":\"reject\",\"mid\":1,\"code\":\"insufficient_funds\",\"message\":\"too low\",\"details\":{\"balance\":100.00}}")
        #expect(balance(h, key, "checking") == "100.00")
        #expect(h.decided.first?.0 == local)
        #expect(h.decided.first?.1 == .rejected(MutationRejected(code: "insufficient_funds", message: "too low", details: ["balance": .number("100.00")])))
        #expect(h.store.mutations.isEmpty)
        #expect(h.statuses.last?.pending == 0)
    }

    @Test func unavailableResendsFromTheFirstUndecidedInOrderAfterRetryAfter() {
        var (h, _, _) = liveAccounts()
        for amount in [1, 2, 3] { h.enqueue("transfer", ["from": "checking", "to": "savings", "amount": .number(String(amount))]) }
        #expect(h.takeSent().compactMap { $0["mid"]?.int64 } == [1, 2, 3])
        h.receive("{\"type\":\"error\",\"code\":\"unavailable\",\"message\":\"x\",\"ref\":1,\"retry_after_ms\":500}")
        h.enqueue("transfer", ["from": "checking", "to": "savings", "amount": 4])
        #expect(h.takeSent().isEmpty)  // held: mid 4 must not overtake 1–3
        h.receive("{\"type\":\"error\",\"code\":\"unavailable\",\"message\":\"x\",\"ref\":2}")
        #expect(h.timers[.mutationRetry] == nil)  // still waiting for mid 3's answer
        h.receive("{\"type\":\"error\",\"code\":\"unavailable\",\"message\":\"x\",\"ref\":3}")
        #expect(h.timers[.mutationRetry]!.at == h.now + .milliseconds(500))
        h.fire(.mutationRetry)
        #expect(h.takeSent().compactMap { $0["mid"]?.int64 } == [1, 2, 3, 4])
        h.receive("{\"type\":\"ack\",\"mid\":1,\"cursor\":\"E.3\",\"result\":null,\"duplicate\":true}")
        #expect(h.core.mutations.first?.mid == 1)  // kept until its effect is published with mids 2–4
    }

    @Test func rateLimitedAndOutOfOrderAlsoResend() {
        var (h, _, _) = liveAccounts()
        h.enqueue("transfer", ["from": "checking", "to": "savings", "amount": 1])
        h.enqueue("transfer", ["from": "checking", "to": "savings", "amount": 2])
        h.takeSent()
        h.receive("{\"type\":\"ack\",\"mid\":1,\"cursor\":\"E.3\",\"result\":null}")
        h.receive("{\"type\":\"error\",\"code\":\"rate_limited\",\"message\":\"x\",\"ref\":2,\"retry_after_ms\":100}")
        h.fire(.mutationRetry)
        #expect(h.takeSent().compactMap { $0["mid"]?.int64 } == [2])
        h.receive("{\"type\":\"error\",\"code\":\"out_of_order\",\"message\":\"expected mid 3\",\"ref\":2}")
        // Resent from the first undecided mid after a backoff (writing-a-client §5.2).
        #expect(h.timers[.mutationRetry]!.at - h.now <= .milliseconds(500))
        h.fire(.mutationRetry)
        #expect(h.takeSent().compactMap { $0["mid"]?.int64 } == [2])
    }

    @Test func outcomeExpiredIsItsOwnDecision() {
        var (h, key, _) = liveAccounts()
        h.enqueue("transfer", ["from": "checking", "to": "savings", "amount": 1])
        h.receive("{\"type\":\"error\",\"code\":\"outcome_expired\",\"message\":\"pruned\",\"ref\":1}")
        #expect(h.decided.first?.1 == .expired(MutationOutcomeExpired(mid: 1, message: "pruned")))
        #expect(balance(h, key, "checking") == "100.00")
        #expect(h.store.mutations.isEmpty)
    }

    @Test func welcomeBelowTheQueueRenumbersFromLastMIDPlusOne() {
        let state = StoredState(clientID: "c", nextMID: 9, mutations: [
            StoredMutation(mid: 7, name: "transfer", args: ["amount": 1]), StoredMutation(mid: 8, name: "transfer", args: ["amount": 2]),
        ])
        var h = CoreHarness.connected(state: state, lastMID: 3)
        #expect(h.takeSent().compactMap { $0["mid"]?.int64 } == [4, 5])
        #expect(h.store.mutations.map(\.mid) == [4, 5])
        #expect(h.store.mutations.map(\.args) == [["amount": 1], ["amount": 2]])
        #expect(h.store.nextMID == 6)
        let next = h.enqueue("transfer", ["amount": 3])
        #expect(next.mid == 6)
    }

    @Test func welcomeWithNothingQueuedContinuesFromLastMID() {
        var h = CoreHarness.connected(state: StoredState(clientID: "c", nextMID: 12), lastMID: 4)
        #expect(h.enqueue("x", [:]).mid == 5)
    }

    @Test func welcomeAboveAnythingAssignedStopsAndReports() {
        var h = CoreHarness.connected(state: StoredState(clientID: "c", nextMID: 3, mutations: [StoredMutation(mid: 2, name: "x", args: [:])]), lastMID: 9)
        #expect(h.core.link == .stopped)
        #expect(h.reports.contains(.clientIDInUse(lastMID: 9, highestAssigned: 2)))
        #expect(!h.takeSent().contains { $0["type"] == "mutate" })
        #expect(h.store.mutations.count == 1)  // kept, not dropped
    }

    @Test func mutationsFromAnEarlierProcessAreResentAndReportedAsOutcomes() {
        let feed = StoredFeed(spec: accounts, keyColumns: ["id"], cursor: "E.1", rows: [
            StoredRow(key: ["id": "checking"], row: try! JSONParser.parse(account("checking", "100.00")))])
        let state = StoredState(clientID: "c", nextMID: 3, mutations: [StoredMutation(mid: 2, name: "transfer", args: ["from": "checking", "to": "savings", "amount": 5])],
                                feeds: [feed])
        var h = CoreHarness(state: state)
        h.register("transfer", transferEffect)
        let (key, rows) = h.subscribe(accounts)
        // Its overlay shows on the restored rows at once, offline.
        #expect(rows["{\"id\":\"checking\"}"]?.row["balance"]?.numberText == "95.00")
        h.connect(lastMID: 2)
        let sent = h.takeSent()
        #expect(sent.map { $0["type"]?.stringValue } == ["hello", "subscribe", "mutate"])
        #expect(sent[1]["after"] == "E.1")
        let id = h.wireID(key)!
        h.receive("{\"type\":\"subscribed\",\"id\":\"\(id)\",\"mode\":\"resume\",\"cursor\":\"E.1\"}")
        // The resumed feed already carries the mutation's effect (it had committed before the crash).
        h.receive("{\"type\":\"changes\",\"sub\":\"\(id)\",\"cursor\":\"E.4\",\"changes\":[{\"op\":\"update\",\"key\":{\"id\":\"checking\"},\"row\":\(account("checking", "95.00"))}]}")
        #expect(balance(h, key, "checking") == "95.00")
        h.receive("{\"type\":\"ack\",\"mid\":2,\"cursor\":\"E.4\",\"result\":null,\"duplicate\":true}")
        #expect(balance(h, key, "checking") == "95.00")
        #expect(h.decided.count == 1 && h.decided[0].2 == true)
        #expect(h.store.mutations.isEmpty)
        #expect(h.store.feeds.first?.cursor == "E.4")
    }

    @Test func disconnectRequeuesEverythingUndecidedAndDropsHeldChanges() {
        var (h, key, id) = liveAccounts()
        h.enqueue("transfer", ["from": "checking", "to": "savings", "amount": 10])
        h.receive("{\"type\":\"changes\",\"sub\":\"\(id)\",\"cursor\":\"E.2\",\"changes\":[{\"op\":\"update\",\"key\":{\"id\":\"checking\"},\"row\":\(account("checking", "90.00"))}]}")
        h.receive("{\"type\":\"ack\",\"mid\":1,\"cursor\":\"E.2\",\"result\":null}")
        h.enqueue("transfer", ["from": "checking", "to": "savings", "amount": 1])
        h.event(.closed(h.connection, code: nil, reason: "reset"))
        #expect(balance(h, key, "checking") == "89.00")
        h.takeSent()
        h.connect(lastMID: 2)
        let sent = h.takeSent()
        #expect(sent.map { $0["type"]?.stringValue } == ["hello", "subscribe", "mutate"])
        #expect(sent[2]["mid"] == 2)
        #expect(sent[1]["after"] == "E.2")
    }
}
