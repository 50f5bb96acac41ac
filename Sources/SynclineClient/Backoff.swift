import Foundation
import SynclineProtocol

/// Exponential backoff with full jitter: attempt n waits a uniformly random time in
/// [0, min(cap, base · 2ⁿ)], so clients reconnecting after one outage spread out.
struct Backoff: Sendable, Hashable {
    var base: Duration
    var cap: Duration

    func delay(attempt: Int, random: inout SplitMix64) -> Duration {
        let baseMS = Double(base.components.seconds) * 1000 + Double(base.components.attoseconds) / 1e15
        let capMS = Double(cap.components.seconds) * 1000 + Double(cap.components.attoseconds) / 1e15
        let ceiling = min(capMS, baseMS * pow(2, Double(min(attempt, 30))))
        return .milliseconds(Int64(random.nextUnit() * ceiling))
    }
}

/// A small deterministic random generator, so the I/O-free core is reproducible in tests.
struct SplitMix64: Sendable, Hashable {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    mutating func nextUnit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}

/// The `exp` claim of a JWT (seconds since 1970), read without verifying anything; nil when absent.
func tokenExpiry(_ token: String) -> Double? {
    let parts = token.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count >= 2 else { return nil }
    var base64 = parts[1].replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
    while base64.count % 4 != 0 { base64 += "=" }
    guard let data = Data(base64Encoded: base64), let claims = try? JSONParser.parse(Array(data)),
          let exp = claims["exp"]?.decimal
    else { return nil }
    return NSDecimalNumber(decimal: exp).doubleValue
}
