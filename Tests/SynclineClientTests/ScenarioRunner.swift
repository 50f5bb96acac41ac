import Foundation
@testable import SynclineClient
import SynclineProtocol

/// Runs one `protocol/client-scenarios/*.json` file against ClientCore, as that folder's README
/// describes: the app's calls, the server's messages and time are steps; checks compare what the
/// core sent and what the app would be shown.
struct ScenarioRunner {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let scenario: JSONValue
    var core: ClientCore
    var store = StoredState()
    var now: Duration = .zero
    let wallStart: Double = 1_800_000_000
    var timers: [ClientTimer: (at: Duration, generation: Int)] = [:]
    var pendingOpen: Int?
    var connection: Int?
    var sent: [JSONValue] = []
    var bindings: [String: JSONValue] = [:]
    var queries: [(name: String, spec: FeedSpec, key: String)] = []
    var ended: [String: String] = [:]
    var topicMessages: [String: [JSONValue]] = [:]
    var mutationNames: [Int: String] = [:]
    var outcomes: [String: JSONValue] = [:]
    var settled: [JSONValue] = []
    var errors: [String] = []
    var tokenRequests = 0
    var watches: [String: [JSONValue]] = [:]
    var countWatches: [String: (query: String, filter: [String: JSONValue], seen: [Int])] = [:]
    var failures: [String] = []
    var stepIndex = 0

    init(_ scenario: JSONValue) {
        self.scenario = scenario
        core = ScenarioRunner.makeCore(scenario)
        startApp()
    }

    static func makeCore(_ scenario: JSONValue) -> ClientCore {
        var configuration = ClientCore.Configuration()
        let client = scenario["client"]
        if let backoff = client?["backoff"] {
            if let base = backoff["base_ms"]?.int64 { configuration.backoff.base = .milliseconds(base) }
            if let cap = backoff["cap_ms"]?.int64 { configuration.backoff.cap = .milliseconds(cap) }
        }
        for (collection, columns) in client?["keys"]?.members ?? [] {
            configuration.keyColumns[collection] = columns.array?.compactMap(\.stringValue) ?? []
        }
        var core = ClientCore(configuration: configuration)
        if let ms = client?["heartbeat_ms"]?.int64 { core.heartbeatOverride = .milliseconds(ms) }
        for (name, ops) in scenario["mutators"]?.members ?? [] {
            _ = core.register(name, effect: ScenarioRunner.effect(ops.array ?? [], keys: configuration.keyColumns))
        }
        return core
    }

    // MARK: Effects as data

    static func resolve(_ value: JSONValue, _ args: JSONValue) -> JSONValue {
        switch value {
        case .object(let members):
            if members.count == 1, members[0].0 == "arg", let name = members[0].1.stringValue { return args[name] ?? .null }
            if members.count == 1, members[0].0 == "neg" {
                let inner = resolve(members[0].1, args)
                guard let d = inner.decimal else { return .null }
                return JSONValue(decimal: -d, scale: inner.scale)
            }
            return .object(members.map { ($0.0, resolve($0.1, args)) })
        case .array(let values): return .array(values.map { resolve($0, args) })
        default: return value
        }
    }

    static func effect(_ ops: [JSONValue], keys: [String: [String]]) -> MutatorEffect {
        { rows, args in
            var inserts = 0
            for op in ops {
                guard let collection = op["collection"]?.stringValue else { continue }
                switch op["op"]?.stringValue {
                case "add":
                    let key = resolve(op["key"] ?? .null, args)
                    guard let column = op["column"]?.stringValue else { continue }
                    let value = resolve(op["value"] ?? .null, args)
                    rows.update(collection, key: key) { row in
                        if let sum = (row[column] ?? .number("0")).adding(value) { row = row.setting(column, to: sum) }
                    }
                case "set":
                    let key = resolve(op["key"] ?? .null, args)
                    let values = resolve(op["values"] ?? .object([]), args)
                    rows.update(collection, key: key) { row in
                        for (column, value) in values.members ?? [] { row = row.setting(column, to: value) }
                    }
                case "insert":
                    var row = resolve(op["row"] ?? .object([]), args)
                    inserts += 1
                    let columns = keys[collection] ?? ["id"]
                    if columns == ["id"], row["id"] == nil { row = row.setting("id", to: .string("pending:\(rows.mid):\(inserts)")) }
                    rows.put(collection, key: .object(columns.map { ($0, row[$0] ?? .null) }), row: row)
                case "delete":
                    rows.delete(collection, key: resolve(op["key"] ?? .null, args))
                default: break
                }
            }
        }
    }

    // MARK: Driving the core

    var wallNow: Double { wallStart + Double(now.components.seconds) + Double(now.components.attoseconds) / 1e18 }

    func token() -> String {
        let sub = scenario["token"]?["sub"]?.stringValue ?? "alice"
        let lifetime = scenario["token"]?["exp_in_s"]?.int64 ?? 3600
        func b64(_ s: String) -> String {
            Data(s.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                .replacingOccurrences(of: "=", with: "")
        }
        return b64("{\"alg\":\"none\"}") + "." + b64("{\"sub\":\"\(sub)\",\"exp\":\(Int(wallNow) + Int(lifetime))}") + "."
    }

    mutating func startApp() {
        let newID = "swift-scenario-\(UUID().uuidString.prefix(8).lowercased())"
        run(core.handle(.loaded(store, newClientID: newID), now: now))
    }

    mutating func event(_ event: ClientCore.Event) {
        run(core.handle(event, now: now))
    }

    mutating func run(_ actions: [ClientCore.Action]) {
        var queue = actions[...]
        while let action = queue.popFirst() {
            switch action {
            case .fetchToken:
                tokenRequests += 1
                queue.append(contentsOf: core.handle(.token(token(), nowSeconds: wallNow), now: now))
            case .open(let id): pendingOpen = id
            case .send(_, let text, let mid):
                let message = try! JSONParser.parse(text)
                if let mid {
                    let stored = store.mutations.first { $0.mid == mid }
                    if stored == nil || stored!.name != message["name"]?.stringValue || stored!.args.keyString != message["args"]?.keyString {
                        fail("mutate mid \(mid) sent before it was stored")
                    }
                }
                sent.append(message)
            case .close(let id, _):
                if pendingOpen == id { pendingOpen = nil }
                if connection == id { connection = nil }
            case .persist(let batch): store.apply(batch)
            case .schedule(let timer, let after, let generation): timers[timer] = (now + after, generation)
            case .publish(let feed, let events, _):
                for event in events { if case .ended(let code, _) = event { ended[feed] = code } }
                recordWatches()
            case .topic(let feed, let event):
                if case .message(let m) = event {
                    topicMessages[feed, default: []].append(["topic": .string(m.topic), "payload": m.payload, "cursor": .string(m.cursor)])
                }
                if case .ended(let code, _) = event { ended[feed] = code }
            case .decided(let local, let stored, let decision, let earlier):
                let outcome: JSONValue
                switch decision {
                case .acked(let result, _): outcome = ["ok": true, "result": result]
                case .rejected(let rejection): outcome = ["ok": false, "code": .string(rejection.code)]
                case .expired: outcome = ["ok": false, "code": "outcome_expired"]
                }
                if let name = mutationNames[local] {
                    outcomes[name] = outcome
                } else if earlier {
                    settled.append(.object([("mid", .number(String(stored.mid)))] + (outcome.members ?? [])))
                }
            case .status: break
            case .report(let error): errors.append(error.code)
            }
        }
    }

    mutating func fail(_ text: String) {
        failures.append("step \(stepIndex): \(text)")
    }

    /// Fires due timers in order until `instant`.
    mutating func advance(to instant: Duration) {
        while let (timer, next) = timers.filter({ $0.value.at <= instant }).min(by: { $0.value.at < $1.value.at }) {
            now = max(now, next.at)
            timers[timer] = nil
            event(.timer(timer, generation: next.generation))
        }
        now = max(now, instant)
    }

    // MARK: What the app sees

    func queryKey(_ name: String) -> String? { queries.last { $0.name == name }?.key }

    func cell(_ watch: String) -> JSONValue {
        let parts = watch.split(separator: "\u{1}", omittingEmptySubsequences: false).map(String.init)
        guard let key = queryKey(parts[0]), let row = core.feeds[key]?.view[parts[1]]?.row else { return "absent" }
        return row[parts[2]] ?? "absent"
    }

    func count(_ query: String, _ filter: [String: JSONValue]) -> Int {
        guard let key = queryKey(query) else { return 0 }
        return (core.feeds[key]?.view.values ?? [:].values).count { $0.row.matches(filter) }
    }

    mutating func recordWatches() {
        for (name, watch) in countWatches {
            let n = count(watch.query, watch.filter)
            if watch.seen.last != n { countWatches[name]!.seen.append(n) }
        }
        for (watch, values) in watches {
            let value = cell(watch)
            if values.last.map({ $0.keyString != value.keyString }) ?? true { watches[watch]!.append(value) }
        }
    }

    // MARK: Matching

    /// Matches `actual` against `expected` with placeholders; numbers by text, objects as field sets.
    mutating func matches(_ expected: JSONValue, _ actual: JSONValue?) -> Bool {
        if case .string(let s) = expected, s.hasPrefix("$") {
            guard let actual else { return false }
            if s == "$*" { return true }
            let name = String(s.dropFirst())
            if let bound = bindings[name] { return bound.keyString == actual.keyString }
            bindings[name] = actual
            return true
        }
        guard let actual else { return false }
        switch (expected, actual) {
        case (.object(let e), .object(let a)):
            let actualFields = Dictionary(a, uniquingKeysWith: { $1 })
            guard Set(e.map(\.0)) == Set(actualFields.keys) else { return false }
            for (name, value) in e where !matches(value, actualFields[name]) { return false }
            return true
        case (.array(let e), .array(let a)):
            guard e.count == a.count else { return false }
            for (x, y) in zip(e, a) where !matches(x, y) { return false }
            return true
        default:
            return expected == actual
        }
    }

    func substitute(_ value: JSONValue) -> JSONValue {
        switch value {
        case .string(let s) where s.hasPrefix("$"): return bindings[String(s.dropFirst())] ?? value
        case .object(let members): return .object(members.map { ($0.0, substitute($0.1)) })
        case .array(let values): return .array(values.map(substitute))
        default: return value
        }
    }

    static func sameSet(_ a: [JSONValue], _ b: [JSONValue]) -> Bool {
        a.map(\.keyString).sorted() == b.map(\.keyString).sorted()
    }
}

