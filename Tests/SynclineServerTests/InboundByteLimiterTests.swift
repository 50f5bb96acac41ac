import NIOCore
import NIOEmbedded
@testable import SynclineServer
import Testing

/// `InboundByteLimiter` on an embedded channel: within the budget every `read` passes; a read that
/// overdraws it holds the next `read` (nothing more is taken from the socket) until it is paid.
@Suite struct InboundByteLimiterTests {
    /// Counts the `read` requests that reach the socket end of the pipeline.
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = NIOAny
        var reads = 0
        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    @Test func holdsReadsWhileInDebt() async throws {
        let channel = EmbeddedChannel()
        let counter = ReadCounter()
        try channel.pipeline.syncOperations.addHandler(counter)
        // 1 MB/s, burst 1 KB: 1 KB of debt is paid in 1 ms.
        try channel.pipeline.syncOperations.addHandler(InboundByteLimiter(bytesPerSecond: 1_000_000, burstBytes: 1_000))
        channel.read()
        #expect(counter.reads == 1)
        try channel.writeInbound(ByteBuffer(repeating: 0, count: 500))  // within the burst
        channel.read()
        #expect(counter.reads == 2)
        try channel.writeInbound(ByteBuffer(repeating: 0, count: 1_500))  // 1,000 bytes of debt
        channel.read()
        channel.read()
        #expect(counter.reads == 2, "held while in debt")
        try await Task.sleep(for: .milliseconds(5))  // the debt is paid on the real clock...
        channel.embeddedEventLoop.advanceTime(to: .now())  // ...and the resume fires (the embedded loop keeps its own clock)
        #expect(counter.reads == 3, "one read resumes, however many were asked for")
        channel.read()
        #expect(counter.reads == 4)
        #expect(try channel.readInbound(as: ByteBuffer.self)?.readableBytes == 500)
        #expect(try channel.readInbound(as: ByteBuffer.self)?.readableBytes == 1_500)  // nothing is dropped
    }
}
