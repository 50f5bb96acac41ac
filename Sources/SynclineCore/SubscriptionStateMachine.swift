/// Why a feed starts over from a fresh snapshot (`subscribed` with mode `reset`).
public enum FeedRestartReason: Sendable, Hashable {
    /// The change log no longer holds the subscriber's cursor (or the tail lost history).
    case pruned
    /// A TRUNCATE of the feed's collection.
    case truncated
    /// The feed's share of one batch exceeded the limit (protocol §2).
    case tooLarge

    public var message: String {
        switch self {
        case .pruned: return "history was pruned"
        case .truncated, .tooLarge: return "the feed must be reloaded"
        }
    }
}

/// The life of one subscription, from `subscribe` to its end:
/// resolving → snapshotting → catching up (from the ring, or from the change log) → young → live → ended.
///
/// Pure value type, owned by the subscription and touched only on its event loop. The connection,
/// the loop's fan-out and the log scan report what happened (`resolved`, `snapshotDone`, a batch,
/// a page read, …) and carry out the returned actions; none of them writes the subscription's
/// state. Every event carries what it needs to decide (the loop's position), so the machine can be
/// tested without sockets.
///
/// Gap freedom is the invariant: the subscription goes live (enters the fan-out's lists) only when
/// its cursor has reached the loop's head, and every event that would skip positions (a batch or a
/// page that does not start at or before the cursor) restarts it instead.
///
/// `run` counts restarts: work started for an earlier run (a snapshot, a log page) reports with
/// that run's number and is ignored, so a late completion can never act on a restarted feed.
public struct SubscriptionStateMachine: Sendable {
    public enum CatchUpSource: Sendable, Hashable {
        /// Waiting for the loop's next catch-up pass over the in-memory ring.
        case ring
        /// In (or waiting for) the loop's shared scan of the change log.
        case log
    }

    public enum State: Sendable, Hashable {
        /// The `subscribe` is being turned into a feed key and a start.
        case resolving
        /// A snapshot is being streamed (its `subscribed` went or goes first).
        case snapshotting
        case catchingUp(CatchUpSource)
        /// In the fan-out's young list: batches encoded before the feed existed (`generation`), or
        /// one that straddles the cursor, are served from the batch's records for this feed alone.
        case young(generation: UInt64)
        /// In the fan-out's live list: frames are the subscriber's prefix plus the shared body.
        case live
        case ended
    }

    /// How the feed starts once resolved.
    public enum Start: Sendable, Hashable {
        /// A snapshot; `reset` says `subscribed` with mode `reset` (another epoch, a pruned cursor).
        case snapshot(reset: Bool)
        /// Continue after this position (mode `resume`).
        case resume(after: Int64)
    }

    /// What the loop's fan-out has delivered: everything through `head`, encoded with the hub's
    /// index at `generation`.
    public struct LoopPosition: Sendable, Hashable {
        public var head: Int64
        public var generation: UInt64
        public init(head: Int64, generation: UInt64) {
            self.head = head
            self.generation = generation
        }
    }

    /// Why a subscription ended.
    public enum EndReason: Sendable, Hashable {
        /// The client unsubscribed: `unsubscribed`.
        case unsubscribed
        /// The connection closed: nothing is sent.
        case closed
        /// The subscriber may no longer read the feed: `error forbidden`.
        case revoked
        /// A snapshot or catch-up failed: `error` with the failure (the client may resume).
        case failed
    }

    public enum Action: Sendable, Hashable {
        /// Stream a snapshot for run `run` (`subscribed` mode `snapshot`, or `reset`).
        case startSnapshot(run: UInt32, reset: Bool)
        /// Send `subscribed` with mode `resume` at the cursor.
        case sendResumed(cursor: Int64)
        /// Queue for the loop's next catch-up pass over the ring.
        case requestRingCatchUp
        /// Join the loop's change-log scan (from `after`).
        case readLogPage(after: Int64)
        /// Write the body encoded for this subscriber (a catch-up page) through `through`.
        case send(through: Int64)
        /// Write the last catch-up body (or an empty `changes`) as the feed's one `changes` with
        /// `"live": true` through `through`, then add the subscriber to the fan-out's young
        /// (`young: true`) or live list.
        case goLive(through: Int64, young: Bool)
        /// Take the subscriber out of the fan-out and stream a fresh snapshot for run `run`
        /// (`subscribed` mode `reset`).
        case restart(FeedRestartReason, run: UInt32)
        /// Take the subscriber out of the fan-out, cancel its work and release its feed.
        case end(EndReason)
    }

    /// What the fan-out does for this subscriber with one batch (no allocation on the hot path).
    public enum BatchAction: Sendable, Hashable {
        /// Nothing: the batch is covered by the snapshot or catch-up in progress, or already sent.
        case none
        /// Live: write the feed's shared body.
        case send
        /// Young: encode the batch's records after `after` for this feed alone and write them;
        /// with `goesLive`, then move the subscriber to the live list.
        case sendOwn(after: Int64, goesLive: Bool)
        /// Young: nothing to send; move to the live list.
        case becomeLive
        /// Restart the feed (`.restart` action semantics).
        case restart(FeedRestartReason, run: UInt32)
    }

    public private(set) var state: State = .resolving
    /// Everything at or below this position has been sent (or does not concern the feed).
    public private(set) var cursor: Int64 = 0
    /// The hub's index generation when the feed was retained for this subscription.
    public let generation: UInt64
    /// Restarts so far; work for an earlier run is ignored.
    public private(set) var run: UInt32 = 0

    public init(generation: UInt64) {
        self.generation = generation
    }

    public var isEnded: Bool { state == .ended }
    /// Whether the subscriber is in one of the fan-out's lists.
    public var isInFanout: Bool {
        switch state {
        case .live, .young: return true
        default: return false
        }
    }

    // MARK: Start

    /// The `subscribe` resolved to a feed and a start.
    public mutating func resolved(_ start: Start, loop: LoopPosition) -> [Action] {
        guard state == .resolving else { return [] }
        switch start {
        case .snapshot(let reset):
            state = .snapshotting
            return [.startSnapshot(run: run, reset: reset)]
        case .resume(let after):
            cursor = after
            return [.sendResumed(cursor: after)] + catchUp(loop)
        }
    }

    /// The snapshot of run `run` has been sent through `position` (nil: not allowed to read it).
    public mutating func snapshotDone(run: UInt32, position: Int64?, loop: LoopPosition) -> [Action] {
        guard state == .snapshotting, run == self.run else { return [] }
        guard let position else {
            state = .ended
            return [.end(.revoked)]
        }
        cursor = position
        return catchUp(loop)
    }

    /// From the cursor to the loop's head: live at once when there, else the ring pass.
    private mutating func catchUp(_ loop: LoopPosition) -> [Action] {
        guard cursor >= loop.head else {
            state = .catchingUp(.ring)
            return [.requestRingCatchUp]
        }
        return [goLive(through: cursor, loop: loop)]
    }

    private mutating func goLive(through: Int64, loop: LoopPosition) -> Action {
        cursor = max(cursor, through)
        // A feed the loop's last batch was not encoded for, or a cursor ahead of the loop (a
        // snapshot read after the batch the loop is delivering), is served per subscriber first.
        let young = generation > loop.generation || cursor > loop.head
        state = young ? .young(generation: generation) : .live
        return .goLive(through: cursor, young: young)
    }

    // MARK: Catch-up

    /// The loop's catch-up pass: the ring holds (`ringStart`, `loop.head`]. When it reaches the
    /// cursor the pass encodes the missed range (`reset`: the feed must restart instead) and the
    /// subscriber goes live; when it does not, the subscriber moves to the change-log scan.
    public mutating func ringPass(ringStart: Int64?, reset: FeedRestartReason? = nil, loop: LoopPosition) -> [Action] {
        guard state == .catchingUp(.ring) else { return [] }
        if cursor >= loop.head { return [goLive(through: loop.head, loop: loop)] }
        guard let ringStart, cursor >= ringStart else {
            state = .catchingUp(.log)
            return [.readLogPage(after: cursor)]
        }
        if let reset { return restart(reset) }
        return [goLive(through: loop.head, loop: loop)]
    }

    /// A page of the change log was read for run `run`, covering (`after`, `through`], where
    /// history before `prunedThrough` is gone. `empty`: nothing of this feed in it. `reset`: the
    /// feed must restart (TRUNCATE, too large).
    public mutating func pageRead(
        run: UInt32, after: Int64, through: Int64, prunedThrough: Int64 = 0, empty: Bool, reset: FeedRestartReason? = nil
    ) -> [Action] {
        guard state == .catchingUp(.log), run == self.run else { return [] }
        // A page that starts after the cursor would skip positions.
        if prunedThrough > cursor || after > cursor { return restart(.pruned) }
        if let reset { return restart(reset) }
        guard through > cursor else { return [] }
        cursor = through
        return empty ? [] : [.send(through: through)]
    }

    /// The log scan reached the ring's start: the rest comes from the ring.
    public mutating func logReachedRing(run: UInt32, loop: LoopPosition) -> [Action] {
        guard state == .catchingUp(.log), run == self.run else { return [] }
        return catchUp(loop)
    }

    // MARK: Fan-out

    /// A batch (`after`, `through`], encoded at `generation`, reached the loop. `matched`: the
    /// feed has a share in it (`reset`: the share says restart). Called by the fan-out for its
    /// live subscribers of matched feeds and for every young one.
    public mutating func batch(
        after: Int64, through: Int64, generation batchGeneration: UInt64, matched: Bool, reset: FeedRestartReason? = nil
    ) -> BatchAction {
        switch state {
        case .live:
            guard matched else { return .none }
            if let reset { return restartBatch(reset) }
            cursor = max(cursor, through)
            return .send
        case .young(let generation):
            guard through > cursor else {
                return batchGeneration >= generation && through == cursor ? becomeLive() : .none
            }
            // The batch's records must reach back to the cursor: a young subscriber that missed a
            // batch (its cursor fell out of the ring meanwhile) cannot be served from this one.
            if after > cursor { return restartBatch(.pruned) }
            if let reset { return restartBatch(reset) }
            let from = cursor
            cursor = through
            let live = batchGeneration >= generation
            if live { state = .live }
            return .sendOwn(after: from, goesLive: live)
        case .resolving, .snapshotting, .catchingUp, .ended:
            // Covered by the snapshot or catch-up, which runs to the loop's head when it ends.
            return .none
        }
    }

    private mutating func becomeLive() -> BatchAction {
        state = .live
        return .becomeLive
    }

    private mutating func restartBatch(_ reason: FeedRestartReason) -> BatchAction {
        guard case .restart(let reason, let run) = restart(reason).first else { return .none }
        return .restart(reason, run: run)
    }

    /// The shared body of an idle advance (an empty `changes` at `head`) was written.
    public mutating func advanced(through head: Int64) {
        guard state == .live else { return }
        cursor = max(cursor, head)
    }

    // MARK: Restarts and ends

    /// The feed starts over from a fresh snapshot. Ignored before the feed exists or after its end.
    public mutating func restart(_ reason: FeedRestartReason) -> [Action] {
        switch state {
        case .resolving, .ended: return []
        case .snapshotting, .catchingUp, .young, .live:
            run &+= 1
            state = .snapshotting
            return [.restart(reason, run: run)]
        }
    }

    /// The subscriber may no longer read the feed.
    public mutating func revoke() -> [Action] { end(.revoked) }

    public mutating func unsubscribe() -> [Action] { end(.unsubscribed) }

    public mutating func closed() -> [Action] { end(.closed) }

    /// A snapshot or catch-up read failed.
    public mutating func failed() -> [Action] { end(.failed) }

    private mutating func end(_ reason: EndReason) -> [Action] {
        guard state != .ended else { return [] }
        state = .ended
        return [.end(reason)]
    }

    // MARK: Acks

    /// Whether an `ack` at `position` must wait for this feed (protocol §5: an ack never
    /// overtakes the changes up to its cursor). The loop's own head is checked by the caller.
    public func holds(until position: Int64) -> Bool {
        switch state {
        // Resolving: no snapshot position yet; the snapshot will be read after the mutation.
        case .resolving, .live, .ended: return false
        case .young: return cursor < position
        case .snapshotting, .catchingUp: return true
        }
    }
}
