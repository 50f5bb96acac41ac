import Foundation
@testable import SynclineClient
import SynclineProtocol

extension ScenarioRunner {
    /// Runs every step; returns the failures (empty when the scenario passes).
    mutating func runAll() -> [String] {
        for (i, step) in (scenario["steps"]?.array ?? []).enumerated() {
            stepIndex = i
            perform(step)
            if failures.count > 20 { break }
        }
        return failures
    }

    mutating func perform(_ step: JSONValue) {
        let kind = step["step"]?.stringValue ?? ""
        switch kind {
        case "app.subscribe":
            let spec = FeedSpec.collection(name: step["collection"]?.stringValue ?? "",
                                           filter: Dictionary(step["where"]?.members ?? [], uniquingKeysWith: { $1 }))
            subscribe(step["query"]?.stringValue ?? "", spec)
        case "app.subscribe_topic":
            subscribe(step["query"]?.stringValue ?? "", .topic(step["topic"]?.stringValue ?? ""))
        case "app.unsubscribe":
            if let i = queries.lastIndex(where: { $0.name == step["query"]?.stringValue }) {
                run(core.unsubscribe(queries[i].key, now: now))
                queries.remove(at: i)
            }
        case "app.mutate":
            let queued = core.enqueue(name: step["name"]?.stringValue ?? "", args: step["args"] ?? .object([]), now: now)
            if let name = step["mutation"]?.stringValue {
                mutationNames[queued.local] = name
                outcomes[name] = "pending"
            }
            run(queued.actions)
        case "app.reload":
            let previous = queries
            core = Self.makeCore(scenario)
            timers = [:]
            pendingOpen = nil
            connection = nil
            queries = []
            ended = [:]
            topicMessages = [:]
            mutationNames = [:]
            outcomes = [:]
            settled = []
            errors = []
            watches = [:]
            countWatches = [:]
            startApp()
            for query in previous { subscribe(query.name, query.spec) }
        case "app.online":
            run(core.online(now: now))
        case "server.accept":
            guard let id = pendingOpen else { return fail("server.accept without a pending connection attempt") }
            pendingOpen = nil
            connection = id
            event(.opened(id))
        case "server.refuse":
            guard let id = pendingOpen else { return fail("server.refuse without a pending connection attempt") }
            pendingOpen = nil
            event(.closed(id, code: nil, reason: "refused"))
        case "server.send":
            guard let id = connection else { return fail("server.send without an open connection") }
            event(.received(id, substitute(step["message"] ?? .null)))
        case "server.close":
            guard let id = connection else { return fail("server.close without an open connection") }
            connection = nil
            event(.closed(id, code: step["code"]?.int64.map { UInt16($0) }, reason: step["reason"]?.stringValue ?? ""))
        case "server.drop":
            guard let id = connection else { return fail("server.drop without an open connection") }
            connection = nil
            event(.closed(id, code: nil, reason: "dropped"))
        case "time.advance":
            advance(to: now + .milliseconds(step["ms"]?.int64 ?? 0))
        case "time.until_connect":
            let start = now
            let maxMS = step["max_ms"]?.int64 ?? 60_000
            while pendingOpen == nil {
                guard let next = timers.values.map(\.at).min(), next - start <= .milliseconds(maxMS) else {
                    return fail("no connection attempt within \(maxMS) ms")
                }
                advance(to: next)
            }
            if let most = step["at_most_ms"]?.int64, now - start > .milliseconds(most) {
                fail("the connection attempt came after \(now - start), more than \(most) ms")
            }
        case "expect.sent":
            let includePings = step["include_pings"]?.bool == true
            let actual = sent.filter { includePings || $0["type"] != "ping" }
            sent = []
            let expected = step["messages"] ?? .array([])
            if !matches(expected, .array(actual)) {
                fail("sent \(JSONValue.array(actual).jsonText), expected \(expected.jsonText)")
            }
        case "expect.connecting":
            if pendingOpen == nil { fail("no connection attempt pending") }
        case "expect.not_connecting":
            if pendingOpen != nil { fail("a connection attempt is pending") }
        case "expect.state":
            expectState(step)
        case "watch":
            let id = watchID(step)
            watches[id] = [cell(id)]
        case "expect.seen":
            let id = watchID(step)
            let seen = watches[id] ?? []
            let expected = step["values"]?.array ?? []
            if seen.map(\.keyString) != expected.map(\.keyString) {
                fail("seen \(JSONValue.array(seen).jsonText) for \(id.replacingOccurrences(of: "\u{1}", with: " ")), expected \(JSONValue.array(expected).jsonText)")
            }
            watches[id] = [cell(id)]
        case "watch_count":
            let name = step["name"]?.stringValue ?? ""
            let query = step["query"]?.stringValue ?? ""
            let filter = Dictionary(step["where"]?.members ?? [], uniquingKeysWith: { $1 })
            countWatches[name] = (query, filter, [count(query, filter)])
        case "expect.count_seen":
            let name = step["name"]?.stringValue ?? ""
            let seen = countWatches[name]?.seen ?? []
            let expected = step["values"]?.array?.compactMap { $0.int64.map(Int.init) } ?? []
            if seen != expected { fail("counts seen for \(name): \(seen), expected \(expected)") }
            if let watch = countWatches[name] { countWatches[name]!.seen = [count(watch.query, watch.filter)] }
        default:
            fail("unknown step \(kind)")
        }
    }

    func watchID(_ step: JSONValue) -> String {
        [step["query"]?.stringValue ?? "", (step["key"] ?? .null).keyString, step["column"]?.stringValue ?? ""].joined(separator: "\u{1}")
    }

    mutating func subscribe(_ name: String, _ spec: FeedSpec) {
        let opened = core.subscribe(spec, now: now)
        queries.append((name, spec, opened.key))
        ended[opened.key] = nil
        run(opened.actions)
    }

    mutating func expectState(_ step: JSONValue) {
        let status = core.currentStatus
        if let expected = step["status"]?.stringValue, expected != status.state.rawValue {
            fail("status \(status.state.rawValue), expected \(expected)")
        }
        if let expected = step["pending"]?.int64, Int(expected) != status.pending {
            fail("pending \(status.pending), expected \(expected)")
        }
        if let expected = step["token_requests"]?.int64, Int(expected) != tokenRequests {
            fail("token requests \(tokenRequests), expected \(expected)")
        }
        if let expected = step["errors"]?.array, expected.compactMap(\.stringValue) != errors {
            fail("errors \(errors), expected \(expected.map(\.jsonText))")
        }
        if let expected = step["settled"], !matches(expected, .array(settled)) {
            fail("settled \(JSONValue.array(settled).jsonText), expected \(expected.jsonText)")
        }
        for (name, expected) in step["outcomes"]?.members ?? [] {
            let actual = outcomes[name]
            if !matches(expected, actual) { fail("outcome of \(name): \(actual?.jsonText ?? "none"), expected \(expected.jsonText)") }
        }
        for (name, expected) in step["queries"]?.members ?? [] {
            guard let key = queryKey(name) else {
                fail("no query \(name)")
                continue
            }
            let view = core.feeds[key]?.view ?? [:]
            if let rows = expected["rows"]?.array {
                let actual = Array(view.values.map(\.row))
                if !Self.sameSet(rows, actual) {
                    fail("\(name) rows \(JSONValue.array(actual).jsonText), expected \(JSONValue.array(rows).jsonText)")
                }
            }
            if let pending = expected["pending"]?.array {
                let actual = view.values.filter(\.pending).map(\.key)
                if !Self.sameSet(pending, actual) {
                    fail("\(name) pending \(JSONValue.array(actual).jsonText), expected \(JSONValue.array(pending).jsonText)")
                }
            }
            if let error = expected["error"] {
                let actual: JSONValue = ended[key].map { .string($0) } ?? .null
                if actual != error { fail("\(name) error \(actual.jsonText), expected \(error.jsonText)") }
            }
            if let messages = expected["messages"] {
                let actual = JSONValue.array(topicMessages[key] ?? [])
                if !matches(messages, actual) { fail("\(name) messages \(actual.jsonText), expected \(messages.jsonText)") }
            }
        }
    }
}
