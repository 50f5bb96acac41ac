import Foundation
import SynclineProtocol

/// Timers the core asks its shell to run.
enum ClientTimer: Hashable, Sendable {
    case reconnect
    case connectTimeout
    case heartbeat
    case tokenRefresh
    case mutationRetry
    case feedRetry(String)
}

/// The client without I/O: events in (stored state loaded, socket opened, message received, timer
/// fired, API calls), actions out (send, persist, publish, schedule, reconnect). The shell
/// (``SynclineClient``) executes actions in order: a `persist` completes before anything after it,
/// which is how "stored before sent" and "published together with the answer" hold.
struct ClientCore {
    struct Configuration: Sendable {
        var backoff = Backoff(base: .milliseconds(250), cap: .seconds(10))
        var connectTimeout: Duration = .seconds(10)
        var defaultHeartbeat: Duration = .seconds(15)
        /// Key columns per collection, when not learned from the server's `key` objects.
        var keyColumns: [String: [String]] = [:]
        var defaultKeyColumns = ["id"]
        var seed: UInt64 = 0x5EED
        /// Unanswered mutations on the wire at once.
        var maxInFlight = 64
    }

    enum Event: Sendable {
        /// The store's content; `newClientID` is used when it has none yet.
        case loaded(StoredState, newClientID: String)
        case token(String, nowSeconds: Double)
        case tokenFailed(String)
        case opened(Int)
        /// The socket closed (`code` nil: no close frame, e.g. refused or reset).
        case closed(Int, code: UInt16?, reason: String)
        case received(Int, JSONValue)
        case timer(ClientTimer, generation: Int)
    }

    enum Action: Sendable {
        case fetchToken
        case open(Int)
        /// Text for connection `Int`; `mid` names the mutation a `mutate` carries (crash points).
        case send(Int, String, mid: Int64?)
        case close(Int, code: UInt16)
        case persist(StoreBatch)
        case schedule(ClientTimer, after: Duration, generation: Int)
        case publish(feed: String, [LiveQueryEvent], view: [String: ViewRow]?)
        case topic(feed: String, TopicEvent)
        /// A mutation was decided; `local` is the id ``enqueue`` returned (or that ``loaded`` gave it).
        case decided(local: Int, StoredMutation, MutationDecision, earlier: Bool)
        case status(ClientStatus)
        case report(SynclineClientError)
    }

    enum Link: Equatable {
        case idle
        case awaitingToken
        case opening(Int)
        case hello(Int)
        case ready(Int)
        case waiting
        case stopped

        var connection: Int? {
            switch self {
            case .opening(let id), .hello(let id), .ready(let id): return id
            default: return nil
            }
        }
    }

    var configuration: Configuration
    var now: Duration = .zero
    var random: SplitMix64
    var link: Link = .idle
    var connections = 0
    var token: String?
    var tokenFetching = false
    var attempt = 0
    var lastCloseWas4001 = false
    var heartbeat: Duration
    var lastReceived: Duration = .zero
    var pingSentAt: Duration?
    var generations: [ClientTimer: Int] = [:]
    var lastStatus: ClientStatus?
    var attempted = false
    var closedByApp = false
    /// Overrides `welcome.heartbeat_ms` when set.
    var heartbeatOverride: Duration?
    var out: [Action] = []

    var clientID = ""
    var nextMID: Int64 = 1
    var mutations: [Mutation] = []
    var locals = 0
    var mutationHold = false
    var retryDelay: Duration?
    var retryScheduled = false
    var retryAttempt = 0
    var mutators: [String: MutatorEffect] = [:]

    var feeds: [String: Feed] = [:]
    var wire: [String: String] = [:]
    var wireCounter = 0
    var keyColumns: [String: [String]]

    init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        random = SplitMix64(seed: configuration.seed)
        heartbeat = configuration.defaultHeartbeat
        keyColumns = configuration.keyColumns
    }

    // MARK: Events

    mutating func handle(_ event: Event, now: Duration) -> [Action] {
        self.now = now
        out = []
        switch event {
        case .loaded(let state, let newClientID): load(state, newClientID: newClientID)
        case .token(let token, let nowSeconds): tokenArrived(token, nowSeconds: nowSeconds)
        case .tokenFailed(let reason): tokenFailed(reason)
        case .opened(let id): opened(id)
        case .closed(let id, let code, let reason): closed(id, code: code, reason: reason)
        case .received(let id, let message): received(id, message)
        case .timer(let timer, let generation): fired(timer, generation: generation)
        }
        return finish()
    }

    /// Appends the status if it changed and hands the actions out.
    mutating func finish() -> [Action] {
        let status = currentStatus
        if status.state == .live { attempt = 0 }  // backoff restarts once live again
        if status != lastStatus {
            lastStatus = status
            out.append(.status(status))
        }
        defer { out = [] }
        return out
    }

    var currentStatus: ClientStatus {
        let pending = mutations.count(where: { $0.decision == nil })
        switch link {
        case .stopped: return ClientStatus(state: closedByApp ? .stopped : .offline, pending: pending)
        case .ready:
            let loading = feeds.values.contains { $0.holders > 0 && !$0.isCaughtUp }
            return ClientStatus(state: loading ? .resyncing : .live, pending: pending)
        case .idle, .awaitingToken, .opening, .hello:
            // `connecting` only until the first attempt has succeeded or failed; then `offline`
            // while there is no session (writing-a-client §8).
            return ClientStatus(state: attempted ? .offline : .connecting, pending: pending)
        case .waiting: return ClientStatus(state: .offline, pending: pending)
        }
    }

    mutating func schedule(_ timer: ClientTimer, after delay: Duration) {
        let generation = (generations[timer] ?? 0) + 1
        generations[timer] = generation
        out.append(.schedule(timer, after: max(delay, .zero), generation: generation))
    }

    mutating func load(_ state: StoredState, newClientID: String) {
        var batch = StoreBatch()
        if let id = state.clientID {
            clientID = id
        } else {
            clientID = newClientID
            batch.clientID = newClientID
            batch.nextMID = state.nextMID
        }
        nextMID = state.nextMID
        mutations = state.mutations.map { stored in
            locals += 1
            return Mutation(local: locals, stored: stored, earlier: true, state: .queued, mayHaveCommitted: true)
        }
        for stored in state.feeds {
            var feed = Feed(spec: stored.spec, keyColumns: stored.keyColumns, cursor: stored.cursor)
            for row in stored.rows { feed.confirmed[row.key.keyString] = row }
            feed.hasRows = stored.cursor != nil
            feeds[stored.spec.storageKey] = feed
            if let collection = stored.spec.collection, keyColumns[collection] == nil, !stored.keyColumns.isEmpty {
                keyColumns[collection] = stored.keyColumns
            }
        }
        if !batch.isEmpty { out.append(.persist(batch)) }
        connect()
    }

    mutating func connect() {
        guard link != .stopped else { return }
        if token == nil {
            link = .awaitingToken
            if !tokenFetching {
                tokenFetching = true
                out.append(.fetchToken)
            }
        } else {
            connections += 1
            link = .opening(connections)
            out.append(.open(connections))
            schedule(.connectTimeout, after: configuration.connectTimeout)
        }
    }

    mutating func tokenArrived(_ token: String, nowSeconds: Double) {
        tokenFetching = false
        self.token = token
        if let exp = tokenExpiry(token) {
            let remaining = exp - nowSeconds
            // Refresh well before expiry; short-lived tokens at 80% of their remaining life.
            // 30 s or 10% of the remaining life before exp, whichever is less; a token that
            // already looks expired is used anyway (the server decides) and refreshed in 5 s.
            let delay = remaining > 0 ? remaining - min(30, remaining * 0.1) : 5
            schedule(.tokenRefresh, after: .milliseconds(Int64(max(delay, 5) * 1000)))
        }
        switch link {
        case .awaitingToken: connect()
        case .ready(let id): out.append(.send(id, JSONValue.object([("type", "auth"), ("token", .string(token))]).jsonText, mid: nil))
        default: break
        }
    }

    mutating func tokenFailed(_ reason: String) {
        tokenFetching = false
        out.append(.report(.tokenUnavailable(reason)))
        if link == .awaitingToken { scheduleReconnect(immediately: false) }
    }

    mutating func opened(_ id: Int) {
        guard link == .opening(id), let token else { return }
        link = .hello(id)
        lastReceived = now
        out.append(.send(id, JSONValue.object([("type", "hello"), ("client_id", .string(clientID)), ("token", .string(token))]).jsonText, mid: nil))
    }

    mutating func closed(_ id: Int, code: UInt16?, reason: String) {
        guard link.connection == id else { return }
        attempted = true
        disconnected()
        switch code {
        case 1001, 4008:
            lastCloseWas4001 = false
            scheduleReconnect(immediately: true)
        case 4001:
            token = nil
            scheduleReconnect(immediately: !lastCloseWas4001)
            lastCloseWas4001 = true
        case 4003:
            stop(.forbidden(reason))
        case 1008, 1009, 4400:
            // A client bug: report it, and do not hammer (at least the cap before trying again).
            lastCloseWas4001 = false
            out.append(.report(.protocolViolation(code: code ?? 0, reason: reason)))
            link = .waiting
            attempt += 1
            schedule(.reconnect, after: configuration.backoff.cap)
        default:
            lastCloseWas4001 = false
            scheduleReconnect(immediately: false)
        }
    }

    /// What a lost connection undoes: feeds are no longer subscribed, changes not yet published are
    /// dropped (they come again from the saved cursors), and every mutation not confirmed by a
    /// published state is queued for resending.
    mutating func disconnected() {
        wire = [:]
        for key in feeds.keys {
            if case .ended = feeds[key]!.phase {} else { feeds[key]!.phase = .idle }
            feeds[key]!.buffer = []
            feeds[key]!.liveShown = false
        }
        // Answered ones too: their held changes are gone, so they wait (overlay shown) for the
        // answer to their resend, which comes after the resumed feeds carry their effect again.
        for i in mutations.indices {
            mutations[i].state = .queued
        }
        mutationHold = false
        retryDelay = nil
        retryScheduled = false
        pingSentAt = nil
    }

    mutating func scheduleReconnect(immediately: Bool) {
        guard link != .stopped else { return }
        link = .waiting
        let delay = immediately ? Duration.zero : configuration.backoff.delay(attempt: attempt, random: &random)
        attempt += 1
        schedule(.reconnect, after: delay)
    }

    mutating func stop(_ error: SynclineClientError?) {
        if let id = link.connection { out.append(.close(id, code: 1000)) }
        if link.connection != nil { disconnected() }
        link = .stopped
        if let error { out.append(.report(error)) }
    }

    /// The platform says the network is back: skip the backoff wait.
    mutating func online(now: Duration) -> [Action] {
        self.now = now
        out = []
        if link == .waiting { connect() }
        return finish()
    }

    /// The app closes the client.
    mutating func close(now: Duration) -> [Action] {
        self.now = now
        out = []
        closedByApp = true
        stop(nil)
        return finish()
    }

    mutating func fired(_ timer: ClientTimer, generation: Int) {
        guard generations[timer] == generation else { return }
        switch timer {
        case .reconnect:
            if link == .waiting { connect() }
        case .connectTimeout:
            switch link {
            case .opening(let id), .hello(let id):
                out.append(.close(id, code: 1000))
                disconnected()
                scheduleReconnect(immediately: false)
            default: break
            }
        case .heartbeat:
            guard case .ready(let id) = link else { return }
            if let ping = pingSentAt {
                if now - ping >= heartbeat {
                    // No answer to our ping for a whole period: the connection is dead.
                    out.append(.close(id, code: 1000))
                    disconnected()
                    scheduleReconnect(immediately: false)
                } else {
                    schedule(.heartbeat, after: ping + heartbeat - now)
                }
            } else if now - lastReceived >= heartbeat {
                pingSentAt = now
                out.append(.send(id, "{\"type\":\"ping\"}", mid: nil))
                schedule(.heartbeat, after: heartbeat)
            } else {
                schedule(.heartbeat, after: lastReceived + heartbeat - now)
            }
        case .tokenRefresh:
            if !tokenFetching {
                tokenFetching = true
                out.append(.fetchToken)
            }
        case .mutationRetry:
            mutationHold = false
            retryDelay = nil
            retryScheduled = false
            sendQueuedMutations()
        case .feedRetry(let key):
            if case .ready = link, let feed = feeds[key], feed.holders > 0, case .idle = feed.phase { subscribeFeed(key) }
        }
    }

    mutating func received(_ id: Int, _ message: JSONValue) {
        guard link.connection == id else { return }
        lastReceived = now
        pingSentAt = nil
        switch message["type"]?.stringValue {
        case "welcome": welcome(id, message)
        case "subscribed": feedSubscribed(message)
        case "snapshot": feedSnapshot(message)
        case "changes": feedChanges(message)
        case "message": topicMessage(message)
        case "revoked": feedEnded(wireID: message["sub"]?.stringValue, code: message["code"]?.stringValue ?? "revoked",
                                  message: message["message"]?.stringValue ?? "")
        case "ack": mutationAcked(message)
        case "reject": mutationRejected(message)
        case "error": error(message)
        default: break  // pong, unsubscribed, and types of later protocol versions
        }
    }

    mutating func welcome(_ id: Int, _ message: JSONValue) {
        guard link == .hello(id) else { return }
        link = .ready(id)
        attempted = true
        lastCloseWas4001 = false
        if let ms = message["heartbeat_ms"]?.int64, ms > 0 { heartbeat = .milliseconds(ms) }
        if let heartbeatOverride { heartbeat = heartbeatOverride }
        schedule(.heartbeat, after: heartbeat)
        let lastMID = message["last_mid"]?.int64 ?? 0
        guard reconcileMIDs(lastMID: lastMID) else { return }
        // Resubscribe first, then resend: an ack waits for the connection's feeds, so the resent
        // mutations' effects arrive in feeds that are already open.
        for key in feeds.keys.sorted() where feeds[key]!.holders > 0 {
            // An ended feed (forbidden, not_found, revoked) stays ended: no retry loop.
            if case .ended = feeds[key]!.phase { continue }
            subscribeFeed(key)
        }
        sendQueuedMutations()
    }
}
