import Foundation
#if canImport(Glibc)
import Glibc
#endif
import SynclineServer
import Testing

/// One flooding connection cannot stall its neighbours (docs/security.md, "Flood isolation"): a
/// real server with one event loop, a flooder sending 20,000 `ping`s as fast as its socket takes
/// them, and a bystander on the same loop timing its `ping` → `pong` round trips during the flood.
/// Beside it, at the same time, a control bystander on a second server that nobody floods: both
/// see the same machine (the whole suite runs in parallel on 2 cores), so the difference between
/// them is the flood's, whatever the load. All are blocking sockets on threads of their own.
@Suite("Flood isolation")
struct FloodIsolationTests {
    @Test("a bystander's round trip stays near a control's on an unflooded server while a neighbour floods; the flooder gets 1008")
    func floodDoesNotStallBystander() async throws {
        let configure: (inout SynclineApplication.Options) -> Void = {
            $0.server.eventLoopThreads = 1
            $0.server.heartbeatMilliseconds = 120_000
        }
        try await TestServer.with(configure: configure) { control in
            try await TestServer.with(configure: configure) { server in
                let (port, controlPort) = (server.port, control.port)
                let result = try await Thread.run {
                    let bystander = try BlockingWebSocket(port: port, sub: "bystander")
                    let controlBystander = try BlockingWebSocket(port: controlPort, sub: "control")
                    // Warm both (first messages pay for lazy set-up), 6 ms apart: well under the
                    // 200 messages/s rate limit.
                    _ = try bystander.roundTrips(count: 50, gap: 0.006)
                    _ = try controlBystander.roundTrips(count: 50, gap: 0.006)
                    let flooder = try BlockingWebSocket(port: port, sub: "flooder")
                    let flood = FloodOutcome()
                    let floodThread = Thread {
                        flood.run(flooder, pings: 20_000)
                    }
                    let controlSamples = RoundTripSamples()
                    let controlThread = Thread {
                        while !flood.finished, !controlSamples.stopped {
                            guard let trip = try? controlBystander.roundTrips(count: 1, gap: 0.006) else { break }
                            controlSamples.append(trip)
                        }
                        controlSamples.done()
                    }
                    floodThread.start()
                    controlThread.start()
                    var during: [Double] = []
                    // The flood lasts until the server ends the flooder's connection (its close, then
                    // the close timeout: ~3 s); at most 5 s, so that a stall is not diluted in a long tail.
                    let deadline = Date().addingTimeInterval(5)
                    while !flood.finished, Date() < deadline {
                        during += try bystander.roundTrips(count: 1, gap: 0.006)
                    }
                    let controlTrips = controlSamples.stopAndWait()
                    bystander.close()
                    controlBystander.close()
                    flooder.close()
                    return (controlTrips, during, flood.closeCode, flood.closeMilliseconds)
                }
                // Corrected for coordinated omission: a stalled round trip also stands for the pings
                // the bystander would have sent meanwhile (one per 6 ms), as an open-loop client sees
                // it; otherwise one long stall is a single sample among hundreds and no percentile shows it.
                let controlled = Self.corrected(result.0, interval: 6), during = Self.corrected(result.1, interval: 6)
                let (closeCode, closeMS) = (result.2, result.3)
                let controlP99 = percentile(controlled, 0.99), duringP99 = percentile(during, 0.99)
                print("flood isolation: \(result.1.count) round trips during the flood, max \(fmt(result.1.max() ?? 0)) ms (percentiles corrected for coordinated omission)")
                print("flood isolation: control (unflooded server, same time, n=\(controlled.count)) p50 \(fmt(percentile(controlled, 0.5))) p99 \(fmt(controlP99)) ms; beside the flood (n=\(during.count)) p50 \(fmt(percentile(during, 0.5))) p99 \(fmt(duringP99)) max \(fmt(during.max() ?? 0)) ms; flooder closed with \(closeCode.map(String.init) ?? "nothing") after \(fmt(closeMS ?? -1)) ms")
                #expect(closeCode == 1008)
                #expect(result.1.count >= 20, "the bystander kept pinging during the flood")
                #expect(result.0.count >= 20, "the control kept pinging during the flood")
                // Not a performance figure but a stall detector, against a control that shares the
                // machine's load. Measured on 2 cores: with the budget, p99 1.2–1.4× the control's;
                // with it lifted (`maximumFramesPerPass` 1,000,000) 7–11× (36–50 ms against 5 ms);
                // without the rule at all, about 1 s.
                #expect(duringP99 <= controlP99 * 3 + 10, "bystander p99 \(fmt(duringP99)) ms against \(fmt(controlP99)) ms for the control")
            }
        }
    }
}

/// Round trips collected on another thread, until told to stop.
private final class RoundTripSamples: @unchecked Sendable {
    private let lock = NSCondition()
    private var samples: [Double] = []
    private var _stopped = false
    private var finished = false

    var stopped: Bool { lock.withLock { _stopped } }

    func append(_ trips: [Double]) { lock.withLock { samples += trips } }

    func done() {
        lock.withLock {
            finished = true
            lock.broadcast()
        }
    }

    /// Stops the collecting thread and returns what it collected.
    func stopAndWait() -> [Double] {
        lock.withLock {
            _stopped = true
            while !finished { lock.wait() }
            return samples
        }
    }
}

extension FloodIsolationTests {
    /// Each round trip `r`, plus `r - interval`, `r - 2·interval`, … while above `interval`.
    static func corrected(_ values: [Double], interval: Double) -> [Double] {
        var out: [Double] = []
        for value in values {
            out.append(value)
            var missed = value - interval
            while missed > interval {
                out.append(missed)
                missed -= interval
            }
        }
        return out
    }
}

private func percentile(_ values: [Double], _ q: Double) -> Double {
    guard !values.isEmpty else { return 0 }
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int(q * Double(sorted.count)))]
}

private func fmt(_ value: Double) -> String { String(format: "%.2f", value) }

/// What the flooder saw: its close code and when (ms after its first byte), and whether it ended.
private final class FloodOutcome: @unchecked Sendable {
    private let lock = NSLock()
    private var _finished = false
    private var _closeCode: UInt16?
    private var _closeMilliseconds: Double?
    var finished: Bool { lock.withLock { _finished } }
    var closeCode: UInt16? { lock.withLock { _closeCode } }
    var closeMilliseconds: Double? { lock.withLock { _closeMilliseconds } }

    func run(_ socket: BlockingWebSocket, pings: Int) {
        let frame = BlockingWebSocket.frame(Array(#"{"type":"ping"}"#.utf8))
        var blob: [UInt8] = []
        blob.reserveCapacity(frame.count * pings)
        for _ in 0..<pings { blob += frame }
        let started = Date()
        // Reads on a thread of its own, so the server's answers never back up behind the flood;
        // until the server ends the connection (after its close, the rest of the flood is still
        // read), which ends the measurement.
        let reader = Thread {
            while let (opcode, payload) = try? socket.nextFrame() {
                if opcode == 0x8 {
                    let code = payload.count >= 2 ? UInt16(payload[0]) << 8 | UInt16(payload[1]) : 0
                    self.lock.withLock {
                        self._closeCode = code
                        self._closeMilliseconds = Date().timeIntervalSince(started) * 1000
                    }
                }
            }
            self.lock.withLock { self._finished = true }
        }
        reader.start()
        try? socket.sendAll(blob)
    }
}

/// A WebSocket client on a blocking POSIX socket: upgrade, hello with an unsigned token, masked
/// text frames out, frames in (answering the server's pings).
final class BlockingWebSocket: @unchecked Sendable {
    private let fd: Int32
    private var buffer: [UInt8] = []
    private let sendLock = NSLock()

    init(port: Int, sub: String) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw TestFailure("connect() failed") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        try sendAll(Array("GET /v1/sync HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: syncline.v1\r\n\r\n".utf8))
        while buffer.firstRange(of: Array("\r\n\r\n".utf8)) == nil { try fill() }
        let end = buffer.firstRange(of: Array("\r\n\r\n".utf8))!.upperBound
        guard String(decoding: buffer[..<end], as: UTF8.self).hasPrefix("HTTP/1.1 101") else { throw TestFailure("upgrade refused") }
        buffer.removeFirst(end)
        let hello = TestClient.encode(["type": "hello", "client_id": "flood-\(sub)", "token": Authenticator.unsignedToken(sub: sub)])
        try sendText(hello)
        while true {
            let (opcode, payload) = try nextFrame()
            if opcode == 0x1, String(decoding: payload, as: UTF8.self).contains(#""welcome""#) { break }
        }
    }

    static func frame(_ payload: [UInt8], opcode: UInt8 = 0x1) -> [UInt8] {
        var frame: [UInt8] = [0x80 | opcode]
        if payload.count < 126 {
            frame.append(0x80 | UInt8(payload.count))
        } else {
            frame.append(0x80 | 126)
            frame += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        }
        let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        frame += mask
        frame += payload.enumerated().map { $0.element ^ mask[$0.offset & 3] }
        return frame
    }

    func sendText(_ text: String) throws { try sendAll(Self.frame(Array(text.utf8))) }

    func sendAll(_ bytes: [UInt8]) throws {
        try sendLock.withLock {
            var offset = 0
            while offset < bytes.count {
                let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard n > 0 else { throw TestFailure("send() failed") }
                offset += n
            }
        }
    }

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 65_536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw TestFailure("connection closed") }
        buffer += chunk[..<n]
    }

    /// The next data or close frame (pings are answered, pongs skipped).
    func nextFrame() throws -> (UInt8, [UInt8]) {
        while true {
            if buffer.count >= 2 {
                var length = Int(buffer[1] & 0x7F), offset = 2
                if length == 126, buffer.count >= 4 { length = Int(buffer[2]) << 8 | Int(buffer[3]); offset = 4 }
                if length == 127, buffer.count >= 10 { length = buffer[2..<10].reduce(0) { $0 << 8 | Int($1) }; offset = 10 }
                if (buffer[1] & 0x7F) < 126 || offset > 2, buffer.count >= offset + length {
                    let opcode = buffer[0] & 0x0F
                    let payload = Array(buffer[offset..<offset + length])
                    buffer.removeFirst(offset + length)
                    if opcode == 0x9 { try sendAll(Self.frame(payload, opcode: 0xA)); continue }
                    if opcode == 0xA { continue }
                    return (opcode, payload)
                }
            }
            try fill()
        }
    }

    /// `count` application ping round trips, `gap` seconds apart, in milliseconds.
    func roundTrips(count: Int, gap: TimeInterval) throws -> [Double] {
        var times: [Double] = []
        for n in 0..<count {
            let start = DispatchTime.now().uptimeNanoseconds
            try sendText(#"{"type":"ping","t":\#(n)}"#)
            while true {
                let (opcode, payload) = try nextFrame()
                if opcode == 0x1, String(decoding: payload, as: UTF8.self).contains(#""pong""#) { break }
                if opcode == 0x8 { throw TestFailure("the bystander was closed") }
            }
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            Thread.sleep(forTimeInterval: gap)
        }
        return times
    }

    func close() { Glibc.close(fd) }
}
