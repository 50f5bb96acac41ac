@testable import SynclineServer
import Testing

/// The readiness verdict and the late-node rule (I/O-free): late alone → not ready and 1001 once
/// per late spell; late with every other node (a slow Postgres) → stay ready, raise the alert.
@Suite struct DeliveryHealthTests {
    typealias Observation = DeliveryHealth.Observation

    static func look(lag: Int64?, peers: [Int64] = [], tail: Bool = true, draining: Bool = false) -> Observation {
        Observation(draining: draining, tailConnected: tail, lagMilliseconds: lag, peerLagsMilliseconds: peers)
    }

    @Test("on time: ready, nothing to do")
    func onTime() {
        var health = DeliveryHealth(lateMilliseconds: 5_000)
        #expect(health.verdict(Self.look(lag: 12, peers: [20, 9_000])) == .ready)
        #expect(health.step(Self.look(lag: 12, peers: [20, 9_000])).isEmpty)
        #expect(health.verdict(Self.look(lag: 5_000)) == .ready)  // at the threshold is not beyond it
        #expect(health.verdict(Self.look(lag: nil)) == .ready)  // canary off
    }

    @Test("a disconnected tail or a drain is not ready, whatever the lag")
    func tailAndDrain() {
        let health = DeliveryHealth(lateMilliseconds: 5_000)
        guard case .notReady(let reason) = health.verdict(Self.look(lag: 0, tail: false)) else {
            Issue.record("a disconnected tail must not be ready")
            return
        }
        #expect(reason.contains("LISTEN"))
        guard case .notReady(let drain) = health.verdict(Self.look(lag: 0, draining: true)) else {
            Issue.record("a draining node must not be ready")
            return
        }
        #expect(drain.contains("draining"))
        // Even when every node is late, a disconnected tail is not ready.
        #expect(!health.verdict(Self.look(lag: 9_000, peers: [9_000], tail: false)).isReady)
    }

    @Test("only me late: not ready, and 1001 once per late spell")
    func onlyMeLate() {
        var health = DeliveryHealth(lateMilliseconds: 5_000)
        let late = Self.look(lag: 7_000, peers: [30, 8_000])
        guard case .notReady(let reason) = health.verdict(late) else {
            Issue.record("a late node must not be ready")
            return
        }
        #expect(reason.contains("7000 ms"))
        #expect(health.step(late).count == 1)
        // The same late spell closes only once (clients that came back stay until it ends).
        #expect(health.step(Self.look(lag: 7_000, peers: [30])).isEmpty)
        #expect(health.step(Self.look(lag: 9_000, peers: [30])).isEmpty)
        // Caught up: re-armed; late again with a peer on time: closes again.
        #expect(health.step(Self.look(lag: 40, peers: [30])).isEmpty)
        #expect(health.step(Self.look(lag: 6_000, peers: [30])) == [
            .closeConnections(reason: "this node's change feed is 6000 ms late; reconnect to another node and resume"),
        ])
    }

    @Test("every node late (a slow Postgres): stay ready, raise the alert, close nothing")
    func everyoneLate() {
        var health = DeliveryHealth(lateMilliseconds: 5_000)
        let slow = Self.look(lag: 7_000, peers: [6_000, 12_000])
        #expect(health.verdict(slow) == .readyEveryNodeLate)
        #expect(health.verdict(slow).isReady)
        #expect(health.step(slow).isEmpty)
        // A peer slow but not yet late (nodes cross the threshold one after the other) is no
        // better a home: stay, do not send clients there.
        let crossing = Self.look(lag: 5_200, peers: [3_000])
        #expect(health.verdict(crossing) == .readyEveryNodeLate)
        #expect(health.step(crossing).isEmpty)
        // Healthy means at most half the threshold.
        #expect(health.verdict(Self.look(lag: 5_200, peers: [2_500])) != .readyEveryNodeLate)
    }

    @Test("late and alone: not ready (the truth), but no 1001 — there is nowhere better to go")
    func lateAlone() {
        var health = DeliveryHealth(lateMilliseconds: 5_000)
        let alone = Self.look(lag: 7_000, peers: [])
        #expect(!health.verdict(alone).isReady)
        #expect(health.step(alone).isEmpty)
        // Draining already closes with 1001 at its end; the rule adds nothing.
        #expect(health.step(Self.look(lag: 7_000, peers: [10], draining: true)).isEmpty)
    }

    @Test("peers' lags are worst cases: a peer not heard from for a while is not healthy")
    func agedPeerLags() {
        let health = NodeHealth(nodeID: "a", canaryEnabled: true, lateMilliseconds: 5_000)
        let t0 = ContinuousClock.now
        health.learned(peerLags: [100, 4_000], readAt: t0)
        #expect(health.observation(tailConnected: true, at: t0).peerLagsMilliseconds == [100, 4_000])
        #expect(health.observation(tailConnected: true, at: t0 + .milliseconds(1_500)).peerLagsMilliseconds == [1_600, 5_500])
        // Late while the peer that last said 100 ms has been silent for 3 s (it may have stalled
        // right after): no healthy peer, so stay ready and close nothing.
        var rule = DeliveryHealth(lateMilliseconds: 5_000)
        let stale = DeliveryHealth.Observation(draining: false, tailConnected: true, lagMilliseconds: 6_000,
                                               peerLagsMilliseconds: health.observation(tailConnected: true, at: t0 + .seconds(3)).peerLagsMilliseconds)
        #expect(rule.verdict(stale) == .readyEveryNodeLate)
        #expect(rule.step(stale).isEmpty)
        // Heard from again, healthy: the late node sends its clients there.
        health.learned(peerLags: [100], readAt: t0 + .seconds(3))
        let fresh = DeliveryHealth.Observation(draining: false, tailConnected: true, lagMilliseconds: 6_000,
                                               peerLagsMilliseconds: health.observation(tailConnected: true, at: t0 + .seconds(3)).peerLagsMilliseconds)
        #expect(rule.step(fresh).count == 1)
    }

    @Test("canary clock: lag is the oldest unseen canary's age, settled in commit order")
    func canaryClock() {
        var clock = CanaryClock()
        let t0 = ContinuousClock.now
        #expect(clock.lag(at: t0) == .zero)
        clock.sent(1, at: t0)
        clock.sent(2, at: t0 + .seconds(1))
        #expect(clock.lag(at: t0 + .seconds(3)) == .seconds(3))
        // Seeing 2 settles 1 too (it never committed, or 2 could not be visible).
        #expect(clock.seen(2, at: t0 + .milliseconds(1_010)) == .milliseconds(10))
        #expect(clock.lag(at: t0 + .seconds(5)) == .milliseconds(10))
        #expect(clock.seen(1, at: t0 + .seconds(6)) == nil)  // an old one seen late changes nothing
        // Outstanding again: the last round trip is the floor, the oldest one's age above it.
        clock.sent(3, at: t0 + .seconds(10))
        #expect(clock.lag(at: t0 + .seconds(10)) == .milliseconds(10))
        #expect(clock.lag(at: t0 + .seconds(12)) == .seconds(2))
    }

    @Test("canary clock: a long stall keeps the oldest canary, bounded memory")
    func canaryClockBounded() {
        var clock = CanaryClock()
        let t0 = ContinuousClock.now
        for i in 1...UInt64(CanaryClock.maximumOutstanding + 100) {
            clock.sent(i, at: t0 + .milliseconds(Int64(i)))
        }
        #expect(clock.lag(at: t0 + .seconds(60)) == .seconds(60) - .milliseconds(1))
    }
}
