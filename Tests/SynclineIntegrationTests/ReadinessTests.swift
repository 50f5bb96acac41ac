import Foundation
import SynclineProtocol
import SynclinePostgres
import SynclineServer
import Testing

/// Health that means delivery, against a real server and Postgres: `/readyz` follows the canary
/// (published through the node's own change log, timed when its own tail sees it), the tail's
/// LISTEN connection (partitioned through `FaultProxy`) and the SIGTERM drain.
@Suite struct ReadinessTests {
    static let interval: Int64 = 200
    /// The production default. In the parallel suite on 2 cores a canary round trip alone took
    /// over 1.1 s, so a 1.5 s threshold made nodes late, and send their clients away, unfrozen.
    static let late: Int64 = 5_000

    static func readyz(_ port: Int) async throws -> (status: Int, body: String) {
        let answer = try await RawHTTP.request(port: port, "GET /readyz HTTP/1.1\nHost: x\nConnection: close\n\n")
        let status = Int(answer.split(separator: " ").dropFirst().first ?? "") ?? 0
        let body = answer.range(of: "\r\n\r\n").map { String(answer[$0.upperBound...]) } ?? ""
        return (status, body.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Polls `/readyz` until it answers `status`; returns how long that took and the body.
    static func waitFor(_ status: Int, on port: Int, timeout: Duration) async throws -> (Duration, String) {
        let start = ContinuousClock.now
        var last = (status: 0, body: "")
        while ContinuousClock.now - start < timeout {
            last = try await readyz(port)
            if last.status == status { return (ContinuousClock.now - start, last.body) }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestFailure("/readyz did not answer \(status) within \(timeout); last: \(last.status) \(last.body)")
    }

    /// `body`, up to three tries: at the suite's start, with 400 tests starting at once on 2 cores,
    /// a first connection through the proxy once took longer than PostgresNIO's 10 s connect timeout.
    static func withRetries<T>(_ what: String, _ body: () async throws -> T) async throws -> T {
        var failures: [String] = []
        while true {
            do {
                return try await body()
            } catch {
                failures.append(String(reflecting: error))
                print("\(what) failed (try \(failures.count) of 3): \(failures.last!)")
                if failures.count == 3 { throw TestFailure("\(what) failed: \(failures)") }
            }
        }
    }

    /// A server over `database`, with Postgres's own description when it cannot start.
    static func start(_ database: TestDatabase) async throws -> TestServer {
        try await withRetries("starting a server over \(database.url)") {
            try await TestServer.start(database: database, configure: Self.canaryOn)
        }
    }

    static func canaryOn(_ options: inout SynclineApplication.Options) {
        options.server.canaryIntervalMilliseconds = interval
        options.server.canaryLateMilliseconds = late
    }

    @Test("the fault proxy passes a Postgres connection, and names it")
    func proxyPasses() async throws {
        let url = try await TestCluster.makeDatabase()
        let direct = try PostgresSettings(url: url)
        let proxy = try await FaultProxy.start(forwardingTo: direct.host, port: direct.port)
        let proxied = proxy.url(replacingPortOf: url)
        print("proxy: \(direct.host):\(direct.port) via \(proxied)")
        let answer = try await Self.withRetries("a connection through the proxy") {
            try await TestDatabase(url: proxied).withConnection { connection in
                var n = 0
                for try await value in try await connection.query("SELECT 41 + 1", logger: TestCluster.logger).decode(Int.self) { n = value }
                return n
            }
        }
        #expect(answer == 42)
        await proxy.stop()
    }

    @Test("/readyz fails within the canary threshold when the LISTEN connection is partitioned, and recovers")
    func partitionedTail() async throws {
        let url = try await TestCluster.makeDatabase()
        let direct = try PostgresSettings(url: url)
        let proxy = try await FaultProxy.start(forwardingTo: direct.host, port: direct.port)
        defer { Task { await proxy.stop() } }
        let database = TestDatabase(url: proxy.url(replacingPortOf: url))
        let server = try await Self.start(database)
        do {
            // Ready, with a canary lag measured through the tail.
            let (_, body) = try await Self.waitFor(200, on: server.port, timeout: .seconds(10))
            #expect(body.contains("\"canary_lag_ms\""), "\(body)")
            try await eventually("a canary round trip", timeout: .seconds(10)) { server.app.health.lastRoundTrip != nil }
            try await Task.sleep(for: .seconds(1))
            print("measured: canary round trip (publish → delivered by this node's tail) \(server.app.health.lastRoundTrip!) on an idle node")
            let names = await proxy.openConnections()
            #expect(names.contains("syncline-tail"), "connections through the proxy: \(names)")

            // Partition the tail alone: its socket stays open, nothing flows. The canary (on the
            // main pool) still commits; the tail never sees it.
            let lagAtFreeze = server.app.health.lagMilliseconds ?? 0
            proxy.freeze(applicationName: "syncline-tail")
            let (failedAfter, reason) = try await Self.waitFor(503, on: server.port, timeout: .seconds(Int64(Self.late) / 1_000 * 4 + 5))
            print("measured: LISTEN connection frozen → /readyz 503 after \(failedAfter) (threshold \(Self.late) ms, canary every \(Self.interval) ms, lag \(lagAtFreeze) ms when frozen): \(reason)")
            #expect(reason.contains("canary is late"), "\(reason)")
            #expect(server.app.hub.isListening, "a frozen link does not look disconnected; only the canary tells")
            // Not before the threshold: a stall shorter than it is not an outage. The lag grows at
            // most as fast as time from what it was when frozen (under load, a second or more).
            #expect(failedAfter >= .milliseconds(Self.late - lagAtFreeze - Self.interval), "lag \(lagAtFreeze) ms when frozen")

            proxy.resume()
            let (recoveredAfter, _) = try await Self.waitFor(200, on: server.port, timeout: .seconds(20))
            print("measured: partition healed → /readyz 200 after \(recoveredAfter)")

            // Cut while frozen: the tail sees its connection die and cannot reconnect (the new
            // connection is frozen at its startup message): not ready, for the tail's reason.
            proxy.freeze(applicationName: "syncline-tail")
            proxy.cut(applicationName: "syncline-tail")
            let (cutAfter, cutReason) = try await Self.waitFor(503, on: server.port, timeout: .seconds(15))
            print("measured: LISTEN connection cut → /readyz 503 after \(cutAfter): \(cutReason)")
            #expect(cutReason.contains("LISTEN connection is down") || cutReason.contains("canary is late"), "\(cutReason)")
            proxy.resume()
            let (reconnectedAfter, _) = try await Self.waitFor(200, on: server.port, timeout: .seconds(20))
            print("measured: tail reconnected → /readyz 200 after \(reconnectedAfter)")
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    @Test("two nodes: the one whose tail alone is partitioned sends its clients away (1001); all partitioned, all stay ready")
    func lateNodeRule() async throws {
        let url = try await TestCluster.makeDatabase()
        let direct = try PostgresSettings(url: url)
        let proxyA = try await FaultProxy.start(forwardingTo: direct.host, port: direct.port)
        let proxyB = try await FaultProxy.start(forwardingTo: direct.host, port: direct.port)
        defer { Task { await proxyA.stop(); await proxyB.stop() } }
        let a = try await Self.start(TestDatabase(url: proxyA.url(replacingPortOf: url)))
        let b: TestServer
        do {
            b = try await Self.start(TestDatabase(url: proxyB.url(replacingPortOf: url)))
        } catch {
            await a.stop()
            throw error
        }
        do {
            try await eventually("each node sees the other in syncline.nodes", timeout: .seconds(10)) {
                a.app.health.peerCount == 1 && b.app.health.peerCount == 1
            }
            let onA = try await TestClient.open(a, sub: "alice")
            let onB = try await TestClient.open(b, sub: "bob")

            // Only A's tail stalls: A is late, B healthy → A answers 503 and closes with 1001.
            let start = ContinuousClock.now
            proxyA.freeze(applicationName: "syncline-tail")
            let (code, reason) = try await onA.closeFrame(timeout: .seconds(Int64(Self.late) / 1_000 * 4 + 5))
            print("measured: A's tail frozen → A's clients closed \(code.map(String.init) ?? "?") after \(ContinuousClock.now - start): \(reason)")
            #expect(code == 1001)
            #expect(reason.contains("late"), "\(reason)")
            #expect(try await Self.readyz(a.port).status == 503)
            #expect(try await Self.readyz(b.port).status == 200)
            onB.send(["type": "ping", "t": 1])
            #expect(try await onB.next("pong", timeout: .seconds(5))["type"] == .string("pong"))
            proxyA.resume()
            _ = try await Self.waitFor(200, on: a.port, timeout: .seconds(20))

            // Every tail stalls (as under a slow Postgres): both late, neither healthy → both
            // stay ready with the alert, nobody is sent away.
            try await eventually("the nodes see each other healthy again", timeout: .seconds(20)) {
                (a.app.health.lagMilliseconds ?? .max) < Self.late / 4 && (b.app.health.lagMilliseconds ?? .max) < Self.late / 4
            }
            let stayA = try await TestClient.open(a, sub: "alice")
            proxyA.freeze(applicationName: "syncline-tail")
            proxyB.freeze(applicationName: "syncline-tail")
            // Past the threshold by a few rule steps: each step until now could have sent clients away.
            try await eventually("both nodes late", timeout: .seconds(Int64(Self.late) / 1_000 * 3 + 5)) {
                (a.app.health.lagMilliseconds ?? 0) > Self.late + 5 * Self.interval && (b.app.health.lagMilliseconds ?? 0) > Self.late + 5 * Self.interval
            }
            for node in [a, b] {
                let (status, body) = try await Self.readyz(node.port)
                #expect(status == 200, "\(body)")
                #expect(body.contains("alert"), "\(body)")
            }
            stayA.send(["type": "ping", "t": 2])
            #expect(try await stayA.next("pong", timeout: .seconds(5))["type"] == .string("pong"), "A's client stays")
            onB.send(["type": "ping", "t": 3])
            #expect(try await onB.next("pong", timeout: .seconds(5))["type"] == .string("pong"), "B's client stays")
            proxyA.resume()
            proxyB.resume()
            _ = try await Self.waitFor(200, on: a.port, timeout: .seconds(20))
        } catch {
            await a.stop()
            await b.stop()
            throw error
        }
        await a.stop()
        await b.stop()
    }

    @Test("SIGTERM drain: /readyz 503 while still serving, then 1001")
    func drain() async throws {
        // Long enough that a loaded machine pings and opens a connection inside the drain (5 s
        // was seen too short in the parallel suite); the canary runs, but with a threshold no
        // load reaches, so only the drain makes /readyz fail.
        let drain: Int64 = 15_000
        let server = try await TestServer.start(configure: {
            Self.canaryOn(&$0)
            $0.server.canaryLateMilliseconds = 600_000
            $0.server.drainMilliseconds = drain
        })
        let client = try await TestClient.open(server)
        #expect(try await Self.readyz(server.port).status == 200)
        let start = ContinuousClock.now
        let stopping = Task { await server.stop() }
        let (after, reason) = try await Self.waitFor(503, on: server.port, timeout: .seconds(5))
        #expect(reason.contains("draining"), "\(reason)")
        // Still serving during the drain: an open connection answers, and a new one is admitted.
        client.send(["type": "ping", "t": 1])
        #expect(try await client.next("pong", timeout: .seconds(5))["type"] == .string("pong"))
        let late = try await TestClient.open(server, sub: "bob")
        #expect(try await client.closeCode(timeout: .seconds(45)) == 1001)
        let closedAfter = ContinuousClock.now - start
        #expect(try await late.closeCode(timeout: .seconds(5)) == 1001)
        print("measured: shutdown → /readyz 503 after \(after), 1001 after \(closedAfter) (drain \(drain) ms)")
        #expect(closedAfter >= .milliseconds(drain))
        await stopping.value
    }

    @Test("syncline.canary answers each peer's lag aged by the time since that peer wrote it")
    func peerLagsAged() async throws {
        try await TestServer.with { server in
            // A peer that said 100 ms, 3 s ago; one that said 40 ms just now (`now()`: one instant
            // for both rows, where clock_timestamp() was once 15 ms apart between them).
            try await server.database.execute(
                "INSERT INTO syncline.nodes (node_id, seen_at, lag_ms) VALUES ('quiet', now() - interval '3 seconds', 100), ('fresh', now(), 40)")
            let lags = try await server.database.scalar(
                "SELECT array_to_string(out_peer_lags_ms, ' ') FROM syncline.canary('probe', '{}'::jsonb, 0, 60000)")
                .split(separator: " ").compactMap { Int64($0) }
            #expect(lags.count == 2, "\(lags)")  // in node-id order: fresh, quiet
            if lags.count == 2 {
                // Both aged from the same instant, however long psql took: 3 s apart beyond what they said.
                #expect(lags[0] >= 40, "\(lags)")
                #expect(abs((lags[1] - 100) - (lags[0] - 40) - 3_000) <= 2, "\(lags)")
            }
        }
    }

    @Test("the canary's topic is reserved: no client may subscribe, whatever the topic policy")
    func canaryTopicReserved() async throws {
        try await TestServer.with(configure: Self.canaryOn) { server in
            // An application policy that allows every topic.
            try await server.database.execute(
                "CREATE FUNCTION public.any_topic(topic text) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
                "UPDATE syncline.topic_policies SET policy = 'public.any_topic(text)'")
            let client = try await TestClient.open(server)
            client.send(["type": "subscribe", "id": "ok", "topic": "user:bob"])
            #expect(try await client.next("subscribed", skipping: ["pong"])["id"] == .string("ok"))
            client.send(["type": "subscribe", "id": "canary", "topic": NodeHealth.canaryTopic])
            let refused = try await client.next("error", skipping: ["pong", "snapshot", "changes"])
            #expect(refused["code"] == .string("forbidden"), "\(refused.jsonText)")
            #expect(refused["ref"] == .string("canary"))
            await client.close()
        }
    }
}
