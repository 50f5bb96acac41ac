import SynclineProtocol

/// Applies one subscription's messages the way a client would, and remembers what it saw so that
/// tests can prove "exactly once, in order".
struct FeedCollector {
    let sub: String
    /// Current rows by key text.
    var rows: [String: JSONValue] = [:]
    /// Every key delivered by an insert (snapshot rows count as inserts), with how often.
    var inserted: [String: Int] = [:]
    /// Every change op in arrival order: (op, key text).
    var log: [(String, String)] = []
    var cursor: String?
    var snapshotDone = false
    var modes: [String] = []
    /// Topic payloads (JSON text) in arrival order.
    var payloads: [String] = []
    /// `changes` with `"live": true` seen since the feed's last `subscribed` (protocol §3.4), and
    /// what the feed had received when the first came: ops (its own included), payloads, whether
    /// the snapshot was done, its cursor.
    var liveMarkers = 0
    var atLive: (ops: Int, payloads: Int, snapshotDone: Bool, cursor: String?, changesMessages: Int)?
    /// `changes` messages received since the feed's last `subscribed`.
    var changesMessages = 0

    init(sub: String) { self.sub = sub }

    static func keyText(_ key: JSONValue?) -> String { key?.jsonText ?? "null" }

    /// Applies `message` if it belongs to this feed; returns whether it did.
    @discardableResult
    mutating func apply(_ message: JSONValue) -> Bool {
        switch message["type"]?.stringValue {
        case "subscribed" where message["id"]?.stringValue == sub:
            let mode = message["mode"]?.stringValue ?? "?"
            modes.append(mode)
            if mode != "resume" {
                rows = [:]
                snapshotDone = false
            }
            cursor = message["cursor"]?.stringValue
            liveMarkers = 0  // a new start of the feed: its own marker follows
            atLive = nil
            changesMessages = 0
            return true
        case "snapshot" where message["sub"]?.stringValue == sub:
            if case .array(let items)? = message["rows"] {
                for row in items {
                    let key = Self.keyText(row["id"].map { .object([("id", $0)]) })
                    rows[key] = row
                    inserted[key, default: 0] += 1
                    log.append(("snapshot", key))
                }
            }
            if message["done"] == .bool(true) {
                snapshotDone = true
                cursor = message["cursor"]?.stringValue
            }
            return true
        case "changes" where message["sub"]?.stringValue == sub:
            if case .array(let changes)? = message["changes"] {
                for change in changes {
                    let op = change["op"]?.stringValue ?? "?"
                    let key = Self.keyText(change["key"])
                    log.append((op, key))
                    switch op {
                    case "insert":
                        rows[key] = change["row"]
                        inserted[key, default: 0] += 1
                    case "update": rows[key] = change["row"]
                    case "delete": rows[key] = nil
                    default: break
                    }
                }
            }
            cursor = message["cursor"]?.stringValue
            changesMessages += 1
            if message["live"] == .bool(true) {
                liveMarkers += 1
                if atLive == nil { atLive = (log.count, payloads.count, snapshotDone, cursor, changesMessages) }
            } else if message["live"] != nil {
                liveMarkers += 1000  // `live` is `true` or absent: anything else fails the count
            }
            return true
        case "message" where message["sub"]?.stringValue == sub:
            payloads.append(message["payload"]?.jsonText ?? "")
            cursor = message["cursor"]?.stringValue
            return true
        default:
            return false
        }
    }

    /// Reads messages from `client` into this feed until `done` holds (or times out).
    mutating func collect(from client: TestClient, timeout: Duration = .seconds(20),
                          until done: (FeedCollector) -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !done(self) {
            guard ContinuousClock.now < deadline else {
                throw TestFailure("feed \(sub) incomplete after \(timeout): \(rows.count) rows, \(log.count) ops")
            }
            // The whole wait is bounded, not each message: a loaded machine (2 cores, parallel
            // suites) was seen to take over 5 s for one restart's snapshot.
            let message = try await client.next(timeout: max(.milliseconds(100), deadline - ContinuousClock.now))
            if message["type"]?.stringValue == "error" {
                throw TestFailure("unexpected error: \(message.jsonText)")
            }
            apply(message)
        }
    }
}

/// `{"id":"<uuid>"}` key text as Postgres renders it in change keys.
func uuidKey(_ id: String) -> String { JSONValue.object([("id", .string(id))]).jsonText }

/// Position of a cursor text.
func position(_ cursor: String?) -> Int64 {
    cursor.flatMap { Cursor(parsing: $0)?.position } ?? -1
}
