import SynclineCore
import SynclineProtocol
import Testing

private let feedA = SnapshotShareKey(feed: .collection("orders", filter: ["account": .string("a")]), claims: #"{"sub":"alice"}"#)
private let feedB = SnapshotShareKey(feed: .collection("orders", filter: ["account": .string("b")]), claims: #"{"sub":"alice"}"#)
private let feedC = SnapshotShareKey(feed: .topic("news"), claims: #"{"sub":"bob"}"#)

/// The reads an action list starts, as (key, waiters).
private func started(_ actions: [SnapshotBatcher<Int>.Action]) -> [(SnapshotBatcher<Int>.ReadID, SnapshotShareKey, [Int])] {
    actions.compactMap { if case .startRead(let id, let key, let waiters) = $0 { return (id, key, waiters) } else { return nil } }
}

private func windows(_ actions: [SnapshotBatcher<Int>.Action]) -> [SnapshotShareKey] {
    actions.compactMap { if case .openWindow(let key) = $0 { return key } else { return nil } }
}

@Suite("Snapshot sharing: claims")
struct SnapshotClaimsTests {
    @Test func ignoresLifetimeAndIdentityOfTheToken() {
        let a = SnapshotShareKey.normalizedClaims(#"{"sub":"alice","exp":100,"iat":1,"nbf":1,"jti":"x","role":"user"}"#)
        let b = SnapshotShareKey.normalizedClaims(#"{"role":"user","jti":"y","sub":"alice","exp":200}"#)
        #expect(a == b)
        #expect(a == #"{"role":"user","sub":"alice"}"#)
    }

    @Test func anyOtherClaimSeparates() {
        let a = SnapshotShareKey.normalizedClaims(#"{"sub":"alice","org":{"id":1,"admin":false}}"#)
        let b = SnapshotShareKey.normalizedClaims(#"{"sub":"alice","org":{"admin":true,"id":1}}"#)
        let c = SnapshotShareKey.normalizedClaims(#"{"sub":"alice","org":{"admin":false,"id":1}}"#)
        #expect(a != b)
        #expect(a == c)  // nested members are sorted too
        #expect(SnapshotShareKey.normalizedClaims(#"{"sub":"alice"}"#) != SnapshotShareKey.normalizedClaims(#"{"sub":"bob"}"#))
    }

    @Test func numbersKeepTheirText() {
        #expect(SnapshotShareKey.normalizedClaims(#"{"sub":"a","n":1.0}"#) != SnapshotShareKey.normalizedClaims(#"{"sub":"a","n":1}"#))
    }

    @Test func textThatIsNotAnObjectSharesOnlyWithItself() {
        #expect(SnapshotShareKey.normalizedClaims("not json") == "not json")
        #expect(SnapshotShareKey.normalizedClaims("[1]") == "[1]")
    }
}

@Suite("Snapshot sharing: batcher")
struct SnapshotBatcherTests {
    @Test func requestsWithinTheWindowShareOneRead() {
        var batcher = SnapshotBatcher<Int>(concurrency: 4, usesWindow: true)
        #expect(windows(batcher.enqueue(feedA, 1)) == [feedA])
        #expect(batcher.enqueue(feedA, 2).isEmpty)
        #expect(batcher.enqueue(feedA, 3).isEmpty)
        let reads = started(batcher.windowClosed(feedA))
        #expect(reads.count == 1)
        #expect(reads.first?.1 == feedA)
        #expect(reads.first?.2 == [1, 2, 3])
        #expect(batcher.activeReads == 1)
        #expect(batcher.waitingCount == 0)
    }

    @Test func withoutWindowTheFirstRequestIsReadAtOnce() {
        var batcher = SnapshotBatcher<Int>(concurrency: 1, usesWindow: false)
        let first = started(batcher.enqueue(feedA, 1))
        #expect(first.map(\.2) == [[1]])
        // The slot is busy: the next ones wait, and share.
        #expect(started(batcher.enqueue(feedB, 2)).isEmpty)
        #expect(started(batcher.enqueue(feedB, 3)).isEmpty)
        let next = started(batcher.readFinished(first[0].0))
        #expect(next.map(\.1) == [feedB])
        #expect(next.map(\.2) == [[2, 3]])
    }

    @Test func aLateArrivalWaitsForTheNextReadOfItsKey() {
        var batcher = SnapshotBatcher<Int>(concurrency: 4, usesWindow: true)
        _ = batcher.enqueue(feedA, 1)
        let first = started(batcher.windowClosed(feedA))
        #expect(first.map(\.2) == [[1]])
        // Arrives during the read: a new window, but no second read of the key while one runs.
        #expect(windows(batcher.enqueue(feedA, 2)) == [feedA])
        #expect(batcher.enqueue(feedA, 3).isEmpty)
        #expect(started(batcher.windowClosed(feedA)).isEmpty)
        let second = started(batcher.readFinished(first[0].0))
        #expect(second.map(\.2) == [[2, 3]])
        // And the key is forgotten once nobody waits.
        #expect(started(batcher.readFinished(second[0].0)).isEmpty)
        #expect(batcher.activeReads == 0)
        #expect(windows(batcher.enqueue(feedA, 4)) == [feedA])
    }

    @Test func aReadEndingDuringTheNextWindowLeavesItOpen() {
        var batcher = SnapshotBatcher<Int>(concurrency: 4, usesWindow: true)
        _ = batcher.enqueue(feedA, 1)
        let first = started(batcher.windowClosed(feedA))
        _ = batcher.enqueue(feedA, 2)
        #expect(started(batcher.readFinished(first[0].0)).isEmpty)  // window still open
        #expect(started(batcher.windowClosed(feedA)).map(\.2) == [[2]])
    }

    @Test func concurrencyBoundsReadsAndReadyGroupsGoInOrder() {
        var batcher = SnapshotBatcher<Int>(concurrency: 2, usesWindow: true)
        for (n, key) in [feedA, feedB, feedC].enumerated() { _ = batcher.enqueue(key, n) }
        let a = started(batcher.windowClosed(feedA))
        let b = started(batcher.windowClosed(feedB))
        #expect(started(batcher.windowClosed(feedC)).isEmpty)
        #expect(batcher.activeReads == 2)
        #expect(batcher.waitingCount == 1)
        // feedA asks again while C waits for a slot: C was ready first.
        _ = batcher.enqueue(feedA, 10)
        _ = batcher.windowClosed(feedA)
        let c = started(batcher.readFinished(b[0].0))
        #expect(c.map(\.1) == [feedC])
        let a2 = started(batcher.readFinished(a[0].0))
        #expect(a2.map(\.1) == [feedA])
        #expect(a2.map(\.2) == [[10]])
    }

    @Test func differentClaimsNeverShare() {
        var batcher = SnapshotBatcher<Int>(concurrency: 4, usesWindow: false)
        let alice = feedA
        let bob = SnapshotShareKey(feed: feedA.feed, claims: #"{"sub":"bob"}"#)
        let reads = started(batcher.enqueue(alice, 1)) + started(batcher.enqueue(bob, 2))
        #expect(reads.map(\.2) == [[1], [2]])
    }

    @Test func finishingAnUnknownReadIsIgnored() {
        var batcher = SnapshotBatcher<Int>(concurrency: 1, usesWindow: false)
        let first = started(batcher.enqueue(feedA, 1))
        _ = batcher.readFinished(first[0].0)
        #expect(started(batcher.readFinished(first[0].0)).isEmpty)
        #expect(batcher.activeReads == 0)
        #expect(started(batcher.enqueue(feedA, 2)).map(\.2) == [[2]])
    }

    @Test func aLongQueueDrainsCompletely() {
        var batcher = SnapshotBatcher<Int>(concurrency: 3, usesWindow: false)
        var running: [SnapshotBatcher<Int>.ReadID] = []
        var served: [Int] = []
        for n in 0..<3000 {
            let key = SnapshotShareKey(feed: .topic("t\(n)"), claims: "{}")
            for read in started(batcher.enqueue(key, n)) { running.append(read.0); served += read.2 }
        }
        while let id = running.first {
            running.removeFirst()
            for read in started(batcher.readFinished(id)) { running.append(read.0); served += read.2 }
        }
        #expect(served == Array(0..<3000))
        #expect(batcher.activeReads == 0)
        #expect(batcher.waitingCount == 0)
    }
}

/// Snapshots cannot be held hostage (docs/security.md, "Snapshot stalls"): one read per user in
/// flight, users take turns, and stalled reads stop counting against the concurrency.
@Suite("Snapshot sharing: fairness and stalls")
struct SnapshotFairnessTests {
    private static let feedD = SnapshotShareKey(feed: .topic("alerts"), claims: #"{"sub":"bob"}"#)
    private static let feedE = SnapshotShareKey(feed: .topic("weather"), claims: #"{"sub":"carol"}"#)

    @Test func oneUserHasOneReadInFlightAndUsersTakeTurns() {
        var batcher = SnapshotBatcher<Int>(concurrency: 4, usesWindow: false, readsPerUser: 1)
        let first = started(batcher.enqueue(feedA, 1, user: "alice"))
        #expect(first.map(\.1) == [feedA])
        // alice's second feed waits behind her first, though slots are free; bob's does not.
        #expect(started(batcher.enqueue(feedB, 2, user: "alice")).isEmpty)
        #expect(started(batcher.enqueue(feedC, 3, user: "bob")).map(\.1) == [feedC])
        #expect(batcher.activeReads == 2)
        #expect(started(batcher.readFinished(first[0].0)).map(\.1) == [feedB])
    }

    @Test func turnsAreRoundRobinWhenSlotsAreScarce() {
        var batcher = SnapshotBatcher<Int>(concurrency: 1, usesWindow: false, readsPerUser: 1)
        let a = started(batcher.enqueue(feedA, 1, user: "alice"))
        _ = batcher.enqueue(feedB, 2, user: "alice")
        _ = batcher.enqueue(feedC, 3, user: "bob")
        _ = batcher.enqueue(Self.feedE, 4, user: "carol")
        // alice's next feed became ready before bob's and carol's, but she has had her turn.
        let b = started(batcher.readFinished(a[0].0))
        #expect(b.map(\.1) == [feedB] || b.map(\.1) == [feedC])
        var order = b.map(\.1)
        var last = b[0].0
        for _ in 0..<2 {
            let next = started(batcher.readFinished(last))
            order += next.map(\.1)
            last = next[0].0
        }
        #expect(Set(order) == [feedB, feedC, Self.feedE])
        #expect(batcher.waitingCount == 0)
    }

    @Test func stalledReadsStopCountingUpToTheirLimit() {
        var batcher = SnapshotBatcher<Int>(concurrency: 1, usesWindow: false, readsPerUser: 1, maximumStalledReads: 1)
        let a = started(batcher.enqueue(feedA, 1, user: "alice"))
        #expect(started(batcher.enqueue(feedC, 2, user: "bob")).isEmpty)
        _ = batcher.enqueue(Self.feedE, 3, user: "carol")
        // alice's read stalls: bob's starts; bob's stalls too, but only one may be parked.
        let (parked, actions) = batcher.readStalled(a[0].0)
        #expect(parked)
        let b = started(actions)
        #expect(b.map(\.1) == [feedC])
        let (parkedToo, none) = batcher.readStalled(b[0].0)
        #expect(!parkedToo && none.isEmpty)
        #expect(batcher.stalledReads == 1)
        // alice's socket took its chunk: she counts again; carol waits until a slot is free.
        batcher.readResumed(a[0].0)
        #expect(batcher.stalledReads == 0)
        #expect(started(batcher.readFinished(b[0].0)).isEmpty)
        #expect(started(batcher.readFinished(a[0].0)).map(\.1) == [Self.feedE])
    }
}
