import Foundation
import SynclineProtocol
@testable import SynclineServer
import Testing

/// The abuse limits of issue 14 through a real server, real PostgreSQL and real sockets: the
/// `Origin` allow-list, connections and upgrades per source address (directly and behind a proxy:
/// PROXY v2 and `X-Forwarded-For` from a trusted peer, the same from an untrusted one ignored),
/// sessions per user, inbound bytes per connection, the `where` size. Clients on 127.0.0.x source
/// addresses; in each case a bystander on another address or user keeps working.
@Suite("Limits")
struct LimitsTests {
    /// hello as `sub` on an upgraded socket; the first answer (welcome), or nil when closed.
    static func hello(_ socket: SourceSocket, sub: String) async throws -> JSONValue? {
        try await socket.sendText(#"{"type":"hello","client_id":"c-\#(UUID().uuidString.prefix(12))","token":"\#(Authenticator.unsignedToken(sub: sub))"}"#)
        return try await socket.nextMessage()
    }

    /// A working session: welcome, then a ping answered.
    static func expectWorking(_ socket: SourceSocket, sub: String = "bystander", _ comment: Comment) async throws {
        #expect(try await hello(socket, sub: sub)?["type"]?.stringValue == "welcome", comment)
        try await socket.sendText(#"{"type":"ping","t":"still-here"}"#)
        let pong = try await socket.nextMessage()
        #expect(pong?["type"]?.stringValue == "pong" && pong?["t"]?.stringValue == "still-here", comment)
    }

    @Test("a browser upgrade from another Origin gets 403; an allowed Origin and no Origin are accepted")
    func originAllowList() async throws {
        try await Self.with(configure: { $0.server.allowedOrigins = ["https://app.example.com"] }) { server in
            let (evil, refused) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.1", headers: [("Origin", "https://evil.example.com")])
            #expect(refused?.status == 403)
            #expect(refused?.head.contains("Sec-WebSocket-Accept") == false)
            await evil.close()
            let (null, nullAnswer) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.1", headers: [("Origin", "null")])
            #expect(nullAnswer?.status == 403)
            await null.close()
            let (allowed, ok) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.1", headers: [("Origin", "https://APP.example.com")])
            #expect(ok?.status == 101)
            try await Self.expectWorking(allowed, "the allowed origin")
            let (native, none) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.1")
            #expect(none?.status == 101)
            try await Self.expectWorking(native, "a client without Origin")
            await allowed.close()
            await native.close()
        }
    }

    @Test("connections per source address: the next gets 429, other addresses are unaffected, a closed one frees its slot")
    func perAddress() async throws {
        try await Self.with(configure: { $0.server.maximumConnectionsPerAddress = 3 }) { server in
            var open: [SourceSocket] = []
            for _ in 0..<3 {
                let (socket, answer) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.2")
                #expect(answer?.status == 101)
                open.append(socket)
            }
            let (over, refused) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.2")
            #expect(refused?.status == 429)
            #expect(refused?.header("Retry-After").flatMap { Int($0) }.map { $0 >= 1 } == true)
            await over.close()
            let (bystander, ok) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.3")
            #expect(ok?.status == 101)
            try await Self.expectWorking(bystander, "another address")
            try await Self.expectWorking(open[0], sub: "alice", "the limited address's open connections keep working")
            await open[1].close()
            try await Self.eventually("a closed connection frees its slot") {
                let (socket, answer) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.2")
                defer { Task { await socket.close() } }
                return answer?.status == 101
            }
            for socket in open { await socket.close() }
            await bystander.close()
        }
    }

    @Test("behind a trusted proxy the client address comes from PROXY v2 or X-Forwarded-For; an untrusted peer's are ignored")
    func behindAProxy() async throws {
        try await Self.with(configure: {
            $0.server.maximumConnectionsPerAddress = 2
            $0.server.trustedProxies = [IPNetwork("127.0.0.5")!]
        }) { server in
            let proxy = "127.0.0.5", destination = IPAddress("127.0.0.1")!
            func proxied(_ client: String) -> [UInt8] {
                ProxyProtocolV2.header(source: IPAddress(client)!, destination: destination)
            }
            var open: [SourceSocket] = []
            // PROXY v2: two from 198.51.100.1, the third refused; 198.51.100.2 through the same proxy is not.
            for _ in 0..<2 {
                let (socket, answer) = try await SourceSocket.upgrade(port: server.port, from: proxy, prefix: proxied("198.51.100.1"))
                #expect(answer?.status == 101)
                open.append(socket)
            }
            let (third, refused) = try await SourceSocket.upgrade(port: server.port, from: proxy, prefix: proxied("198.51.100.1"))
            #expect(refused?.status == 429)
            await third.close()
            let (other, ok) = try await SourceSocket.upgrade(port: server.port, from: proxy, prefix: proxied("198.51.100.2"))
            #expect(ok?.status == 101)
            try await Self.expectWorking(other, "another client behind the PROXY-protocol proxy")
            open.append(other)

            // X-Forwarded-For: the rightmost untrusted hop counts; a spoofed left part does not.
            for spoof in ["6.6.6.6", "7.7.7.7"] {
                let (socket, answer) = try await SourceSocket.upgrade(port: server.port, from: proxy, headers: [("X-Forwarded-For", "\(spoof), 198.51.100.3")])
                #expect(answer?.status == 101)
                open.append(socket)
            }
            let (xffThird, xffRefused) = try await SourceSocket.upgrade(port: server.port, from: proxy, headers: [("X-Forwarded-For", "8.8.8.8, 198.51.100.3")])
            #expect(xffRefused?.status == 429)
            await xffThird.close()
            let (xffOther, xffOK) = try await SourceSocket.upgrade(port: server.port, from: proxy, headers: [("X-Forwarded-For", "198.51.100.4")])
            #expect(xffOK?.status == 101)
            try await Self.expectWorking(xffOther, "another client behind the X-Forwarded-For proxy")
            open.append(xffOther)

            // An untrusted peer's X-Forwarded-For is ignored: a new address in each does not help.
            for n in 1...2 {
                let (socket, answer) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.6", headers: [("X-Forwarded-For", "203.0.113.\(n)")])
                #expect(answer?.status == 101)
                open.append(socket)
            }
            let (spoofer, spoofRefused) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.6", headers: [("X-Forwarded-For", "203.0.113.3")])
            #expect(spoofRefused?.status == 429)
            await spoofer.close()
            // ... and so is its PROXY header: not read as one, so the request is not HTTP.
            let (untrustedProxy, garbled) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.7", prefix: proxied("203.0.113.9"))
            #expect(garbled?.status != 101)
            await untrustedProxy.close()
            for socket in open { await socket.close() }
        }
    }

    @Test("upgrades per second per address: over the burst gets 429 with Retry-After; another address is unaffected")
    func upgradeRate() async throws {
        try await Self.with(configure: {
            // One token per 100 s: a loaded machine cannot refill the bucket during the test.
            $0.server.upgradesPerSecondPerAddress = 0.01
            $0.server.upgradeBurstPerAddress = 3
        }) { server in
            for _ in 0..<3 {
                let (socket, answer) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.8")
                #expect(answer?.status == 101)
                await socket.close()
            }
            let (over, refused) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.8")
            #expect(refused?.status == 429)
            let retryAfter = refused?.header("Retry-After").flatMap { Int($0) }
            #expect(retryAfter.map { (1...100).contains($0) } == true, "Retry-After \(String(describing: retryAfter)) at 0.01 upgrades/s")
            await over.close()
            let (bystander, ok) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.9")
            #expect(ok?.status == 101)
            try await Self.expectWorking(bystander, "another address")
            await bystander.close()
        }
    }

    @Test("sessions per user: the next hello is closed with 1013; another user is unaffected")
    func perUser() async throws {
        try await Self.with(configure: { $0.server.maximumConnectionsPerUser = 2 }) { server in
            var alice: [SourceSocket] = []
            for n in 0..<2 {
                let (socket, _) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.\(10 + n)")
                #expect(try await Self.hello(socket, sub: "alice")?["type"]?.stringValue == "welcome")
                alice.append(socket)
            }
            let (third, _) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.12")
            #expect(try await Self.hello(third, sub: "alice") == nil)
            #expect(third.lastClose.withLockedValue { $0 } == 1013)
            await third.close()
            let (bob, _) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.12")
            try await Self.expectWorking(bob, sub: "bob", "another user on the refused connection's address")
            try await socketStillAnswers(alice[0])
            await alice[1].close()
            try await Self.eventually("a closed session frees its user's slot") {
                let (socket, _) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.13")
                defer { Task { await socket.close() } }
                return try await Self.hello(socket, sub: "alice")?["type"]?.stringValue == "welcome"
            }
            await alice[0].close()
            await bob.close()
        }
    }

    func socketStillAnswers(_ socket: SourceSocket) async throws {
        try await socket.sendText(#"{"type":"ping","t":1}"#)
        #expect(try await socket.nextMessage()?["type"]?.stringValue == "pong")
    }

    /// 1 MiB of pings (64 KiB each) at 128 KiB/s with a 64 KiB burst: the server reads the flooder
    /// no faster than the rate (it stops reading; it neither buffers nor closes), while a
    /// bystander's pings are answered throughout. Without the limit all 16 pongs come back at once.
    @Test("inbound bytes per second: the flooder is read at the rate, a bystander keeps working")
    func inboundByteRate() async throws {
        let rate = 128 << 10, burst = 64 << 10, messages = 16
        try await Self.with(configure: {
            $0.server.inboundBytesPerSecond = rate
            $0.server.inboundBurstBytes = burst
        }) { server in
            let (flooder, _) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.20")
            #expect(try await Self.hello(flooder, sub: "flooder")?["type"]?.stringValue == "welcome")
            let (bystander, _) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.21")
            #expect(try await Self.hello(bystander, sub: "bystander")?["type"]?.stringValue == "welcome")
            let pad = String(repeating: "x", count: (64 << 10) - 40)
            let frames = (0..<messages).flatMap { SourceSocket.textFrame(#"{"type":"ping","t":\#($0),"pad":"\#(pad)"}"#) }
            let started = ContinuousClock.now
            let sending = Task { try await flooder.send(frames) }
            // The bystander, meanwhile.
            var bystanderPongs = 0
            for n in 0..<5 {
                try await bystander.sendText(#"{"type":"ping","t":\#(n)}"#)
                if try await bystander.nextMessage()?["type"]?.stringValue == "pong" { bystanderPongs += 1 }
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(bystanderPongs == 5)
            var pongs = 0
            while pongs < messages, let message = try await flooder.nextMessage(timeout: .seconds(30)) {
                if message["type"]?.stringValue == "pong" { pongs += 1 }
            }
            let elapsed = ContinuousClock.now - started
            try await sending.value
            #expect(pongs == messages, "the flooder is slowed, not closed")
            // The server may read a few socket reads past its budget before pausing (up to 4 × 64 KiB).
            let floor = Double(frames.count - burst - 4 * (64 << 10)) / Double(rate)
            #expect(elapsed >= .milliseconds(Int(floor * 1000)), "1 MiB read in \(elapsed); at \(rate) B/s it takes at least \(floor) s")
            print("inbound byte limit: \(frames.count) bytes at \(rate) B/s (burst \(burst)) took \(elapsed) (floor \(floor) s)")
            await flooder.close()
            await bystander.close()
        }
    }

    @Test("a 'where' over --max-where-bytes gets error bad_request; the connection stays")
    func whereSize() async throws {
        try await Self.with(configure: { $0.server.maximumWhereBytes = 256 }) { server in
            let (socket, _) = try await SourceSocket.upgrade(port: server.port, from: "127.0.0.1")
            #expect(try await Self.hello(socket, sub: "alice")?["type"]?.stringValue == "welcome")
            let long = String(repeating: "a", count: 300)
            try await socket.sendText(#"{"type":"subscribe","id":"big","collection":"accounts","where":{"owner":"\#(long)"}}"#)
            let error = try await socket.nextMessage()
            #expect(error?["type"]?.stringValue == "error")
            #expect(error?["code"]?.stringValue == "bad_request")
            #expect(error?["ref"]?.stringValue == "big")
            #expect(error?["message"]?.stringValue?.contains("--max-where-bytes") == true, "\(error?.jsonText ?? "nil")")
            try await socket.sendText(#"{"type":"subscribe","id":"mine","collection":"accounts","where":{"owner":"alice"}}"#)
            var answer = try await socket.nextMessage()
            while answer?["type"]?.stringValue == "error" { answer = try await socket.nextMessage() }
            #expect(answer?["type"]?.stringValue == "subscribed", "\(answer?.jsonText ?? "nil")")
            await socket.close()
        }
    }

    /// A test server whose heartbeat outlasts the test: `SourceSocket` does not answer pings, and
    /// under a loaded machine the harness's 2 s heartbeat would close its sockets mid-test.
    static func with(configure: (inout SynclineApplication.Options) -> Void, _ body: (TestServer) async throws -> Void) async throws {
        try await TestServer.with(configure: {
            $0.server.heartbeatMilliseconds = 120_000
            configure(&$0)
        }, body)
    }

    static func eventually(_ what: String, _ check: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while try await !check() {
            guard ContinuousClock.now < deadline else {
                Issue.record("never: \(what)")
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}
