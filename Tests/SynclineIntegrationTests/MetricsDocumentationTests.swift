import Foundation
import SynclineProtocol
import Testing

/// docs/metrics.md cannot fall behind: a real `syncline serve` (the executable bootstraps the
/// Prometheus registry) gets some traffic — a subscription, a change, a mutation, canaries — then
/// every metric family its `/metrics` exports must be documented there.
@Suite struct MetricsDocumentationTests {
    /// Metric family names in a Prometheus text exposition: the `# TYPE` lines, and the sample
    /// lines' names (without a histogram's or summary's `_bucket`/`_sum`/`_count`).
    static func families(in exposition: String) -> Set<String> {
        var typed = Set<String>()
        var sampled = Set<String>()
        for line in exposition.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                if parts.count >= 3 { typed.insert(String(parts[2])) }
            } else if !line.hasPrefix("#"), let name = line.split(whereSeparator: { $0 == "{" || $0 == " " }).first {
                sampled.insert(String(name))
            }
        }
        var names = typed
        for name in sampled {
            let base = ["_bucket", "_sum", "_count"].first(where: { name.hasSuffix($0) }).map { String(name.dropLast($0.count)) }
            if let base, typed.contains(base) { continue }
            names.insert(name)
        }
        return names
    }

    /// The names docs/metrics.md documents: every `` `syncline_…` `` / `` `pg_…` `` in backticks.
    static func documented(in markdown: String) -> Set<String> {
        var names = Set<String>()
        for piece in markdown.split(separator: "`", omittingEmptySubsequences: false).enumerated() where piece.offset % 2 == 1 {
            let name = piece.element
            if !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == ":" }) {
                names.insert(String(name))
            }
        }
        return names
    }

    @Test("the family parser reads TYPE lines and folds histogram samples")
    func parser() {
        let text = """
            # TYPE a_total counter
            a_total 3
            # TYPE b_seconds histogram
            b_seconds_bucket{le="0.1"} 1
            b_seconds_sum 0.05
            b_seconds_count 1
            untyped_thing 4
            """
        #expect(Self.families(in: text) == ["a_total", "b_seconds", "untyped_thing"])
        #expect(Self.documented(in: "| `a_total` | counter |\n`not a name` and `b_seconds`") == ["a_total", "b_seconds"])
    }

    @Test("every series /metrics exports after some traffic is documented in docs/metrics.md")
    func everySeriesDocumented() async throws {
        let database = TestDatabase(url: try await TestCluster.makeDatabase())
        let port = try freePort()
        let child = try ChildProcess(ChildProcess.binary("syncline"), [
            "serve", "--database-url", database.url, "--port", "\(port)", "--demo", "--no-demo-generator",
            "--insecure-dev-auth", "--event-loop-threads", "1", "--log-level", "warning",
            "--canary-interval-ms", "200", "--drain-seconds", "0",
        ], name: "syncline serve :\(port)")
        defer { if child.isRunning { child.signal(SIGKILL) } }
        try await eventually("the server is ready", timeout: .seconds(60)) {
            if !child.isRunning { throw TestFailure("the server exited:\n" + child.lines.joined(separator: "\n")) }
            let answer = try? await RawHTTP.request(port: port, "GET /readyz HTTP/1.1\nHost: x\nConnection: close\n\n")
            return answer?.hasPrefix("HTTP/1.1 200") ?? false
        }

        // Traffic: a subscription with its snapshot, a committed change, a mutation, a topic.
        let client = try await TestClient.connect(url: "ws://127.0.0.1:\(port)/v1/sync")
        client.send(["type": "hello", "client_id": "metrics-doc", "token": TestClient.unsignedToken("alice")])
        _ = try await client.next("welcome")
        client.send(TestClient.encode([
            "type": "subscribe", "id": "t", "collection": "transactions", "where": ["account_id": "alice-checking"],
        ]))
        while try await client.next("snapshot", skipping: ["subscribed", "changes", "pong"])["done"] != .bool(true) {}
        client.send(#"{"type":"mutate","mid":1,"name":"transfer","args":{"from":"alice-checking","to":"bob-checking","amount":1.00,"memo":"m"}}"#)
        _ = try await client.next("ack", timeout: .seconds(15), skipping: ["changes", "snapshot", "pong"])
        client.send(["type": "subscribe", "id": "me", "topic": "user:alice"])
        _ = try await client.next("subscribed", skipping: ["changes", "snapshot", "pong"])
        try await Task.sleep(for: .seconds(1))  // a few canary rounds

        let answer = try await RawHTTP.request(port: port, "GET /metrics HTTP/1.1\nHost: x\nConnection: close\n\n")
        #expect(answer.hasPrefix("HTTP/1.1 200"))
        let exposition = answer.range(of: "\r\n\r\n").map { String(answer[$0.upperBound...]) } ?? ""
        let exported = Self.families(in: exposition)
        // The scrape is real: the core series are there (an empty registry would pass vacuously).
        for name in ["syncline_connections", "syncline_canary_lag_seconds", "syncline_pg_notification_queue_usage", "syncline_ready"] {
            #expect(exported.contains(name), "\(name) missing from /metrics:\n\(exposition)")
        }
        let markdown = try String(contentsOfFile: repositoryRoot + "/docs/metrics.md", encoding: .utf8)
        let undocumented = exported.subtracting(Self.documented(in: markdown)).sorted()
        #expect(undocumented.isEmpty, "series exported by /metrics but not documented in docs/metrics.md: \(undocumented.joined(separator: ", "))")
        print("measured: /metrics exported \(exported.count) series families after traffic; undocumented: \(undocumented.count)")
        await client.close()
        child.signal(SIGTERM)
        _ = try await child.waitForExit()
    }
}
