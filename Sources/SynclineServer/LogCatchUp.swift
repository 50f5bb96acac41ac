import NIOCore
import SynclineCore
import SynclinePostgres

/// Catch-up from the change log for subscribers whose cursor is older than the ring: one scan per
/// event loop, shared by every subscriber that needs it, instead of one per subscriber.
///
/// A server restart empties the ring, so the reconnect storm that follows a deploy lands here in
/// full: thousands of clients, each missing the changes written while the server was down. Read
/// per subscriber, that is clients × missed changes rows out of Postgres (each read scans its
/// whole collection, since a feed's filter is not an index); read once, it is the missed changes
/// plus what is delivered. Pages of the log are read in position order, encoded for every member
/// in one pass (`FeedBatchEncoder.encodeCatchUp`) off the loop, and sent on the loop; when the
/// scan reaches the ring, its members go back through the loop's catch-up pass, which serves the
/// rest from memory.
///
/// A subscriber whose cursor is at or past the scan's position joins the running scan at its next
/// page; an older one waits for the next scan. Between pages the scan waits until its writes have
/// reached the sockets (or `pageWait` has passed), so one catch-up cannot pile a history into
/// the outbound queues; a client slower than that is closed by its outbound limit (4008) and
/// resumes from the cursor it reached.
///
/// Confined to its loop, like the `LoopFanout` that owns it.
final class LogCatchUp {
    private struct Member {
        let subscriber: Subscriber
        /// The subscriber's cursor when the scan last delivered to it.
        var cursor: Int64
        /// The run of its machine that joined: a restarted feed has left the scan.
        var run: UInt32

        init(_ subscriber: Subscriber) {
            self.subscriber = subscriber
            self.cursor = subscriber.cursor
            self.run = subscriber.machine.run
        }
    }

    private unowned let fanout: LoopFanout
    /// In the scan: the page being read is encoded for exactly these.
    private var members: [Member] = []
    /// Arrived while a page was read, with a cursor at or past the scan's position: they join the
    /// scan if the page ends at or below their cursor, else they wait for the next scan.
    private var joining: [Member] = []
    /// For the next scan, which starts from the oldest of their cursors.
    private var waiting: [Member] = []
    /// A page is being read, encoded or flushed.
    private var scanning = false
    /// Tells a page's write wait from its timeout: whichever comes second finds it changed.
    private var pageToken: UInt64 = 0
    /// Every member has been sent every change through this position (of its feed).
    private var position: Int64 = 0
    /// How long the scan waits for a page's writes to reach the sockets before reading the next.
    static let pageWait: TimeAmount = .seconds(2)

    init(fanout: LoopFanout) {
        self.fanout = fanout
    }

    /// Takes a subscriber whose machine moved to `catchingUp(.log)` (its `readLogPage` action).
    /// Those of one catch-up pass come one after another before the scan starts (it starts on
    /// the loop's next turn), so that a storm starts one scan from the oldest cursor.
    func add(_ subscriber: Subscriber, environment: SyncEnvironment) {
        let member = Member(subscriber)
        if scanning && subscriber.cursor >= position {
            joining.append(member)
        } else {
            waiting.append(member)
        }
        guard !scanning, !startScheduled else { return }
        startScheduled = true
        let bound = NIOLoopBound(self, eventLoop: fanout.eventLoop)
        fanout.eventLoop.execute {
            bound.value.startScheduled = false
            if !bound.value.scanning { bound.value.nextPage(environment) }
        }
    }

    private var startScheduled = false

    /// Whether `member` still waits for this scan: its machine is in the log catch-up of the same
    /// run, at the cursor the scan left it, and its connection still holds it.
    private func isCurrent(_ member: Member) -> Bool {
        let subscriber = member.subscriber
        guard subscriber.machine.state == .catchingUp(.log), subscriber.machine.run == member.run,
              subscriber.cursor == member.cursor, let connection = subscriber.connection
        else { return false }
        return connection.owns(subscriber)
    }

    /// Reads, encodes and sends the next page, or hands the members back to the loop's catch-up
    /// pass once the ring reaches them.
    private func nextPage(_ environment: SyncEnvironment) {
        members.removeAll { !isCurrent($0) }
        if members.isEmpty {
            waiting.removeAll { !isCurrent($0) }
            guard let start = waiting.map(\.cursor).min() else {
                scanning = false
                return
            }
            members = waiting
            waiting = []
            position = start
        }
        scanning = true
        // Positions after the ring's start are served from memory by the catch-up pass.
        let upTo = environment.hub.ringStart
        guard position < upTo else { return handBack(environment) }

        let scope = ChangeLogReader.Scope.covering(members.map(\.subscriber.key))
        let feeds = members.map { (key: $0.subscriber.key, after: $0.cursor) }
        let from = position
        let limit = environment.configuration.catchUpPageRecords
        let reader = environment.reader
        let encoder = fanout.encoder
        let loop = fanout.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        Task {
            let result: Result<(page: ChangeLogReader.Page, through: Int64, bodies: [FeedBody]), any Error>
            do {
                let page = try await reader.changeLogPage(after: from, through: upTo, limit: limit, scope: scope)
                // A full page ends with a whole transaction (changeLogPage): its last position is
                // a cursor; a short one read everything up to `upTo`.
                let through = page.records.count < limit ? upTo : page.records.last!.position
                let bodies = encoder.encodeCatchUp(page.records, through: through, feeds: feeds)
                result = .success((page, through, bodies))
            } catch {
                result = .failure(error)
            }
            loop.execute { bound.value.delivered(result, environment: environment) }
        }
    }

    private func delivered(
        _ result: Result<(page: ChangeLogReader.Page, through: Int64, bodies: [FeedBody]), any Error>,
        environment: SyncEnvironment
    ) {
        let scanned = members
        members = []
        switch result {
        case .failure(let error):
            waiting += joining
            joining = []
            // Every member read through the same connection pool: all of them get the error.
            for member in scanned where isCurrent(member) {
                member.subscriber.connection?.catchUpFailed(member.subscriber, error: error)
            }
            fanout.flush()
            return nextPage(environment)
        case .success(let (page, through, bodies)):
            var written: [EventLoopFuture<Void>] = []
            for (member, body) in zip(scanned, bodies) where isCurrent(member) {
                let subscriber = member.subscriber
                guard let connection = subscriber.connection else { continue }
                let actions = subscriber.machine.pageRead(
                    run: member.run, after: position, through: through, prunedThrough: page.prunedThrough,
                    empty: body.messages.isEmpty && body.changes == nil, reset: body.restartReason)
                if actions.contains(where: { if case .send = $0 { return true } else { return false } }) {
                    let promise = fanout.eventLoop.makePromise(of: Void.self)
                    connection.carryOut(actions, for: subscriber, body: body, promise: promise)
                    written.append(promise.futureResult)
                } else {
                    connection.carryOut(actions, for: subscriber, body: body)
                }
                if subscriber.machine.state == .catchingUp(.log) { members.append(Member(subscriber)) }
            }
            position = through
            for member in joining {
                if member.cursor >= through { members.append(member) } else { waiting.append(member) }
            }
            joining = []
            fanout.flush()
            waitForWrites(written, environment: environment)
        }
    }

    /// Reads the next page once the writes of this one completed (or failed: a closed connection
    /// leaves the scan), or after `pageWait`, whichever comes first.
    private func waitForWrites(_ written: [EventLoopFuture<Void>], environment: SyncEnvironment) {
        guard !written.isEmpty else { return nextPage(environment) }
        let loop = fanout.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        pageToken &+= 1
        let token = pageToken
        let timeout = loop.scheduleTask(in: Self.pageWait) {
            bound.value.pageWritten(token, environment: environment)
        }
        EventLoopFuture.andAllComplete(written, on: loop).whenComplete { _ in
            timeout.cancel()
            bound.value.pageWritten(token, environment: environment)
        }
    }

    private func pageWritten(_ token: UInt64, environment: SyncEnvironment) {
        guard token == pageToken else { return }
        pageToken &+= 1
        nextPage(environment)
    }

    /// The scan reached the ring: its members go back through the loop's catch-up pass.
    private func handBack(_ environment: SyncEnvironment) {
        let finished = members
        members = []
        let loop = fanout.position
        for member in finished where isCurrent(member) {
            let subscriber = member.subscriber
            subscriber.connection?.carryOut(subscriber.machine.logReachedRing(run: member.run, loop: loop), for: subscriber)
        }
        fanout.flush()
        nextPage(environment)
    }
}
