import Foundation
@testable import SynclineClient
import SynclineProtocol

/// Drives the I/O-free core like the shell does, recording what it would send, store and publish.
struct CoreHarness {
    var core: ClientCore
    var now: Duration = .zero
    var store = StoredState()
    var sent: [JSONValue] = []
    var published: [String: [LiveQueryEvent]] = [:]
    var topicEvents: [String: [TopicEvent]] = [:]
    var decided: [(Int, MutationDecision, Bool)] = []
    var statuses: [ClientStatus] = []
    var reports: [SynclineClientError] = []
    var timers: [ClientTimer: (at: Duration, generation: Int)] = [:]
    var opens: [Int] = []
    var closes: [Int] = []
    var tokenFetches = 0
    var connection = 0

    init(state: StoredState = StoredState(), configuration: ClientCore.Configuration = ClientCore.Configuration()) {
        core = ClientCore(configuration: configuration)
        store = state
        run(core.handle(.loaded(state, newClientID: "test-client"), now: now))
    }

    /// Loads, gets a token, opens and completes hello → welcome.
    static func connected(state: StoredState = StoredState(), lastMID: Int64 = 0, heartbeatMS: Int = 15000,
                          configuration: ClientCore.Configuration = ClientCore.Configuration()) -> CoreHarness {
        var h = CoreHarness(state: state, configuration: configuration)
        h.connect(lastMID: lastMID, heartbeatMS: heartbeatMS)
        return h
    }

    mutating func connect(lastMID: Int64 = 0, heartbeatMS: Int = 15000) {
        if core.token == nil { event(.token(Self.token(exp: nil), nowSeconds: 1_000)) }
        if core.link == .waiting { fire(.reconnect) }
        guard let id = opens.last else { return }
        connection = id
        event(.opened(id))
        receive("{\"type\":\"welcome\",\"session\":\"s\",\"server\":\"syncline/0.1.0\",\"heartbeat_ms\":\(heartbeatMS),\"last_mid\":\(lastMID)}")
    }

    static func token(exp: Double?) -> String {
        func b64(_ s: String) -> String {
            Data(s.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                .replacingOccurrences(of: "=", with: "")
        }
        let claims = exp.map { "{\"sub\":\"alice\",\"exp\":\(Int($0))}" } ?? "{\"sub\":\"alice\"}"
        return b64("{\"alg\":\"none\"}") + "." + b64(claims) + "."
    }

    mutating func event(_ event: ClientCore.Event) {
        run(core.handle(event, now: now))
    }

    mutating func receive(_ text: String) {
        event(.received(connection, try! JSONParser.parse(text)))
    }

    mutating func fire(_ timer: ClientTimer) {
        guard let scheduled = timers[timer] else { return }
        if now < scheduled.at { now = scheduled.at }
        timers[timer] = nil
        event(.timer(timer, generation: scheduled.generation))
    }

    mutating func advance(to instant: Duration) {
        while let (timer, next) = timers.filter({ $0.value.at <= instant }).min(by: { $0.value.at < $1.value.at }) {
            now = max(now, next.at)
            timers[timer] = nil
            event(.timer(timer, generation: next.generation))
        }
        now = instant
    }

    @discardableResult
    mutating func subscribe(_ spec: FeedSpec) -> (key: String, rows: [String: ClientCore.ViewRow]) {
        let opened = core.subscribe(spec, now: now)
        run(opened.actions)
        return (opened.key, opened.rows)
    }

    @discardableResult
    mutating func enqueue(_ name: String, _ args: JSONValue) -> (local: Int, mid: Int64) {
        let queued = core.enqueue(name: name, args: args, now: now)
        run(queued.actions)
        return (queued.local, queued.mid)
    }

    mutating func register(_ name: String, _ effect: @escaping MutatorEffect) {
        run(core.register(name, effect: effect))
    }

    mutating func run(_ actions: [ClientCore.Action]) {
        for action in actions {
            switch action {
            case .fetchToken: tokenFetches += 1
            case .open(let id): opens.append(id)
            case .send(_, let text, _): sent.append(try! JSONParser.parse(text))
            case .close(let id, _): closes.append(id)
            case .persist(let batch): store.apply(batch)
            case .schedule(let timer, let after, let generation): timers[timer] = (now + after, generation)
            case .publish(let feed, let events, _): published[feed, default: []].append(contentsOf: events)
            case .topic(let feed, let event): topicEvents[feed, default: []].append(event)
            case .decided(let local, _, let decision, let earlier): decided.append((local, decision, earlier))
            case .status(let status): statuses.append(status)
            case .report(let error): reports.append(error)
            }
        }
    }

    /// Sent messages, forgetting them.
    @discardableResult
    mutating func takeSent() -> [JSONValue] {
        defer { sent = [] }
        return sent
    }

    func view(_ key: String) -> [String: JSONValue] {
        (core.feeds[key]?.view ?? [:]).mapValues(\.row)
    }

    func wireID(_ key: String) -> String? { core.feeds[key]?.phase.wireID }
}
