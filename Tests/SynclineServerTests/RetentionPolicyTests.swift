@testable import SynclineServer
import Testing

@Suite("Retention flags")
struct RetentionPolicyTests {
    @Test("durations are a whole positive number and a unit")
    func durations() {
        #expect(RetentionPolicy.duration("500ms") == .milliseconds(500))
        #expect(RetentionPolicy.duration("90s") == .seconds(90))
        #expect(RetentionPolicy.duration("15m") == .seconds(900))
        #expect(RetentionPolicy.duration("12h") == .seconds(43_200))
        #expect(RetentionPolicy.duration("30d") == .seconds(2_592_000))
        for bad in ["", "5", "0s", "-1d", "1.5h", "d", "3w", "1e3s", "99999999999999999999d", "٣d"] {
            #expect(RetentionPolicy.duration(bad) == nil, "\(bad)")
        }
    }

    @Test("--retain-changes is off, a duration or a count; --retain-outcomes is off or a duration")
    func flags() {
        #expect(RetentionPolicy.changes("off") == .keepAll)
        #expect(RetentionPolicy.changes("7d") == .age(.seconds(604_800)))
        #expect(RetentionPolicy.changes("1000000") == .count(1_000_000))
        #expect(RetentionPolicy.changes("0") == nil)
        #expect(RetentionPolicy.changes("lots") == nil)
        #expect(RetentionPolicy.outcomes("off") == .some(nil))
        #expect(RetentionPolicy.outcomes("30d") == .some(.seconds(2_592_000)))
        #expect(RetentionPolicy.outcomes("100") == nil)
        var policy = RetentionPolicy()
        #expect(policy.isEnabled)
        policy.changes = .keepAll
        policy.outcomesAge = nil
        #expect(!policy.isEnabled)
    }

    @Test("intervals reach Postgres in milliseconds")
    func intervalText() {
        #expect(RetentionService.interval(.seconds(300) * 0.9) == "270000 milliseconds")
        #expect(RetentionService.interval(.milliseconds(1)) == "1 milliseconds")
    }
}
