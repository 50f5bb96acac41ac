/// A token bucket: `rate` tokens a second, at most `burst` saved up. Time is passed in (nanoseconds
/// of a monotonic clock), so it is a plain value that unit tests drive by hand.
struct TokenBucket: Sendable, Equatable {
    let rate: Double
    let burst: Double
    private(set) var tokens: Double
    private(set) var updated: UInt64

    /// Starts full: a client's first burst is allowed.
    init(rate: Double, burst: Double, now: UInt64) {
        self.rate = rate
        self.burst = max(burst, 1)
        self.tokens = max(burst, 1)
        self.updated = now
    }

    private mutating func refill(_ now: UInt64) {
        guard now > updated else { return }
        tokens = min(burst, tokens + Double(now - updated) / 1e9 * rate)
        updated = now
    }

    /// Takes `cost` tokens if there are that many; otherwise takes nothing.
    mutating func take(_ cost: Double = 1, now: UInt64) -> Bool {
        refill(now)
        guard tokens >= cost else { return false }
        tokens -= cost
        return true
    }

    /// Takes `cost` even when that leaves a debt (a read already happened: its bytes are spent);
    /// returns how long until the bucket is out of debt (0 when it is not in debt).
    mutating func spend(_ cost: Double, now: UInt64) -> UInt64 {
        refill(now)
        tokens -= cost
        return nanosecondsUntil(0)
    }

    /// How long until `cost` tokens are there (0: now); for `Retry-After`.
    func nanosecondsUntil(_ cost: Double) -> UInt64 {
        guard tokens < cost, rate > 0 else { return 0 }
        return UInt64(((cost - tokens) / rate * 1e9).rounded(.up))
    }

    /// Full again by `now`: a bucket in this state carries no information and may be forgotten.
    func isFull(at now: UInt64) -> Bool {
        let elapsed = now > updated ? Double(now - updated) / 1e9 : 0
        return tokens + elapsed * rate >= burst
    }
}
