import NIOCore
import NIOEmbedded
import NIOWebSocket
@testable import SynclineServer
@testable import SynclineWebSocket
import SynclineCore
import SynclineProtocol
import Testing

/// `SyncConnection` without sockets or PostgreSQL: the real connection, WebSocket layers, hub and
/// authenticator in a `NIOAsyncTestingChannel`, with in-memory feeds, client registry and
/// mutation submitter (`ConnectionHarness`). The wire-level behaviour of protocol/README.md:
/// session, feeds (snapshot → live, hand-offs), read-your-writes, errors and limits.
@Suite struct SyncConnectionTests {
    /// The handlers the server puts on an upgraded `/v1/sync` channel: the budgeted frame reader
    /// as `WebSocketUpgrader` adds it, then `SynclineServer.initialize`'s RFC 6455 layer (which
    /// encodes the frames itself) and the connection. The one place to change when the server's
    /// pipeline changes.
    static func addServerHandlers(to channel: NIOAsyncTestingChannel, environment: SyncEnvironment) async throws {
        let configuration = environment.configuration
        try await channel.testingEventLoop.executeInContext {
            let webSocket = WebSocketProtocolHandler(options: .init(configuration), deflate: nil)
            try channel.pipeline.syncOperations.addHandlers([
                WebSocketFrameReader(
                    maxFrameSize: WebSocketProtocolHandler.maximumFrameSize(messageLimit: configuration.maximumMessageBytes),
                    framesPerPass: configuration.maximumFramesPerPass),
                webSocket,
                SyncConnection(environment: environment, headerIdentity: nil, webSocket: webSocket),
            ])
        }
    }

    typealias H = ConnectionHarness

    // MARK: Session

    @Test func helloIsAnsweredWithWelcomeAndTheClientsLastMID() async throws {
        try await H.with { h in
            h.clients.clients.withLockedValue { $0["device-1"] = ("alice", 7) }
            let welcome = try await h.open()
            #expect(welcome["server"]?.stringValue == SynclineServer.serverName)
            #expect(welcome["last_mid"] == .number("7"))
            #expect(welcome["heartbeat_ms"] == .number("15000"))
            // A new client id is registered to the token's sub.
            try await H.with { other in
                let welcome = try await other.open(sub: "bob", clientID: "device-2")
                #expect(welcome["last_mid"] == .number("0"))
                #expect(other.clients.clients.withLockedValue { $0["device-2"]?.owner } == "bob")
            }
        }
    }

    @Test func aTokenSignedWithAnotherKeyClosesWith4001() async throws {
        try await H.with { h in
            let forged = try await H.token(sub: "alice", secret: "another-secret-0123456789abcdef-012345")
            try await h.send(#"{"type":"hello","client_id":"device-1","token":"\#(forged)"}"#)
            let close = try await h.closeFrame()
            #expect(close.code == 4001)
            #expect(close.reason.contains("signature"), "the reason says why: \(close.reason)")
            #expect(h.clients.clients.withLockedValue { $0.isEmpty }, "a refused hello registers nothing")
        }
    }

    @Test func aClientIDOfAnotherUserClosesWith4003() async throws {
        try await H.with { h in
            h.clients.clients.withLockedValue { $0["device-1"] = ("bob", 3) }
            try await h.send(#"{"type":"hello","client_id":"device-1","token":"\#(try await H.token(sub: "alice"))"}"#)
            let close = try await h.closeFrame()
            #expect(close.code == 4003)
            #expect(close.reason == "client_id belongs to another user")
        }
    }

    @Test func aFirstMessageOtherThanHelloClosesWith4400() async throws {
        try await H.with { h in
            try await h.send(#"{"type":"ping"}"#)
            #expect(try await h.closeFrame().code == 4400)
        }
    }

    @Test func theSessionClosesWith4001WhenItsTokenExpires() async throws {
        try await H.with { h in
            let token = try await H.token(sub: "alice", lifetime: 5)
            try await h.send(#"{"type":"hello","client_id":"device-1","token":"\#(token)"}"#)
            _ = try await h.next("welcome")
            try await h.expectNothingMore()
            // Expiry plus the 60 s leeway, on the loop's virtual clock.
            await h.loop.advanceTime(by: .seconds(66))
            let close = try await h.closeFrame()
            #expect(close.code == 4001)
            #expect(close.reason == "token expired")
        }
    }

    // MARK: Errors (protocol §2, §7)

    @Test func invalidJSONAndUnknownTypesGetErrorsAndTheConnectionStaysOpen() async throws {
        try await H.with { h in
            try await h.open()
            try await h.send("not json", #"{"type":"frobnicate"}"#, #"[1,2]"#, #"{"type":"ping","t":42}"#)
            #expect(try await h.next("error")["code"]?.stringValue == "bad_request")
            #expect(try await h.next("error")["code"]?.stringValue == "unknown_type")
            #expect(try await h.next("error")["code"]?.stringValue == "bad_request")
            #expect(try await h.next("pong")["t"] == .number("42"))
        }
    }

    @Test func aFloodGetsRateLimitedThenCloses1008() async throws {
        // 2 messages a second, burst 4: after hello, three pings pass (a fourth if half a second
        // went by: the bucket refills in real time); the next are refused with rate_limited, and
        // more than a second's worth refused within a second closes.
        try await H.with(configure: { $0.maximumMessagesPerSecond = 2 }) { h in
            try await h.open()
            try await h.send(Array(repeating: #"{"type":"ping"}"#, count: 8))
            var messages: [JSONValue] = []
            var frame = try await h.nextFrame()
            while frame.opcode == 0x1 {
                messages.append(try JSONParser.parse(frame.text))
                frame = try await h.nextFrame()
            }
            let types = messages.map { $0["type"]?.stringValue ?? "" }
            let pongs = types.prefix { $0 == "pong" }.count
            #expect((3...4).contains(pongs), "\(types)")
            #expect(Array(types.dropFirst(pongs)) == ["error", "error"])
            #expect(messages.dropFirst(pongs).allSatisfy { $0["code"]?.stringValue == "rate_limited" && $0["retry_after_ms"] != nil })
            #expect(frame.closeCode == 1008)
            #expect(frame.closeReason == "message rate limit exceeded")
            try await h.expectNothingMore()
        }
    }

    // MARK: Feeds

    @Test func subscribeGetsSnapshotChunksTheLiveMarkerThenEachChangeOnce() async throws {
        try await H.with(configure: { $0.snapshotChunkRows = 2 }) { h in
            h.feed.state.withLockedValue { $0.rows[H.key("alice-checking")] = (1...3).map { H.row($0, account: "alice-checking") } }
            try await h.open()
            let messages = try await h.subscribeLive()
            #expect(messages.map { $0["type"]?.stringValue } == ["subscribed", "snapshot", "snapshot", "changes"])
            #expect(messages[0]["mode"]?.stringValue == "snapshot")
            #expect(messages.allSatisfy { ($0["cursor"]?.stringValue) == H.cursor(5) })
            #expect(messages[1]["done"] == .bool(false))
            #expect(messages[2]["done"] == .bool(true))
            #expect(rowIDs(messages[1...2]).count == 3)
            #expect(messages[3]["changes"] == .array([]))

            // Another account's change is not this feed's.
            await h.commit(9, account: "bob-checking")
            try await h.expectNothingMore()
            let position = await h.commit(10)
            let changes = try await h.next("changes")
            #expect(changes["cursor"]?.stringValue == H.cursor(position))
            #expect(changes["live"] == nil)
            #expect(changeIDs(changes) == [H.id(10)])
            #expect(changes["changes"].flatMap { if case .array(let a) = $0 { a.first?["op"]?.stringValue } else { nil } } == "insert")
            try await h.expectNothingMore()
        }
    }

    @Test func aChangeCommittedDuringTheSnapshotFollowsItOnce() async throws {
        try await H.with { h in
            h.feed.state.withLockedValue { $0.rows[H.key("alice-checking")] = [H.row(1, account: "alice-checking")] }
            try await h.open()
            let hold = h.feed.holdNextSnapshot()
            try await h.send(#"{"type":"subscribe","id":"tx","collection":"transactions","where":{"account_id":"alice-checking"}}"#)
            #expect(try await h.next("subscribed")["cursor"]?.stringValue == H.cursor(5))
            #expect(try await hold.waitUntilStarted() == 5)
            let during = await h.commit(20)
            try await h.expectNothingMore()  // not before the snapshot's rows

            hold.release()
            let snapshot = try await h.next("snapshot")
            #expect(rowIDs([snapshot]) == [H.id(1)])
            let marker = try await h.next("changes")
            #expect(marker["live"] == .bool(true))
            #expect(marker["cursor"]?.stringValue == H.cursor(during))
            #expect(changeIDs(marker) == [H.id(20)])
            let after = await h.commit(21)
            let live = try await h.next("changes")
            #expect(live["cursor"]?.stringValue == H.cursor(after))
            #expect(changeIDs(live) == [H.id(21)])
            try await h.expectNothingMore()
        }
    }

    @Test func resumeFromACursorReplaysTheRingThenGoesLive() async throws {
        try await H.with { h in
            try await h.open()
            await h.commit(30)
            await h.commit(31)
            try await h.send(#"{"type":"subscribe","id":"tx","collection":"transactions","where":{"account_id":"alice-checking"},"after":"\#(H.cursor(5))"}"#)
            let subscribed = try await h.next("subscribed")
            #expect(subscribed["mode"]?.stringValue == "resume")
            #expect(subscribed["cursor"]?.stringValue == H.cursor(5))
            let marker = try await h.next("changes")
            #expect(marker["live"] == .bool(true))
            #expect(marker["cursor"]?.stringValue == H.cursor(7))
            #expect(changeIDs(marker) == [H.id(30), H.id(31)])
            try await h.expectNothingMore()
        }
    }

    @Test func resumeFromACursorOlderThanTheRingReadsTheLogThenTheRing() async throws {
        // The ring keeps the last two records; log pages hold two records.
        try await H.with(configure: { $0.ringCapacity = 2; $0.catchUpPageRecords = 2 }) { h in
            try await h.open()
            for n in 80..<85 { await h.commit(n) }
            try await h.send(#"{"type":"subscribe","id":"tx","collection":"transactions","where":{"account_id":"alice-checking"},"after":"\#(H.cursor(5))"}"#)
            #expect(try await h.next("subscribed")["mode"]?.stringValue == "resume")
            var messages: [JSONValue] = []
            while messages.last?["live"] != .bool(true) { messages.append(try await h.next("changes")) }
            #expect(messages.flatMap(changeIDs) == (80..<85).map(H.id))
            #expect(messages.last?["cursor"]?.stringValue == H.cursor(10))
            #expect(messages.dropLast().allSatisfy { $0["live"] == nil })
            // Positions 6 and 7 are older than the ring: read from the log, in two pages.
            #expect(h.feed.state.withLockedValue { $0.pagesRead } == 2)
            await h.commit(85)
            #expect(changeIDs(try await h.next("changes")) == [H.id(85)])
            try await h.expectNothingMore()
        }
    }

    @Test func aFeedTheClaimsMayNotReadEndsWithForbidden() async throws {
        try await H.with { h in
            h.feed.state.withLockedValue { _ = $0.forbidden.insert(H.key("bob-checking")) }
            try await h.open()
            try await h.send(#"{"type":"subscribe","id":"tx","collection":"transactions","where":{"account_id":"bob-checking"}}"#)
            let error = try await h.next("error")
            #expect(error["code"]?.stringValue == "forbidden")
            #expect(error["ref"] == .string("tx"))
            await h.commit(40, account: "bob-checking")
            try await h.expectNothingMore()
            // An unknown collection is `not_found`.
            try await h.send(#"{"type":"subscribe","id":"x","collection":"nope"}"#)
            #expect(try await h.next("error")["code"]?.stringValue == "not_found")
        }
    }

    @Test func unsubscribeEndsTheFeed() async throws {
        try await H.with { h in
            try await h.open()
            try await h.subscribeLive()
            try await h.send(#"{"type":"unsubscribe","id":"tx"}"#)
            #expect(try await h.next("unsubscribed")["id"] == .string("tx"))
            await h.commit(50)
            try await h.expectNothingMore()
            try await h.send(#"{"type":"unsubscribe","id":"tx"}"#)
            let error = try await h.next("error")
            #expect(error["code"]?.stringValue == "not_found")
            #expect(error["ref"] == .string("tx"))
        }
    }

    @Test func aConnectionThatIsNotWritableIsClosedWith4008() async throws {
        try await H.with { h in
            try await h.open()
            try await h.subscribeLive()
            h.channel.isWritable = false
            await h.commit(60)
            let close = try await h.nextFrame()
            #expect(close.closeCode == 4008)
            #expect(close.closeReason == "outbound queue full; resume from your cursor")
            try await h.expectNothingMore()
        }
    }

    // MARK: Mutations (protocol §5)

    @Test func anAckWaitsUntilTheFeedHasDeliveredItsCursor() async throws {
        try await H.with { h in
            try await h.open()
            try await h.subscribeLive()
            try await h.send(#"{"type":"mutate","mid":1,"name":"transfer","args":{"amount":1}}"#)
            let request = try await h.mutations.next()
            #expect(request.mid == 1)
            #expect(request.name == "transfer")
            #expect(request.clientID == "device-1")
            #expect(request.sub == "alice")
            #expect(request.args == #"{"amount":1}"#)
            request.reply(.ack(position: 6, result: #"{"ok":true}"#, duplicate: false))
            try await h.expectNothingMore()  // committed at 6, but the feed is at 5

            await h.commit(70)
            let changes = try await h.next("changes")
            #expect(changes["cursor"]?.stringValue == H.cursor(6))
            let ack = try await h.next("ack")
            #expect(ack["mid"] == .number("1"))
            #expect(ack["cursor"]?.stringValue == H.cursor(6))
            try await h.expectNothingMore()
        }
    }

    @Test func anAckWaitsForAFeedStillLoadingItsSnapshot() async throws {
        try await H.with { h in
            try await h.open()
            try await h.subscribeLive("a", account: "alice-checking")
            let hold = h.feed.holdNextSnapshot()
            try await h.send(#"{"type":"subscribe","id":"b","collection":"transactions","where":{"account_id":"alice-savings"}}"#)
            _ = try await h.next("subscribed")
            _ = try await hold.waitUntilStarted()
            try await h.send(#"{"type":"mutate","mid":1,"name":"transfer","args":{}}"#)
            // Committed at the loop's head already; feed "b" is still loading.
            try await h.mutations.next().reply(.ack(position: 5, result: "null", duplicate: false))
            try await h.expectNothingMore()
            hold.release()
            _ = try await h.next("snapshot")
            #expect(try await h.next("changes")["live"] == .bool(true))
            #expect(try await h.next("ack")["mid"] == .number("1"))
        }
    }

    @Test func rejectsLeaveAtOnceAndARefusedSubmitIsUnavailable() async throws {
        try await H.with { h in
            try await h.open()
            try await h.subscribeLive()
            try await h.send(#"{"type":"mutate","mid":1,"name":"transfer","args":{}}"#)
            try await h.mutations.next().reply(.reject(code: "insufficient_funds", message: "balance too low", details: #"{"balance":12}"#, duplicate: false))
            let reject = try await h.next("reject")
            #expect(reject["mid"] == .number("1"))
            #expect(reject["code"]?.stringValue == "insufficient_funds")
            #expect(reject["details"]?["balance"] == .number("12"))

            h.mutations.accepting.withLockedValue { $0 = false }
            try await h.send(#"{"type":"mutate","mid":2,"name":"transfer","args":{}}"#)
            let error = try await h.next("error")
            #expect(error["code"]?.stringValue == "unavailable")
            #expect(error["ref"] == .number("2"))
            #expect(error["retry_after_ms"] != nil)
        }
    }
}

extension ConnectionHarness {
    static func id(_ n: Int) -> String { "00000000-0000-0000-0000-\(String(100_000_000_000 + n))" }
}

/// The `id`s of the rows of snapshot messages, in order.
private func rowIDs(_ messages: some Sequence<JSONValue>) -> [String] {
    messages.flatMap { message -> [String] in
        guard case .array(let rows)? = message["rows"] else { return [] }
        return rows.compactMap { $0["id"]?.stringValue }
    }
}

/// The row `id`s of a `changes` message, in order.
private func changeIDs(_ message: JSONValue) -> [String] {
    guard case .array(let changes)? = message["changes"] else { return [] }
    return changes.compactMap { $0["row"]?["id"]?.stringValue }
}
