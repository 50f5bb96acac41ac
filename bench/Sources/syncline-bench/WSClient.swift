import Histogram
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

/// What every connection does once upgraded.
enum ConnectionMode: Sendable {
    /// `hello` → `welcome`, then stays idle.
    case idle
    /// `hello` → `welcome` → `subscribe` → snapshot `done: true`, then counts `changes`.
    case subscribe(frame: String)
    /// `hello` as its own user → `welcome`; then, once started, a closed loop of `mutate` → answer.
    case mutate(MutateSettings)
    /// `hello` as its own user → `welcome` → `subscribe` to its own account's feed (Feeds.swift).
    case feeds(FeedSettings)
}

/// The closed-loop mutation client: connection `index` is user `<subPrefix><n>` with client_id
/// `<clientIDPrefix>-<n>` (n = index + firstAccount) and sends `transfer` from account
/// `<accountPrefix><n>` to `<accountPrefix><n><sinkSuffix>`, both owned by that user, so no two
/// connections touch the same row.
struct MutateSettings: Sendable {
    var firstAccount: Int
    var subPrefix: String
    var accountPrefix: String
    var sinkSuffix: String
    var mutator: String
    var amount: String

    func account(index: Int) -> Int { index + self.firstAccount }
}

/// Per-run settings shared (read-only) by every connection.
struct ClientSettings: Sendable {
    var host: String
    var port: Int
    var path: String
    var token: String
    var clientIDPrefix: String
    var mode: ConnectionMode
    var maxFrameSize: Int
    /// Deliveries each connection must receive before it counts as finished (fanout).
    var expectedPerConnection: Int
    /// A peer bridge (bench/peers): no subprotocol, no hello/subscribe; live once upgraded, and
    /// every text message is one row (its `created_at` timed like a `changes` row).
    var peer = false
    /// Offer permessage-deflate (`client_no_context_takeover`; the server picks the rest).
    var compression = false
}

/// Everything one event loop's connections share: its histogram and counters. Only ever touched
/// on that event loop, so no locks; merged at the end.
final class LoopState {
    let expected: Int
    /// Connections assigned to this loop that completed their setup.
    var readyConnections = 0
    var connections: [WSConnectionHandler] = []
    var histogram = Histogram<UInt64>(
        lowestDiscernibleValue: 1, highestTrackableValue: LoopState.histogramMax, numberOfSignificantValueDigits: .three)
    static let histogramMax: UInt64 = 3_600_000_000  // one hour, in µs
    var deliveries = 0
    var badTimestamps = 0
    var firstDelivery: Int64 = .max
    var lastDelivery: Int64 = 0
    /// Connections that received all their deliveries, or were lost after setup.
    var finished = 0
    var dropped = 0
    var errorFrames = 0
    var firstError: String?
    var resets = 0
    var closeCodes: [Int: Int] = [:]
    /// Feeds mode: the cursor of each connection's snapshot (by index), and the sequence check.
    var cursors: [Int32: String] = [:]
    var sequence = SequenceTally()
    // permessage-deflate: what connections negotiated, and bytes of data messages on the wire
    // (after reassembly, before inflating) and after inflating.
    var negotiated: [NegotiatedCompression: Int] = [:]
    var compressedMessages = 0
    var wireBytes = 0
    var messageBytes = 0
    /// `server_no_context_takeover` connections' messages are independent: one inflater per loop.
    private var loopInflater: MessageInflater?
    /// Scratch for inflated messages: only read synchronously by the handler that inflated into it.
    var inflated = ByteBuffer()

    func sharedInflater() -> MessageInflater? {
        if self.loopInflater == nil { self.loopInflater = try? MessageInflater() }
        return self.loopInflater
    }
    // Mutation scenario (monotonic nanoseconds): answers that arrive inside [windowStart, windowEnd)
    // are counted and their latency recorded; no mutation is sent at or after windowEnd.
    var windowStart: UInt64 = .max
    var windowEnd: UInt64 = .max
    var acked = 0
    var ackedTotal = 0
    var duplicates = 0
    var rejects = 0
    var firstReject: String?
    var mutationErrors = 0
    var firstMutationError: String?
    var measuring = false
    var timedOut = false
    private var done: EventLoopPromise<Void>?
    private var timeout: Scheduled<Void>?

    init(expected: Int) { self.expected = expected }

    /// Arms completion tracking once every connection is set up: `done` succeeds when every
    /// connection of this loop has finished, or at `timeoutSeconds`.
    func startMeasuring(on loop: any EventLoop, timeoutSeconds: Double) -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        self.done = promise
        self.measuring = true
        let bound = NIOLoopBound(self, eventLoop: loop)
        self.timeout = loop.scheduleTask(in: .milliseconds(Int64(timeoutSeconds * 1000))) {
            bound.value.timedOut = true
            bound.value.complete()
        }
        self.checkDone()
        return promise.futureResult
    }

    func connectionFinished() {
        self.finished += 1
        self.checkDone()
    }

    /// Fan-out rounds on the same connections: counts start from zero again; a connection that
    /// was lost stays finished (and its rows missing).
    func startNextRound() {
        self.histogram = Histogram(
            lowestDiscernibleValue: 1, highestTrackableValue: LoopState.histogramMax, numberOfSignificantValueDigits: .three)
        self.deliveries = 0
        self.badTimestamps = 0
        self.firstDelivery = .max
        self.lastDelivery = 0
        self.timedOut = false
        self.finished = self.connections.reduce(0) { $0 + ($1.startNextRound() ? 1 : 0) }
    }

    private func checkDone() {
        if self.measuring, self.finished >= self.readyConnections { self.complete() }
    }

    private func complete() {
        self.timeout?.cancel()
        self.timeout = nil
        if let done = self.done {
            self.done = nil
            self.measuring = false
            done.succeed(())
        }
    }

    func noteError(_ message: String) {
        self.errorFrames += 1
        if self.firstError == nil { self.firstError = message }
    }

    func results() -> LoopResults {
        var missing = 0
        var extra = 0
        for c in self.connections {
            let n = Int(c.deliveries)
            if n < self.expected { missing += self.expected - n }
            if n > self.expected { extra += n - self.expected }
        }
        return LoopResults(
            histogram: self.histogram, deliveries: self.deliveries, badTimestamps: self.badTimestamps,
            firstDelivery: self.firstDelivery, lastDelivery: self.lastDelivery, missing: missing, extra: extra,
            dropped: self.dropped, errorFrames: self.errorFrames, firstError: self.firstError, resets: self.resets,
            closeCodes: self.closeCodes, timedOut: self.timedOut,
            negotiated: self.negotiated, compressedMessages: self.compressedMessages,
            wireBytes: self.wireBytes, messageBytes: self.messageBytes,
            acked: self.acked, ackedTotal: self.ackedTotal, duplicates: self.duplicates, rejects: self.rejects,
            firstReject: self.firstReject, mutationErrors: self.mutationErrors, firstMutationError: self.firstMutationError)
    }

    /// Starts every ready connection's mutation loop; `done` succeeds when each has had its last
    /// answer after `end` (or was lost), or at `timeoutSeconds`.
    func startMutating(on loop: any EventLoop, start: UInt64, end: UInt64, timeoutSeconds: Double) -> EventLoopFuture<Void> {
        self.windowStart = start
        self.windowEnd = end
        let done = self.startMeasuring(on: loop, timeoutSeconds: timeoutSeconds)
        for c in self.connections { c.startMutating() }
        return done
    }
}

struct LoopResults: Sendable {
    var histogram: Histogram<UInt64>
    var deliveries: Int
    var badTimestamps: Int
    var firstDelivery: Int64
    var lastDelivery: Int64
    var missing: Int
    var extra: Int
    var dropped: Int
    var errorFrames: Int
    var firstError: String?
    var resets: Int
    var closeCodes: [Int: Int]
    var timedOut: Bool
    var negotiated: [NegotiatedCompression: Int] = [:]
    var compressedMessages = 0
    var wireBytes = 0
    var messageBytes = 0
    var acked = 0
    var ackedTotal = 0
    var duplicates = 0
    var rejects = 0
    var firstReject: String?
    var mutationErrors = 0
    var firstMutationError: String?
}

/// Sends the upgrade request when the channel becomes active and turns a refused upgrade or an early
/// failure into a failed `ready` promise. Removed from the pipeline when the upgrade succeeds.
final class UpgradeRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    static let name = "syncline-bench.upgrade-request"
    private let settings: ClientSettings
    private let index: Int
    private var ready: EventLoopPromise<Void>?

    init(settings: ClientSettings, index: Int, ready: EventLoopPromise<Void>) {
        self.settings = settings
        self.index = index
        self.ready = ready
    }

    func channelActive(context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "\(self.settings.host):\(self.settings.port)")
        if !self.settings.peer { headers.add(name: "Sec-WebSocket-Protocol", value: "syncline.v1") }
        if self.settings.compression {
            headers.add(name: "Sec-WebSocket-Extensions", value: "permessage-deflate; client_no_context_takeover")
        }
        headers.add(name: "Content-Length", value: "0")
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: self.settings.path(index: self.index), headers: headers)
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Only reached when the upgrade was refused: the upgrade handler forwards the response.
        if case .head(let head) = self.unwrapInboundIn(data) {
            self.fail(BenchError("upgrade refused: HTTP \(head.status.code) \(head.status.reasonPhrase)"))
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.fail(BenchError("connection closed during the WebSocket handshake"))
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.ready = nil  // the WebSocket handler owns it from now on
    }

    private func fail(_ error: any Error) {
        if let ready = self.ready {
            self.ready = nil
            ready.fail(error)
        }
    }
}

/// One WebSocket connection of the load client. Small on purpose: a few words of state; the
/// histogram and counters live in the loop's `LoopState`.
final class WSConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private enum Phase: UInt8 { case awaitingWelcome, awaitingSnapshot, live, closing, closed }

    private let index: Int32
    private var phase: Phase = .awaitingWelcome
    private(set) var deliveries: Int32 = 0
    private var finished = false
    private let state: LoopState
    private let settings: ClientSettings
    private var ready: EventLoopPromise<Void>?
    private var fragments: ByteBuffer?
    private var fragmentsCompressed = false
    private let compression: NegotiatedCompression
    /// Context-takeover connections only: their own window, kept across messages.
    private var inflater: MessageInflater?
    private var context: ChannelHandlerContext?
    // Mutation loop: the next mid to send, and the one in flight with its send time.
    private var nextMid: Int64 = 1
    private var inFlightMid: Int64 = 0
    private var sentAt: UInt64 = 0
    private var mutating = false
    /// Feeds mode with a sequence check: the next per-account sequence number expected.
    var nextSeq: Int32 = 1

    init(
        index: Int, state: LoopState, settings: ClientSettings, compression: NegotiatedCompression = .off,
        ready: EventLoopPromise<Void>
    ) {
        self.index = Int32(index)
        self.state = state
        self.settings = settings
        self.compression = compression
        self.ready = ready
        state.negotiated[compression, default: 0] += 1
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.state.connections.append(self)
        if self.settings.peer {
            self.phase = .live
            self.succeedReady()
            return
        }
        var clientID = "\(self.settings.clientIDPrefix)-\(self.index)"
        var token = self.settings.token
        if case .mutate(let m) = self.settings.mode {
            let n = m.account(index: Int(self.index))
            clientID = "\(self.settings.clientIDPrefix)-\(n)"
            token = devToken(sub: "\(m.subPrefix)\(n)")
        } else if case .feeds(let f) = self.settings.mode {
            let n = f.number(index: Int(self.index))
            clientID = "\(self.settings.clientIDPrefix)-\(n)"
            token = devToken(sub: "\(f.subPrefix)\(n)")
        }
        let hello = #"{"type":"hello","client_id":"\#(clientID)","token":"\#(token)"}"#
        self.sendText(hello, context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// Resets the delivery count for the next fan-out round; true when the connection is gone.
    func startNextRound() -> Bool {
        self.deliveries = 0
        self.finished = self.phase != .live
        return self.finished
    }

    private func sendText(_ text: String, context: ChannelHandlerContext) {
        let buffer = context.channel.allocator.buffer(string: text)
        let frame = WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: buffer)
        context.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .binary:
            if frame.fin {
                self.receiveMessage(frame.unmaskedData, compressed: frame.rsv1, context: context)
            } else {
                self.fragments = frame.unmaskedData
                self.fragmentsCompressed = frame.rsv1
            }
        case .continuation:
            guard var partial = self.fragments else { return }
            var chunk = frame.unmaskedData
            partial.writeBuffer(&chunk)
            if frame.fin {
                self.fragments = nil
                self.receiveMessage(partial, compressed: self.fragmentsCompressed, context: context)
            } else {
                self.fragments = partial
            }
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData)
            context.writeAndFlush(self.wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            var data = frame.unmaskedData
            let code = data.readInteger(as: UInt16.self).map(Int.init) ?? 1005
            if self.phase != .closing {
                self.state.closeCodes[code, default: 0] += 1
                // Echo the close (masked), then hang up.
                var payload = context.channel.allocator.buffer(capacity: 2)
                payload.writeInteger(UInt16(code == 1005 ? 1000 : code))
                let close = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload)
                context.writeAndFlush(self.wrapOutboundOut(close), promise: nil)
            }
            self.failReady(BenchError("server closed the connection with code \(code)"))
            if self.phase == .live, !self.finished {
                // Closed by the server after setup (a bridge dropping a slow client, 4008): it will
                // never finish, so stop waiting for it, as for a connection lost without a close.
                self.finished = true
                self.state.dropped += 1
                self.state.connectionFinished()
            }
            self.phase = .closed
            context.close(promise: nil)
        default:
            break
        }
    }

    /// A whole data message: inflated first when its first frame had RSV1 (RFC 7692 §6).
    private func receiveMessage(_ buffer: ByteBuffer, compressed: Bool, context: ChannelHandlerContext) {
        let state = self.state
        state.wireBytes += buffer.readableBytes
        guard compressed else {
            state.messageBytes += buffer.readableBytes
            self.handleMessage(buffer, context: context)
            return
        }
        let inflater: MessageInflater?
        switch self.compression {
        case .off:
            state.noteError("a compressed frame although permessage-deflate was not negotiated")
            return
        case .perMessage:
            inflater = state.sharedInflater()
            inflater?.reset()
        case .contextTakeover:
            if self.inflater == nil { self.inflater = try? MessageInflater() }
            inflater = self.inflater
        }
        guard let inflater, inflater.inflate(buffer, into: &state.inflated) else {
            state.noteError("a compressed message did not inflate")
            return
        }
        state.compressedMessages += 1
        state.messageBytes += state.inflated.readableBytes
        self.handleMessage(state.inflated, context: context)
    }

    private func handleMessage(_ buffer: ByteBuffer, context: ChannelHandlerContext) {
        if self.settings.peer {
            if self.phase == .live { buffer.withUnsafeReadableBytes { self.recordChanges($0) } }
            return
        }
        buffer.withUnsafeReadableBytes { p in
            let type = FrameScan.messageType(p)
            switch self.phase {
            case .live:
                if case .mutate = self.settings.mode {
                    self.handleMutationAnswer(type, p)
                } else if type == .changes {
                    self.recordChanges(p)
                    if case .feeds(let f) = self.settings.mode, f.verifySequence { self.state.sequence.check(p, next: &self.nextSeq) }
                } else if type == .subscribed {
                    self.state.resets += 1  // a restarted feed (mode reset) during the run
                } else if type == .error {
                    self.state.noteError(Self.describeError(p))
                }
            case .awaitingWelcome:
                if type == .welcome {
                    switch self.settings.mode {
                    case .idle:
                        self.phase = .live
                        self.succeedReady()
                    case .mutate:
                        self.nextMid = (FrameScan.intField(p, key: FrameScan.lastMidKey, anchor: 5) ?? 0) + 1
                        self.phase = .live
                        self.succeedReady()
                    case .subscribe(let frame):
                        self.phase = .awaitingSnapshot
                        self.sendText(frame, context: context)
                    case .feeds(let f):
                        self.phase = .awaitingSnapshot
                        self.sendText(f.subscribeFrame(index: Int(self.index)), context: context)
                    }
                } else if type == .error {
                    self.failReady(BenchError("error before welcome: \(Self.describeError(p))"))
                }
            case .awaitingSnapshot:
                if type == .snapshot {
                    if FrameScan.isDone(p) {
                        if case .feeds = self.settings.mode { self.state.cursors[self.index] = FrameScan.cursor(p) }
                        self.phase = .live
                        self.succeedReady()
                    }
                } else if type == .subscribed, case .feeds(let f) = self.settings.mode, f.resuming {
                    // Resumed: `changes` after the cursor follow, no snapshot. A reset would send one.
                    if FrameScan.isResumeMode(p) {
                        self.phase = .live
                        self.succeedReady()
                    } else {
                        self.state.resets += 1
                    }
                } else if type == .error {
                    self.failReady(BenchError("subscribe failed: \(Self.describeError(p))"))
                } else if type == .changes {
                    self.recordChanges(p)
                }
            case .closing, .closed:
                break
            }
        }
    }

    @inline(__always)
    private func recordChanges(_ p: UnsafeRawBufferPointer) {
        let now = wallMicros()
        let state = self.state
        let n = FrameScan.forEachCreatedAt(p) { ts in
            if let ts {
                let latency = now - ts
                let v = latency <= 0 ? 0 : min(UInt64(latency), LoopState.histogramMax)
                _ = state.histogram.record(v)
            } else {
                state.badTimestamps += 1
            }
        }
        guard n > 0 else { return }
        self.deliveries &+= Int32(truncatingIfNeeded: n)
        state.deliveries += n
        if now > state.lastDelivery { state.lastDelivery = now }
        if now < state.firstDelivery { state.firstDelivery = now }
        if !self.finished, Int(self.deliveries) >= state.expected {
            self.finished = true
            state.connectionFinished()
        }
    }

    // MARK: Mutation loop

    func startMutating() {
        guard case .mutate = self.settings.mode, self.phase == .live, !self.mutating else { return }
        self.mutating = true
        self.sendMutation()
    }

    private func sendMutation() {
        guard let context = self.context, case .mutate(let m) = self.settings.mode else { return }
        let n = m.account(index: Int(self.index))
        let mid = self.nextMid
        let frame = #"{"type":"mutate","mid":\#(mid),"name":"\#(m.mutator)","args":{"from":"\#(m.accountPrefix)\#(n)","to":"\#(m.accountPrefix)\#(n)\#(m.sinkSuffix)","amount":\#(m.amount)}}"#
        self.inFlightMid = mid
        self.sentAt = monotonicNanos()
        self.sendText(frame, context: context)
    }

    /// One answer to the mutation in flight: record it, then send the next one (or stop after the window).
    private func handleMutationAnswer(_ type: MessageType, _ p: UnsafeRawBufferPointer) {
        guard self.mutating, !self.finished else {
            if type == .error { self.state.noteError(Self.describeError(p)) }
            return
        }
        let now = monotonicNanos()
        let state = self.state
        let inWindow = now >= state.windowStart && now < state.windowEnd
        switch type {
        case .ack:
            guard FrameScan.intField(p, key: FrameScan.midKey, anchor: 2) == self.inFlightMid else {
                state.noteError("ack for an unexpected mid")
                return
            }
            state.ackedTotal += 1
            if inWindow {
                state.acked += 1
                let micros = (now &- self.sentAt) / 1000
                _ = state.histogram.record(min(micros, LoopState.histogramMax))
            }
            if Self.duplicateKey.withUnsafeBytes({ FrameScan.find(p, $0, anchor: 2) }) != nil { state.duplicates += 1 }
            self.nextMid += 1
        case .reject:
            state.rejects += 1
            if state.firstReject == nil { state.firstReject = Self.describeError(p) }
            self.nextMid += 1  // a reject consumes the mid
        case .error:
            // Not decided: the mid is not consumed; send it again after a short pause.
            state.mutationErrors += 1
            if state.firstMutationError == nil { state.firstMutationError = Self.describeError(p) }
            if now < state.windowEnd, let context = self.context {
                let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
                context.eventLoop.scheduleTask(in: .milliseconds(20)) { bound.value.sendMutation() }
            } else {
                self.finishMutating()
            }
            return
        default:
            return
        }
        if now < state.windowEnd {
            self.sendMutation()
        } else {
            self.finishMutating()
        }
    }

    private static let duplicateKey: [UInt8] = Array("\"duplicate\"".utf8)

    private func finishMutating() {
        guard !self.finished else { return }
        self.finished = true
        self.state.connectionFinished()
    }

    private static func describeError(_ p: UnsafeRawBufferPointer) -> String {
        let code = FrameScan.stringField(p, key: FrameScan.codeKey, anchor: 2) ?? "?"
        let message = FrameScan.stringField(p, key: FrameScan.messageKey, anchor: 3) ?? ""
        return "\(code): \(message)"
    }

    private func succeedReady() {
        if let ready = self.ready {
            self.ready = nil
            self.state.readyConnections += 1
            ready.succeed(())
        }
    }

    private func failReady(_ error: any Error) {
        if let ready = self.ready {
            self.ready = nil
            ready.fail(error)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.failReady(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.failReady(BenchError("connection closed before setup completed"))
        if self.phase == .live, !self.finished {
            // Lost after setup: it will never finish; stop waiting for it.
            self.finished = true
            self.state.dropped += 1
            self.state.connectionFinished()
        }
        self.phase = .closed
        context.fireChannelInactive()
    }

    /// Starts a normal close (1000); the channel closes when the server echoes it.
    func beginClose() {
        guard let context = self.context, self.phase != .closed, self.phase != .closing else { return }
        if !self.finished { self.finished = true }  // not a drop: we are leaving
        self.phase = .closing
        var payload = context.channel.allocator.buffer(capacity: 2)
        payload.writeInteger(UInt16(1000))
        let close = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload)
        context.writeAndFlush(self.wrapOutboundOut(close), promise: nil)
    }
}

/// Opens WebSocket connections on a fixed set of event loops, from a set of source addresses.
struct ConnectionFactory: Sendable {
    let loops: [any EventLoop]
    let states: [NIOLoopBound<LoopState>]
    let settings: ClientSettings
    let sources: [SocketAddress]
    let target: SocketAddress
    let setupTimeout: TimeAmount

    /// Starts connection `index`; the future succeeds when it is set up (welcome, or snapshot done).
    func connect(index: Int) -> EventLoopFuture<Void> {
        let loop = self.loops[index % self.loops.count]
        let bound = self.states[index % self.loops.count]
        let ready = loop.makePromise(of: Void.self)
        let settings = self.settings
        let timeout = loop.scheduleTask(in: self.setupTimeout) {
            ready.fail(BenchError("setup timed out"))
        }
        ready.futureResult.whenComplete { _ in timeout.cancel() }

        var bootstrap = ClientBootstrap(group: loop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
        if !self.sources.isEmpty {
            #if os(Linux)
            // IP_BIND_ADDRESS_NO_PORT (24): pick the source port at connect time, per 4-tuple,
            // so that many connections can share one source address.
            bootstrap = bootstrap.channelOption(
                ChannelOptions.Types.SocketOption(level: .ip, name: .init(rawValue: 24)), value: 1)
            #endif
            bootstrap = bootstrap.bind(to: self.sources[index % self.sources.count])
        }
        bootstrap = bootstrap.channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                let upgrader = NIOWebSocketClientUpgrader(
                    maxFrameSize: settings.maxFrameSize,
                    automaticErrorHandling: false,
                    upgradePipelineHandler: { channel, response in
                        channel.eventLoop.makeCompletedFuture {
                            let compression = NegotiatedCompression(
                                responseHeader: response.headers.first(name: "Sec-WebSocket-Extensions"))
                            let handler = WSConnectionHandler(
                                index: index, state: bound.value, settings: settings, compression: compression,
                                ready: ready)
                            try channel.pipeline.syncOperations.addHandler(handler)
                        }
                    })
                let sync = channel.pipeline.syncOperations
                try sync.addHTTPClientHandlers(
                    leftOverBytesStrategy: .forwardBytes,
                    withClientUpgrade: (
                        upgraders: [upgrader],
                        completionHandler: { context in
                            context.pipeline.syncOperations.removeHandler(
                                name: UpgradeRequestHandler.name, promise: nil)
                        }
                    ))
                try sync.addHandler(
                    UpgradeRequestHandler(settings: settings, index: index, ready: ready), name: UpgradeRequestHandler.name)
            }
        }
        bootstrap.connect(to: self.target).whenFailure { error in
            ready.fail(error)
        }
        return ready.futureResult
    }
}

/// Opens `count` connections, at most `concurrency` setting up at once. Returns the number that
/// failed and up to five distinct error descriptions.
func openConnections(
    factory: ConnectionFactory, count: Int, concurrency: Int, progress: Bool
) async -> (failures: Int, errors: [String]) {
    var pending: [EventLoopFuture<Void>] = []
    pending.reserveCapacity(concurrency)
    var head = 0
    var failures = 0
    var errors: [String] = []
    var completed = 0
    let started = monotonicSeconds()
    var lastReport = started

    func settle(_ future: EventLoopFuture<Void>) async {
        do {
            try await future.get()
        } catch {
            failures += 1
            let text = "\(error)"
            if errors.count < 5, !errors.contains(text) { errors.append(text) }
        }
        completed += 1
        if progress {
            let now = monotonicSeconds()
            if now - lastReport >= 2 {
                lastReport = now
                print("  … \(completed)/\(count) connections set up (\(failures) failed)")
            }
        }
    }

    for i in 0..<count {
        if pending.count - head >= concurrency {
            await settle(pending[head])
            head += 1
            if head > 4096 {
                pending.removeFirst(head)
                head = 0
            }
        }
        pending.append(factory.connect(index: i))
    }
    while head < pending.count {
        await settle(pending[head])
        head += 1
    }
    return (failures, errors)
}

/// Collects each loop's results once the loops are quiet.
func collectResults(loops: [any EventLoop], states: [NIOLoopBound<LoopState>]) async throws -> [LoopResults] {
    var out: [LoopResults] = []
    for (loop, bound) in zip(loops, states) {
        out.append(try await loop.submit { bound.value.results() }.get())
    }
    return out
}

/// Closes every connection with a WebSocket close (1000), waiting up to `timeoutSeconds` for the
/// server's echo; then force-closes what is left.
func closeAll(loops: [any EventLoop], states: [NIOLoopBound<LoopState>], timeoutSeconds: Double) async {
    var closeFutures: [EventLoopFuture<Void>] = []
    for (loop, bound) in zip(loops, states) {
        let futures = try? await loop.submit { () -> [EventLoopFuture<Void>] in
            let state = bound.value
            var fs: [EventLoopFuture<Void>] = []
            fs.reserveCapacity(state.connections.count)
            for c in state.connections {
                if let f = c.closeFuture { fs.append(f) }
                c.beginClose()
            }
            return fs
        }.get()
        closeFutures += futures ?? []
    }
    guard let first = loops.first else { return }
    let all = EventLoopFuture.andAllComplete(closeFutures, on: first)
    let deadline = first.makePromise(of: Void.self)
    let timer = first.scheduleTask(in: .milliseconds(Int64(timeoutSeconds * 1000))) { deadline.succeed(()) }
    all.whenComplete { _ in deadline.succeed(()) }
    try? await deadline.futureResult.get()
    timer.cancel()
    // Whatever did not answer in time: hang up.
    for (loop, bound) in zip(loops, states) {
        try? await loop.submit {
            for c in bound.value.connections { c.forceClose() }
        }.get()
    }
}

extension WSConnectionHandler {
    var closeFuture: EventLoopFuture<Void>? { self.context?.channel.closeFuture }

    func forceClose() {
        self.context?.close(promise: nil)
    }
}
