import Foundation
import JWTKit
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
@testable import SynclineServer
import SynclineCore
import SynclinePostgres
import SynclineProtocol
import Testing

/// One `SyncConnection` in a `NIOAsyncTestingChannel`, behind the server's WebSocket layers
/// (`SyncConnectionTests.addServerHandlers`), with the real `Hub` on the channel's loop, a real
/// HS256 `Authenticator`, and the in-memory feed, client registry and mutation submitter. The
/// test plays the client: it writes masked frames as bytes and parses the bytes the server wrote.
/// Time on the loop is virtual: close timers and token expiry run only when the test advances it
/// (the message rate limit and the heartbeat's silence check read the real clock).
final class ConnectionHarness: Sendable {
    static let secret = "unit-test-secret-0123456789abcdef-0123"
    static let epoch = "0123456789abcdef"

    let loop: NIOAsyncTestingEventLoop
    let channel: NIOAsyncTestingChannel
    let hub: Hub
    let environment: SyncEnvironment
    let feed: InMemoryFeed
    let clients: InMemoryClientRegistry
    let mutations: HeldMutations
    private let received = NIOLockedValueBox(ByteBuffer())

    /// A connection whose database is at `head` (the hub starts there too).
    init(head: Int64 = 5, configure: (inout ServerConfiguration) -> Void = { _ in }) async throws {
        var configuration = ServerConfiguration()
        configuration.jwtSecret = Self.secret
        // Shared snapshots read at once: a window would be a timer on the virtual clock.
        configuration.snapshotShareWindowMilliseconds = 0
        configure(&configuration)
        var logger = Logger(label: "syncline.unit")
        logger.logLevel = .critical
        loop = NIOAsyncTestingEventLoop()
        channel = NIOAsyncTestingChannel(loop: loop)
        hub = Hub(epoch: Self.epoch, head: head, configuration: configuration, group: loop, logger: logger)
        feed = InMemoryFeed(head: head)
        clients = InMemoryClientRegistry()
        mutations = HeldMutations()
        let authenticator = try await Authenticator(hmacSecret: Self.secret, jwksJSON: nil, allowUnsigned: false)
        environment = SyncEnvironment(configuration: configuration, hub: hub, reader: feed, clients: clients,
                                      mutations: mutations, authenticator: authenticator, logger: logger)
        #expect(environment.admitConnection())
        try await SyncConnectionTests.addServerHandlers(to: channel, environment: environment)
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).get()
    }

    /// Runs `body` with a fresh harness and always closes its channel afterwards.
    static func with(head: Int64 = 5, configure: (inout ServerConfiguration) -> Void = { _ in },
                     _ body: (ConnectionHarness) async throws -> Void) async throws {
        let harness = try await ConnectionHarness(head: head, configure: configure)
        do {
            try await body(harness)
        } catch {
            await harness.finish()
            throw error
        }
        await harness.finish()
    }

    /// Closes the channel (the connection tears down and gives back its slot) and the loop.
    func finish() async {
        _ = try? await channel.finish(acceptAlreadyClosed: true)
        #expect(environment.connections.withLockedValue { $0 } == 0, "the connection released its slot")
        await loop.shutdownGracefully()
    }

    // MARK: Tokens

    /// An HS256 token signed with `secret` (the server's unless told otherwise).
    static func token(sub: String, secret: String = ConnectionHarness.secret, lifetime: TimeInterval = 3600) async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return try await keys.sign(TestClaims(sub: SubjectClaim(value: sub), exp: ExpirationClaim(value: Date().addingTimeInterval(lifetime))))
    }

    struct TestClaims: JWTPayload {
        var sub: SubjectClaim
        var exp: ExpirationClaim
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    // MARK: Client side

    /// Sends each text as one masked text frame, all in one read (one `channelRead` burst).
    func send(_ texts: String...) async throws {
        try await send(texts)
    }

    func send(_ texts: [String]) async throws {
        var bytes = ByteBuffer()
        for text in texts { Self.appendFrame(opcode: 0x1, payload: Array(text.utf8), to: &bytes) }
        try await channel.writeInbound(bytes)
    }

    static func appendFrame(opcode: UInt8, payload: [UInt8], to frame: inout ByteBuffer) {
        frame.writeInteger(UInt8(0x80 | opcode))
        if payload.count < 126 {
            frame.writeInteger(UInt8(0x80 | payload.count))
        } else if payload.count <= 0xFFFF {
            frame.writeInteger(UInt8(0x80 | 126))
            frame.writeInteger(UInt16(payload.count))
        } else {
            frame.writeInteger(UInt8(0x80 | 127))
            frame.writeInteger(UInt64(payload.count))
        }
        let mask: [UInt8] = [0x37, 0xfa, 0x21, 0x3d]
        frame.writeBytes(mask)
        frame.writeBytes(payload.enumerated().map { $0.element ^ mask[$0.offset & 3] })
    }

    struct Frame: Sendable, CustomStringConvertible {
        var opcode: UInt8
        var payload: [UInt8]
        var text: String { String(decoding: payload, as: UTF8.self) }
        var closeCode: UInt16? {
            guard opcode == 0x8, payload.count >= 2 else { return nil }
            return UInt16(payload[0]) << 8 | UInt16(payload[1])
        }
        var closeReason: String { String(decoding: payload.dropFirst(2), as: UTF8.self) }
        var description: String { closeCode.map { "close \($0) \(closeReason)" } ?? "opcode \(opcode): \(text)" }
    }

    /// The next frame the server wrote, waiting up to `seconds` (background tasks such as token
    /// checks and snapshots run on Swift's pool and hop back to the loop). 30 s: these tests start
    /// with the whole suite, and in its first seconds on 2 cores one waited more than 10 s.
    func nextFrame(seconds: Double = 30) async throws -> Frame {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while true {
            if let frame = try await pendingFrame() { return frame }
            guard ContinuousClock.now < deadline else { throw TestFailure("the server wrote nothing within \(seconds) s") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    /// A frame already written, if any.
    func pendingFrame() async throws -> Frame? {
        while let buffer = try await channel.readOutbound(as: ByteBuffer.self) {
            var buffer = buffer
            received.withLockedValue { _ = $0.writeBuffer(&buffer) }
        }
        return received.withLockedValue { Self.parse(&$0) }
    }

    /// The next message, which must be a text frame holding a JSON object.
    func next(seconds: Double = 30) async throws -> JSONValue {
        let frame = try await nextFrame(seconds: seconds)
        guard frame.opcode == 0x1 else {
            throw TestFailure("expected a message, got opcode \(frame.opcode) \(frame.closeCode.map { "close \($0) \(frame.closeReason)" } ?? "")")
        }
        return try JSONParser.parse(frame.text)
    }

    /// The next message, which must have `type`.
    func next(_ type: String, seconds: Double = 30) async throws -> JSONValue {
        let message = try await next(seconds: seconds)
        guard message["type"]?.stringValue == type else { throw TestFailure("expected '\(type)', got \(message.jsonText)") }
        return message
    }

    /// Skips messages until a close frame and returns its code and reason.
    func closeFrame(seconds: Double = 30) async throws -> (code: UInt16?, reason: String) {
        while true {
            let frame = try await nextFrame(seconds: seconds)
            if frame.opcode == 0x8 { return (frame.closeCode, frame.closeReason) }
        }
    }

    /// Lets the loop run what is queued, then checks that the server wrote nothing.
    func expectNothingMore(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        await loop.run()
        let frame = try await pendingFrame()
        #expect(frame == nil, sourceLocation: sourceLocation)
    }

    private static func parse(_ buffer: inout ByteBuffer) -> Frame? {
        guard buffer.readableBytes >= 2,
              let b0 = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
              let b1 = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) else { return nil }
        var offset = 2
        var length = Int(b1 & 0x7F)
        if length == 126 {
            guard buffer.readableBytes >= 4 else { return nil }
            length = Int(buffer.getInteger(at: buffer.readerIndex + 2, as: UInt16.self)!)
            offset = 4
        } else if length == 127 {
            guard buffer.readableBytes >= 10 else { return nil }
            length = Int(buffer.getInteger(at: buffer.readerIndex + 2, as: UInt64.self)!)
            offset = 10
        }
        guard buffer.readableBytes >= offset + length else { return nil }
        buffer.moveReaderIndex(forwardBy: offset)
        return Frame(opcode: b0 & 0x0F, payload: buffer.readBytes(length: length)!)
    }

    // MARK: Session steps

    /// `hello` with a valid token for `sub`; returns the `welcome`.
    @discardableResult
    func open(sub: String = "alice", clientID: String = "device-1") async throws -> JSONValue {
        let token = try await Self.token(sub: sub)
        try await send(#"{"type":"hello","client_id":"\#(clientID)","token":"\#(token)"}"#)
        return try await next("welcome")
    }

    static func key(_ account: String) -> FeedKey {
        .collection("transactions", filter: ["account_id": .string(account)])
    }

    static func cursor(_ position: Int64) -> String { "\(epoch).\(position)" }

    static func row(_ n: Int, account: String) -> String {
        #"{"id":"00000000-0000-0000-0000-\#(String(100_000_000_000 + n))","account_id":"\#(account)","amount":"\#(n).00"}"#
    }

    /// Commits one row of `account` at the hub's next position through the hub (as the change
    /// tail does), and waits until the loop delivered it. Returns the position.
    @discardableResult
    func commit(_ n: Int, account: String = "alice-checking") async -> Int64 {
        let after = hub.head
        let position = after + 1
        let record = ChangeRecord(
            position: position, transaction: UInt64(position), operation: .insert, collection: "transactions",
            topic: nil, key: #"{"id":"00000000-0000-0000-0000-\#(String(100_000_000_000 + n))"}"#, oldKey: nil,
            row: Self.row(n, account: account), newMatch: ["account_id": .string(account)], oldMatch: nil)
        feed.state.withLockedValue {
            $0.head = position
            $0.log.append(record)
        }
        await hub.handle(.changes([record], after: after, through: position))
        return position
    }

    /// Subscribes `id` to `account`'s transactions and reads through its live marker; returns
    /// the messages from `subscribed` through the marker.
    @discardableResult
    func subscribeLive(_ id: String = "tx", account: String = "alice-checking") async throws -> [JSONValue] {
        try await send(#"{"type":"subscribe","id":"\#(id)","collection":"transactions","where":{"account_id":"\#(account)"}}"#)
        var messages: [JSONValue] = []
        while true {
            let message = try await next()
            messages.append(message)
            if message["live"] == .bool(true) { return messages }
        }
    }
}
