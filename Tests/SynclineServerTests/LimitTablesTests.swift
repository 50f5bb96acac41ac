import NIOHTTP1
@testable import SynclineServer
import SynclineProtocol
import Testing

/// The I/O-free parts of the limits: addresses and networks, `X-Forwarded-For`, the token bucket,
/// the per-address and per-user tables (and that they forget idle entries), the `where` limit.
@Suite struct LimitTablesTests {
    static let second: UInt64 = 1_000_000_000

    @Test func addresses() {
        #expect(IPAddress("127.0.0.2") == .v4(0x7F00_0002))
        #expect(IPAddress("::ffff:127.0.0.2") == .v4(0x7F00_0002))
        #expect(IPAddress("::1") == .v6(0, 1))
        #expect(IPAddress("2001:db8::7") == .v6(0x2001_0DB8_0000_0000, 7))
        #expect(IPAddress("1:2:3:4:5:6:7:8") == .v6(0x0001_0002_0003_0004, 0x0005_0006_0007_0008))
        for bad in ["", "1.2.3", "1.2.3.256", "01234.1.1.1", "1.2.3.4.5", ":::", "1::2::3", "g::1", "1:2:3:4:5:6:7:8:9", "[::1]", " 1.2.3.4"] {
            #expect(IPAddress(bad) == nil, "\(bad)")
        }
        #expect("\(IPAddress("10.1.2.3")!)" == "10.1.2.3")
        // IPv6 is counted per /64.
        #expect(IPAddress("2001:db8::1")!.limitKey == IPAddress("2001:db8::ffff:1")!.limitKey)
        #expect(IPAddress("2001:db8:0:1::1")!.limitKey != IPAddress("2001:db8::1")!.limitKey)
    }

    @Test func networks() {
        let ten = IPNetwork("10.0.0.0/8")!
        #expect(ten.contains(IPAddress("10.255.0.1")!))
        #expect(!ten.contains(IPAddress("11.0.0.1")!))
        #expect(!ten.contains(IPAddress("::1")!))
        #expect(IPNetwork("127.0.0.3")!.contains(IPAddress("127.0.0.3")!))
        #expect(!IPNetwork("127.0.0.3")!.contains(IPAddress("127.0.0.4")!))
        #expect(IPNetwork("0.0.0.0/0")!.contains(IPAddress("8.8.8.8")!))
        #expect(IPNetwork("2001:db8::/32")!.contains(IPAddress("2001:db8:ffff::1")!))
        #expect(!IPNetwork("2001:db8::/32")!.contains(IPAddress("2001:db9::1")!))
        #expect(IPNetwork("2001:db8::/96")!.contains(IPAddress("2001:db8::1:2")!))
        #expect(!IPNetwork("2001:db8::/96")!.contains(IPAddress("2001:db8::1:0:2")!))
        #expect(IPNetwork("2001:db8::/112")!.contains(IPAddress("2001:db8::2")!))
        for bad in ["10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/", "x/8", "::/129"] { #expect(IPNetwork(bad) == nil, "\(bad)") }
    }

    /// Rightmost untrusted hop; untrusted peers' headers are ignored; garbage stops the walk.
    @Test func forwardedFor() {
        let trusted = [IPNetwork("10.0.0.0/8")!]
        func resolve(peer: String, _ xff: [String], proxied: String? = nil) -> String {
            var headers = HTTPHeaders()
            for value in xff { headers.add(name: "X-Forwarded-For", value: value) }
            let address = ClientAddress.resolve(peer: IPAddress(peer), proxied: proxied.flatMap { IPAddress($0) }, headers: headers, trusted: trusted)
            return address.map { "\($0)" } ?? "nil"
        }
        #expect(resolve(peer: "203.0.113.9", ["1.1.1.1"]) == "203.0.113.9")  // untrusted peer: ignored
        #expect(resolve(peer: "10.0.0.1", ["1.1.1.1"]) == "1.1.1.1")
        #expect(resolve(peer: "10.0.0.1", ["6.6.6.6, 1.1.1.1, 10.0.0.2"]) == "1.1.1.1")  // spoofed left part ignored
        #expect(resolve(peer: "10.0.0.1", ["6.6.6.6", "1.1.1.1"]) == "1.1.1.1")  // several header lines, in order
        #expect(resolve(peer: "10.0.0.1", ["10.0.0.3, 10.0.0.2"]) == "10.0.0.3")  // all trusted: leftmost
        #expect(resolve(peer: "10.0.0.1", []) == "10.0.0.1")
        #expect(resolve(peer: "10.0.0.1", ["1.1.1.1, garbage"]) == "10.0.0.1")  // garbage: the hop that added it
        #expect(resolve(peer: "10.0.0.1", ["1.1.1.1:4711"]) == "1.1.1.1")
        #expect(resolve(peer: "10.0.0.1", ["[2001:db8::5]:4711"]) == "2001:db8:0:0:0:0:0:5")
        // A PROXY header's source stands for the peer; XFF counts only if that source is trusted too.
        #expect(resolve(peer: "10.0.0.1", ["1.1.1.1"], proxied: "198.51.100.4") == "198.51.100.4")
        #expect(resolve(peer: "10.0.0.1", ["1.1.1.1"], proxied: "10.9.9.9") == "1.1.1.1")
    }

    @Test func tokenBucket() {
        var bucket = TokenBucket(rate: 2, burst: 3, now: 0)
        do { let ok = bucket.take(now: 0) && bucket.take(now: 0) && bucket.take(now: 0); #expect(ok) }
        do { let ok = !bucket.take(now: 0); #expect(ok) }
        #expect(bucket.nanosecondsUntil(1) == Self.second / 2)
        do { let ok = !bucket.take(now: Self.second / 4); #expect(ok) }
        do { let ok = bucket.take(now: Self.second / 2); #expect(ok) }
        #expect(!bucket.isFull(at: Self.second / 2))
        #expect(bucket.isFull(at: 2 * Self.second))
        // Refill stops at the burst.
        do { let ok = bucket.take(3, now: 100 * Self.second); #expect(ok) }
        do { let ok = !bucket.take(now: 100 * Self.second); #expect(ok) }
        // Spending into debt: the wait is until the debt is paid.
        var bytes = TokenBucket(rate: 1_000, burst: 1_000, now: 0)
        do { let ok = bytes.spend(500, now: 0) == 0; #expect(ok) }
        do { let ok = bytes.spend(1_500, now: 0) == Self.second; #expect(ok) }
        do { let ok = bytes.spend(0, now: Self.second) == 0; #expect(ok) }
    }

    func tables(perAddress: Int = 2, rate: Double = 1, burst: Int = 3, perUser: Int = 2, addresses: Int = 100) -> LimitTables {
        LimitTables(limits: .init(connectionsPerAddress: perAddress, upgradesPerSecond: rate, upgradeBurst: burst,
                                  connectionsPerUser: perUser, maximumAddresses: addresses))
    }

    @Test func perAddress() {
        var t = tables()
        let a = IPAddress("127.0.0.2")!, b = IPAddress("127.0.0.3")!
        do { let ok = t.admitUpgrade(a, now: 0) == .admitted; #expect(ok) }
        do { let ok = t.admitUpgrade(a, now: 0) == .admitted; #expect(ok) }
        do { let ok = t.admitUpgrade(a, now: 0) == .refused(.addressConnections, retryAfterSeconds: 1); #expect(ok) }
        do { let ok = t.admitUpgrade(b, now: 0) == .admitted; #expect(ok) }  // another address is unaffected
        t.releaseAddress(a, now: 0)
        // The burst of 3 is spent (the refused attempt took a token too): rate-limited now.
        do { let ok = t.admitUpgrade(a, now: 0) == .refused(.addressUpgradeRate, retryAfterSeconds: 1); #expect(ok) }
        do { let ok = t.admitUpgrade(a, now: Self.second) == .admitted; #expect(ok) }
    }

    @Test func retryAfterFollowsTheRate() {
        var t = tables(perAddress: 0, rate: 0.25, burst: 1)
        let a = IPAddress("127.0.0.2")!
        do { let ok = t.admitUpgrade(a, now: 0) == .admitted; #expect(ok) }
        do { let ok = t.admitUpgrade(a, now: 0) == .refused(.addressUpgradeRate, retryAfterSeconds: 4); #expect(ok) }
    }

    @Test func idleAddressesAreForgotten() {
        var t = tables(perAddress: 0, rate: 10, burst: 10)
        for i in 0..<50 { _ = t.admitUpgrade(.v4(0x0A00_0000 + UInt32(i)), now: 0) }
        for i in 0..<50 { t.releaseAddress(.v4(0x0A00_0000 + UInt32(i)), now: 0) }
        #expect(t.addresses.count == 50)  // buckets still refilling
        _ = t.admitUpgrade(IPAddress("127.0.0.9")!, now: 2 * Self.second)  // the sweep is due: refilled entries go
        #expect(t.addresses.count == 1)
        t.releaseAddress(IPAddress("127.0.0.9")!, now: 10 * Self.second)  // released with a full bucket: gone at once
        #expect(t.addresses.isEmpty)
    }

    @Test func theAddressTableIsBounded() {
        var t = tables(perAddress: 0, rate: 1, burst: 5, addresses: 3)
        for i in 0..<3 { #expect(t.admitUpgrade(.v4(UInt32(i)), now: 0) == .admitted) }
        do { let ok = t.admitUpgrade(.v4(99), now: 0) == .refused(.addressTable, retryAfterSeconds: 1); #expect(ok) }
        do { let ok = t.admitUpgrade(.v4(1), now: 0) == .admitted; #expect(ok) }  // known addresses still admitted
        for i in 0..<3 { t.releaseAddress(.v4(UInt32(i)), now: 0) }
        do { let ok = t.admitUpgrade(.v4(99), now: 10 * Self.second) == .admitted; #expect(ok) }
        #expect(t.addresses.count <= 3)
    }

    @Test func perUser() {
        var t = tables()
        do { let ok = t.admitUser("alice") && t.admitUser("alice"); #expect(ok) }
        do { let ok = !t.admitUser("alice"); #expect(ok) }
        do { let ok = t.admitUser("bob"); #expect(ok) }
        t.releaseUser("alice")
        do { let ok = t.admitUser("alice"); #expect(ok) }
        t.releaseUser("alice"); t.releaseUser("alice"); t.releaseUser("bob")
        #expect(t.users.isEmpty)
        var open = tables(perUser: 0)
        for _ in 0..<1_000 { let ok = open.admitUser("alice"); #expect(ok) }
    }

    @Test func whereLimit() throws {
        var configuration = ServerConfiguration()
        configuration.maximumWhereBytes = 40
        configuration.maximumWhereTerms = 2
        try FilterLimit.check(["owner": "alice"], configuration: configuration)  // 5 + 7 bytes
        #expect(FilterLimit.bytes(of: ["owner": "alice"]) == 12)
        #expect(throws: ClientFacingError.self) { try FilterLimit.check(["owner": .string(String(repeating: "x", count: 40))], configuration: configuration) }
        #expect(throws: ClientFacingError.self) { try FilterLimit.check(["a": 1, "b": 2, "c": 3], configuration: configuration) }
    }

    @Test func origins() {
        #expect(UpgradeAdmission.isAllowed(origin: "https://App.example.com", ["https://app.example.com/"]))
        #expect(!UpgradeAdmission.isAllowed(origin: "https://evil.example.com", ["https://app.example.com"]))
        #expect(!UpgradeAdmission.isAllowed(origin: "http://app.example.com", ["https://app.example.com"]))
        #expect(!UpgradeAdmission.isAllowed(origin: "null", ["https://app.example.com"]))
        #expect(UpgradeAdmission.isAllowed(origin: "https://x", ["*"]))
    }
}
