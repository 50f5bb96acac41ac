import SynclineCore
import Testing

private typealias Machine = SubscriptionStateMachine
private typealias Loop = SubscriptionStateMachine.LoopPosition

private func loop(_ head: Int64, generation: UInt64 = 5) -> Loop { Loop(head: head, generation: generation) }

/// A machine whose snapshot (run 0) is being streamed; the feed was retained at generation 5.
private func snapshotting(generation: UInt64 = 5) -> Machine {
    var m = Machine(generation: generation)
    #expect(m.resolved(.snapshot(reset: false), loop: loop(10)) == [.startSnapshot(run: 0, reset: false)])
    #expect(m.state == .snapshotting)
    return m
}

/// A machine waiting for the loop's ring pass: snapshot at 10, the loop already at 20.
private func ringCatchingUp() -> Machine {
    var m = snapshotting()
    #expect(m.snapshotDone(run: 0, position: 10, loop: loop(20)) == [.requestRingCatchUp])
    #expect(m.state == .catchingUp(.ring))
    return m
}

/// A machine in the change-log scan: cursor 10, the ring starts at 15.
private func logCatchingUp() -> Machine {
    var m = ringCatchingUp()
    #expect(m.ringPass(ringStart: 15, loop: loop(20)) == [.readLogPage(after: 10)])
    #expect(m.state == .catchingUp(.log))
    return m
}

private func live() -> Machine {
    var m = snapshotting()
    #expect(m.snapshotDone(run: 0, position: 10, loop: loop(10)) == [.goLive(through: 10, young: false)])
    #expect(m.state == .live)
    return m
}

@Suite("SubscriptionStateMachine")
struct SubscriptionStateMachineTests {
    // MARK: Starts

    @Test func snapshotAtTheLoopsHeadGoesLiveAtOnce() {
        let m = live()
        #expect(m.cursor == 10)
        #expect(!m.holds(until: 10))
    }

    @Test func resumeAtTheHeadSendsResumedThenGoesLive() {
        var m = Machine(generation: 1)
        #expect(m.resolved(.resume(after: 7), loop: loop(7)) == [.sendResumed(cursor: 7), .goLive(through: 7, young: false)])
        #expect(m.state == .live)
    }

    @Test func resumeBehindTheHeadWaitsForTheRingPass() {
        var m = Machine(generation: 1)
        #expect(m.resolved(.resume(after: 3), loop: loop(7)) == [.sendResumed(cursor: 3), .requestRingCatchUp])
        #expect(m.state == .catchingUp(.ring))
        #expect(m.holds(until: 1))
    }

    @Test func aResetStartIsASnapshotInModeReset() {
        var m = Machine(generation: 1)
        #expect(m.resolved(.snapshot(reset: true), loop: loop(7)) == [.startSnapshot(run: 0, reset: true)])
    }

    @Test func aSnapshotWithoutPermissionEndsRevoked() {
        var m = snapshotting()
        #expect(m.snapshotDone(run: 0, position: nil, loop: loop(10)) == [.end(.revoked)])
        #expect(m.isEnded)
    }

    // MARK: A batch during each phase

    @Test func batchDuringTheSnapshotIsLeftToTheCatchUp() {
        var m = snapshotting()
        // The loop delivers (10, 20] while the snapshot (read at 10) streams: not for this
        // subscriber yet, and it must not go live at 10 with the loop at 20.
        #expect(m.batch(after: 10, through: 20, generation: 5, matched: true) == .none)
        #expect(m.snapshotDone(run: 0, position: 10, loop: loop(20)) == [.requestRingCatchUp])
        #expect(m.ringPass(ringStart: 0, loop: loop(20)) == [.goLive(through: 20, young: false)])
        #expect(m.cursor == 20)
        #expect(m.state == .live)
    }

    @Test func snapshotReadAfterTheLoopsHeadGoesYoung() {
        var m = snapshotting()
        // The snapshot saw position 25 while the loop is still delivering (10, 20]: ahead of the
        // loop, so the next batches are served from their records until the shared bodies cover it.
        #expect(m.snapshotDone(run: 0, position: 25, loop: loop(20)) == [.goLive(through: 25, young: true)])
        #expect(m.state == .young(generation: 5))
        #expect(m.batch(after: 20, through: 24, generation: 5, matched: true) == .none)
        #expect(m.state == .young(generation: 5))
        #expect(m.batch(after: 24, through: 30, generation: 5, matched: true) == .sendOwn(after: 25, goesLive: true))
        #expect(m.state == .live)
        #expect(m.cursor == 30)
    }

    @Test func aFeedNewerThanTheLoopsLastBatchStaysYoungUntilABatchOfItsGeneration() {
        var m = snapshotting(generation: 9)
        #expect(m.snapshotDone(run: 0, position: 20, loop: loop(20, generation: 8)) == [.goLive(through: 20, young: true)])
        // Encoded before the feed existed (generation 8): sent from the records, still young.
        #expect(m.batch(after: 20, through: 22, generation: 8, matched: false) == .sendOwn(after: 20, goesLive: false))
        #expect(m.state == .young(generation: 9))
        #expect(m.holds(until: 22) == false)
        #expect(m.holds(until: 23))
        #expect(m.batch(after: 22, through: 23, generation: 9, matched: true) == .sendOwn(after: 22, goesLive: true))
        #expect(m.state == .live)
    }

    @Test func batchDuringARingCatchUpIsCoveredByThePass() {
        var m = ringCatchingUp()
        #expect(m.batch(after: 20, through: 30, generation: 5, matched: true) == .none)
        // The pass runs with the loop's head at that time (30): the ring holds (10, 30].
        #expect(m.ringPass(ringStart: 5, loop: loop(30)) == [.goLive(through: 30, young: false)])
        #expect(m.cursor == 30)
    }

    @Test func batchDuringALogPageIsCoveredByTheScanAndThenTheRing() {
        var m = logCatchingUp()
        #expect(m.batch(after: 20, through: 30, generation: 5, matched: true) == .none)
        #expect(m.pageRead(run: 0, after: 10, through: 14, empty: false) == [.send(through: 14)])
        #expect(m.pageRead(run: 0, after: 14, through: 15, empty: true) == [])
        #expect(m.cursor == 15)
        #expect(m.state == .catchingUp(.log))
        #expect(m.logReachedRing(run: 0, loop: loop(30)) == [.requestRingCatchUp])
        #expect(m.ringPass(ringStart: 15, loop: loop(30)) == [.goLive(through: 30, young: false)])
        #expect(m.state == .live)
    }

    @Test func liveBatchesMoveTheCursorOnlyWhenMatched() {
        var m = live()
        #expect(m.batch(after: 10, through: 11, generation: 5, matched: false) == .none)
        #expect(m.cursor == 10)
        #expect(m.batch(after: 11, through: 12, generation: 5, matched: true) == .send)
        #expect(m.cursor == 12)
        m.advanced(through: 15)
        #expect(m.cursor == 15)
    }

    // MARK: Gaps restart

    @Test func ringWrappingPastAYoungSubscriberRestartsIt() {
        var m = snapshotting()
        #expect(m.snapshotDone(run: 0, position: 25, loop: loop(20)) == [.goLive(through: 25, young: true)])
        // A batch that starts after the cursor: (25, 28] was never seen by this subscriber.
        #expect(m.batch(after: 28, through: 30, generation: 5, matched: true) == .restart(.pruned, run: 1))
        #expect(m.state == .snapshotting)
        #expect(m.run == 1)
    }

    @Test func ringThatNoLongerHoldsTheCursorHandsOverToTheLog() {
        var m = ringCatchingUp()
        #expect(m.ringPass(ringStart: nil, loop: loop(20)) == [.readLogPage(after: 10)])
    }

    @Test func aPrunedLogPageRestarts() {
        var m = logCatchingUp()
        #expect(m.pageRead(run: 0, after: 10, through: 14, prunedThrough: 12, empty: false) == [.restart(.pruned, run: 1)])
        #expect(m.state == .snapshotting)
    }

    @Test func aLogPageStartingAfterTheCursorRestarts() {
        var m = logCatchingUp()
        #expect(m.pageRead(run: 0, after: 11, through: 14, empty: false) == [.restart(.pruned, run: 1)])
    }

    @Test func aTooLargeShareRestartsFromEveryPhaseThatSendsIt() {
        var l = live()
        #expect(l.batch(after: 10, through: 11, generation: 5, matched: true, reset: .tooLarge) == .restart(.tooLarge, run: 1))
        var r = ringCatchingUp()
        #expect(r.ringPass(ringStart: 0, reset: .truncated, loop: loop(20)) == [.restart(.truncated, run: 1)])
        var g = logCatchingUp()
        #expect(g.pageRead(run: 0, after: 10, through: 14, empty: false, reset: .truncated) == [.restart(.truncated, run: 1)])
    }

    // MARK: Restarts and unsubscribes during each phase

    @Test func restartDuringEachPhaseStartsANewRunAndIgnoresTheOldOnesWork() {
        var s = snapshotting()
        #expect(s.restart(.pruned) == [.restart(.pruned, run: 1)])
        // The cancelled snapshot of run 0 finishing late changes nothing.
        #expect(s.snapshotDone(run: 0, position: 10, loop: loop(10)) == [])
        #expect(s.state == .snapshotting)
        #expect(s.snapshotDone(run: 1, position: 12, loop: loop(12)) == [.goLive(through: 12, young: false)])

        var r = ringCatchingUp()
        #expect(r.restart(.truncated) == [.restart(.truncated, run: 1)])
        #expect(r.ringPass(ringStart: 0, loop: loop(20)) == [])

        var g = logCatchingUp()
        #expect(g.restart(.pruned) == [.restart(.pruned, run: 1)])
        // The page of run 0 arriving after the restart is dropped.
        #expect(g.pageRead(run: 0, after: 10, through: 14, empty: false) == [])
        #expect(g.logReachedRing(run: 0, loop: loop(20)) == [])

        var y = snapshotting()
        _ = y.snapshotDone(run: 0, position: 25, loop: loop(20))
        #expect(y.restart(.pruned) == [.restart(.pruned, run: 1)])
        #expect(y.batch(after: 20, through: 30, generation: 5, matched: true) == .none)

        var l = live()
        #expect(l.restart(.pruned) == [.restart(.pruned, run: 1)])
        #expect(l.batch(after: 10, through: 11, generation: 5, matched: true) == .none)
        #expect(!l.isInFanout)
    }

    @Test func restartBeforeTheFeedExistsOrAfterItsEndIsIgnored() {
        var m = Machine(generation: 1)
        #expect(m.restart(.pruned) == [])
        var e = live()
        _ = e.closed()
        #expect(e.restart(.pruned) == [])
    }

    @Test func unsubscribeDuringEachPhaseEndsOnceAndLateWorkIsIgnored() {
        var machines: [(String, Machine)] = [
            ("resolving", Machine(generation: 1)), ("snapshotting", snapshotting()), ("ring", ringCatchingUp()),
            ("log", logCatchingUp()), ("live", live()),
        ]
        var young = snapshotting()
        _ = young.snapshotDone(run: 0, position: 25, loop: loop(20))
        machines.append(("young", young))
        for (phase, var m) in machines {
            #expect(m.unsubscribe() == [.end(.unsubscribed)], "\(phase)")
            #expect(m.unsubscribe() == [], "\(phase)")
            #expect(m.closed() == [], "\(phase)")
            #expect(m.resolved(.snapshot(reset: false), loop: loop(30)) == [], "\(phase)")
            #expect(m.snapshotDone(run: 0, position: 30, loop: loop(30)) == [], "\(phase)")
            #expect(m.ringPass(ringStart: 0, loop: loop(30)) == [], "\(phase)")
            #expect(m.pageRead(run: 0, after: 10, through: 14, empty: false) == [], "\(phase)")
            #expect(m.batch(after: 30, through: 31, generation: 5, matched: true) == .none, "\(phase)")
            #expect(!m.holds(until: 100), "\(phase)")
            #expect(!m.isInFanout, "\(phase)")
        }
    }

    @Test func revokeAndFailureEndWithTheirReason() {
        var r = live()
        #expect(r.revoke() == [.end(.revoked)])
        var f = logCatchingUp()
        #expect(f.failed() == [.end(.failed)])
        #expect(f.state == .ended)
    }

    @Test func acksWaitForFeedsThatAreLoading() {
        #expect(!Machine(generation: 1).holds(until: 5))
        #expect(snapshotting().holds(until: 5))
        #expect(ringCatchingUp().holds(until: 5))
        #expect(logCatchingUp().holds(until: 5))
        #expect(!live().holds(until: 500))
    }
}
