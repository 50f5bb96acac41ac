import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// Which limit refused something: the `limit` label of `syncline_limit_refusals_total`.
enum LimitKind: String, CaseIterable, Sendable {
    case origin
    case addressUpgradeRate = "address_upgrade_rate"
    case addressConnections = "address_connections"
    case addressTable = "address_table"
    case userConnections = "user_connections"
    case inboundBytes = "inbound_bytes"
    case whereSize = "where_size"
    case proxyHeader = "proxy_header"
    /// `--max-connections`: HTTP 503 on the upgrade.
    case connections
    /// `--max-messages-per-second`: `error rate_limited` (1008 when the client keeps on).
    case messageRate = "message_rate"
    /// `--max-mutations-in-flight`: `error rate_limited` on the `mutate`.
    case mutationsInFlight = "mutations_in_flight"
    /// `--max-outbound-bytes`: close 4008, the client resumes.
    case outboundBytes = "outbound_bytes"
}

/// The counters of refusals, one per limit.
enum SynclineLimitMetrics {
    private static let counters: [LimitKind: Counter] = Dictionary(uniqueKeysWithValues: LimitKind.allCases.map {
        ($0, Counter(label: "syncline_limit_refusals_total", dimensions: [("limit", $0.rawValue)]))
    })

    static func refused(_ kind: LimitKind) {
        counters[kind]?.increment()
    }
}

/// The per-address and per-user tables as a value: open connections and an upgrade token bucket
/// per source address (IPv6 by /64), open connections per `sub`. I/O-free; time is passed in.
///
/// Bounded: an address entry with no open connection is dropped once its bucket has refilled (it
/// would behave exactly like a new one), a user entry as soon as its count is 0; a sweep runs at
/// most once a second. Entries with open connections are bounded by the connection limits; the
/// rest by `maximumAddresses` (past it, new addresses are refused until a sweep frees room).
struct LimitTables: Sendable {
    struct Limits: Sendable {
        /// 0 turns a limit off.
        var connectionsPerAddress: Int
        var upgradesPerSecond: Double
        var upgradeBurst: Int
        var connectionsPerUser: Int
        var maximumAddresses: Int
    }

    struct AddressEntry: Sendable {
        var connections = 0
        var bucket: TokenBucket
    }

    enum Admission: Equatable, Sendable {
        case admitted
        /// Refused; `retryAfterSeconds` for the `Retry-After` header.
        case refused(LimitKind, retryAfterSeconds: Int)
    }

    let limits: Limits
    private(set) var addresses: [IPAddress: AddressEntry] = [:]
    private(set) var users: [String: Int] = [:]
    private var lastSweep: UInt64 = 0

    init(limits: Limits) {
        self.limits = limits
    }

    /// An upgrade from `address`: takes a token of its bucket and a connection slot, or neither.
    mutating func admitUpgrade(_ address: IPAddress, now: UInt64) -> Admission {
        sweepIfDue(now)
        let key = address.limitKey
        let fresh = TokenBucket(rate: limits.upgradesPerSecond, burst: Double(limits.upgradeBurst), now: now)
        if addresses[key] == nil, limits.maximumAddresses > 0, addresses.count >= limits.maximumAddresses {
            sweep(now)
            guard addresses.count < limits.maximumAddresses else { return .refused(.addressTable, retryAfterSeconds: 1) }
        }
        var entry = addresses[key] ?? AddressEntry(bucket: fresh)
        defer { addresses[key] = entry }
        if limits.upgradesPerSecond > 0, !entry.bucket.take(now: now) {
            let wait = entry.bucket.nanosecondsUntil(1)
            return .refused(.addressUpgradeRate, retryAfterSeconds: max(1, Int((Double(wait) / 1e9).rounded(.up))))
        }
        if limits.connectionsPerAddress > 0, entry.connections >= limits.connectionsPerAddress {
            return .refused(.addressConnections, retryAfterSeconds: 1)
        }
        entry.connections += 1
        return .admitted
    }

    /// A connection admitted by `admitUpgrade` has closed.
    mutating func releaseAddress(_ address: IPAddress, now: UInt64) {
        let key = address.limitKey
        guard var entry = addresses[key] else { return }
        entry.connections = max(0, entry.connections - 1)
        if entry.connections == 0, limits.upgradesPerSecond <= 0 || entry.bucket.isFull(at: now) {
            addresses[key] = nil
        } else {
            addresses[key] = entry
        }
    }

    /// A session authenticated as `sub`: takes one of its connection slots, or refuses.
    mutating func admitUser(_ sub: String) -> Bool {
        let open = users[sub, default: 0]
        guard limits.connectionsPerUser <= 0 || open < limits.connectionsPerUser else { return false }
        users[sub] = open + 1
        return true
    }

    mutating func releaseUser(_ sub: String) {
        guard let open = users[sub] else { return }
        users[sub] = open > 1 ? open - 1 : nil
    }

    private mutating func sweepIfDue(_ now: UInt64) {
        if now >= lastSweep &+ 1_000_000_000 { sweep(now) }
    }

    /// Drops the address entries that hold nothing: no connection, a full bucket.
    mutating func sweep(_ now: UInt64) {
        lastSweep = now
        addresses = addresses.filter { $0.value.connections > 0 || ($0.value.bucket.rate > 0 && !$0.value.bucket.isFull(at: now)) }
    }
}

/// The process-wide `LimitTables` behind a lock (every event loop admits upgrades), and the
/// hooks that tie a table entry's release to its channel's close.
final class ConnectionLimits: Sendable {
    private let tables: NIOLockedValueBox<LimitTables>
    private let addressesGauge = Gauge(label: "syncline_limit_tracked_addresses")
    private let usersGauge = Gauge(label: "syncline_limit_tracked_users")

    init(_ configuration: ServerConfiguration) {
        tables = NIOLockedValueBox(LimitTables(limits: .init(
            connectionsPerAddress: configuration.maximumConnectionsPerAddress,
            upgradesPerSecond: configuration.upgradesPerSecondPerAddress,
            upgradeBurst: configuration.upgradeBurstPerAddress,
            connectionsPerUser: configuration.maximumConnectionsPerUser,
            maximumAddresses: configuration.maximumTrackedAddresses)))
    }

    private static var now: UInt64 { NIODeadline.now().uptimeNanoseconds }

    /// Admits an upgrade from `address`; once admitted, the slot is released when `channel` closes.
    func admitUpgrade(_ address: IPAddress, channel: any Channel) -> LimitTables.Admission {
        let (admission, count) = tables.withLockedValue { ($0.admitUpgrade(address, now: Self.now), $0.addresses.count) }
        addressesGauge.record(count)
        switch admission {
        case .admitted:
            channel.closeFuture.whenComplete { [self] _ in
                let count = tables.withLockedValue { $0.releaseAddress(address, now: Self.now); return $0.addresses.count }
                addressesGauge.record(count)
            }
        case .refused(let kind, _):
            SynclineLimitMetrics.refused(kind)
        }
        return admission
    }

    /// Admits an authenticated session of `sub`; once admitted, released when `channel` closes.
    func admitUser(_ sub: String, channel: any Channel) -> Bool {
        let (admitted, count) = tables.withLockedValue { ($0.admitUser(sub), $0.users.count) }
        usersGauge.record(count)
        guard admitted else {
            SynclineLimitMetrics.refused(.userConnections)
            return false
        }
        channel.closeFuture.whenComplete { [self] _ in
            let count = tables.withLockedValue { $0.releaseUser(sub); return $0.users.count }
            usersGauge.record(count)
        }
        return true
    }

    /// Entries held, for tests and the gauges.
    var tracked: (addresses: Int, users: Int) {
        tables.withLockedValue { ($0.addresses.count, $0.users.count) }
    }
}
