import NIOCore

/// Inbound bytes per second of one connection (`--max-inbound-bytes-per-second`, burst
/// `--inbound-burst-bytes`): a token bucket charged with every read, first in the pipeline so it
/// counts what the socket delivered (PROXY header, TLS, HTTP, frames alike).
///
/// Over the rate it stops reading rather than closing: the next `read` is held until the bucket is
/// out of debt. Nothing is buffered meanwhile — the bytes stay in the kernel, TCP's window fills and
/// the client's sends block — so a flooder gets exactly the rate, a client with one big burst is
/// merely slowed, and the server's memory per connection stays at one read. (The message rate
/// limit, 1008, still applies to what does get through.)
final class InboundByteLimiter: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private var bucket: TokenBucket
    private var pausedUntil: NIODeadline?
    private var pendingRead = false
    private var resume: Scheduled<Void>?

    init(bytesPerSecond: Int, burstBytes: Int) {
        bucket = TokenBucket(rate: Double(bytesPerSecond), burst: Double(max(burstBytes, 1)), now: NIODeadline.now().uptimeNanoseconds)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data).readableBytes
        let wait = bucket.spend(Double(bytes), now: NIODeadline.now().uptimeNanoseconds)
        if wait > 0 {
            if pausedUntil == nil { SynclineLimitMetrics.refused(.inboundBytes) }
            // Every read of one loop pass may deepen the debt: the pause lasts until all is paid.
            pausedUntil = .now() + .nanoseconds(Int64(clamping: wait))
        }
        context.fireChannelRead(data)
    }

    func read(context: ChannelHandlerContext) {
        guard pausedUntil != nil else { return context.read() }
        pendingRead = true
        scheduleResume(context)
    }

    private func scheduleResume(_ context: ChannelHandlerContext) {
        guard resume == nil, let until = pausedUntil else { return }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        resume = context.eventLoop.scheduleTask(deadline: until) {
            let (limiter, context) = bound.value
            limiter.resume = nil
            if let until = limiter.pausedUntil, until > .now() {
                return limiter.scheduleResume(context)  // the debt grew after this was scheduled
            }
            limiter.pausedUntil = nil
            guard limiter.pendingRead else { return }
            limiter.pendingRead = false
            context.read()
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
        context.fireChannelInactive()
    }
}
