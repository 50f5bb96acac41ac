/// Builders for the server's control messages (everything but the fan-out hot path, which splices
/// pre-encoded bodies). Each returns one compact JSON object as text.
public enum ServerMessage {
    public static func welcome(session: String, server: String, heartbeatMS: Int, lastMID: Int64) -> String {
        "{\"type\":\"welcome\",\"session\":\(JSONValue.quoted(session)),\"server\":\(JSONValue.quoted(server)),\"heartbeat_ms\":\(heartbeatMS),\"last_mid\":\(lastMID)}"
    }

    public enum SubscribeMode: String, Sendable {
        case snapshot, resume, reset
    }

    public static func subscribed(id: String, mode: SubscribeMode, cursor: Cursor) -> String {
        "{\"type\":\"subscribed\",\"id\":\(JSONValue.quoted(id)),\"mode\":\"\(mode.rawValue)\",\"cursor\":\"\(cursor)\"}"
    }

    /// `rows` are JSON object texts as Postgres rendered them; they are spliced, not re-encoded.
    public static func snapshot(sub: String, rows: [String], done: Bool, cursor: Cursor) -> String {
        snapshotPrefix(sub: sub) + snapshotBody(rows: rows, done: done, cursor: cursor)
    }

    /// `{"type":"snapshot","sub":"<id>",`: the per-subscriber start of a `snapshot`; a shared
    /// snapshot writes it before one `snapshotBody` encoded for all of its sharers.
    public static func snapshotPrefix(sub: String) -> String {
        "{\"type\":\"snapshot\",\"sub\":\(JSONValue.quoted(sub)),"
    }

    /// The rest of a `snapshot` after `snapshotPrefix`: the same for every subscriber of a read.
    public static func snapshotBody(rows: [String], done: Bool, cursor: Cursor) -> String {
        var out = "\"cursor\":\"\(cursor)\",\"done\":\(done),\"rows\":["
        for (i, row) in rows.enumerated() {
            if i > 0 { out += "," }
            out += row
        }
        out += "]}"
        return out
    }

    public static func unsubscribed(id: String) -> String {
        "{\"type\":\"unsubscribed\",\"id\":\(JSONValue.quoted(id))}"
    }

    public static func revoked(sub: String, code: ErrorCode, message: String) -> String {
        "{\"type\":\"revoked\",\"sub\":\(JSONValue.quoted(sub)),\"code\":\"\(code)\",\"message\":\(JSONValue.quoted(message))}"
    }

    public static func error(code: ErrorCode, message: String, ref: JSONValue?, retryAfterMS: Int? = nil) -> String {
        var out = "{\"type\":\"error\",\"code\":\(JSONValue.quoted(code.rawValue)),\"message\":\(JSONValue.quoted(message))"
        if let ref { out += ",\"ref\":" + ref.jsonText }
        if let retryAfterMS { out += ",\"retry_after_ms\":\(retryAfterMS)" }
        out += "}"
        return out
    }

    /// `result` is JSON text (the mutator's result, `null` for none).
    public static func ack(mid: Int64, cursor: Cursor, result: String, duplicate: Bool) -> String {
        "{\"type\":\"ack\",\"mid\":\(mid),\"cursor\":\"\(cursor)\",\"result\":\(result)\(duplicate ? ",\"duplicate\":true" : "")}"
    }

    /// `details` is JSON text, omitted when nil.
    public static func reject(mid: Int64, code: String, message: String, details: String?, duplicate: Bool) -> String {
        var out = "{\"type\":\"reject\",\"mid\":\(mid),\"code\":\(JSONValue.quoted(code)),\"message\":\(JSONValue.quoted(message))"
        if let details { out += ",\"details\":" + details }
        if duplicate { out += ",\"duplicate\":true" }
        out += "}"
        return out
    }

    public static func pong(t: JSONValue?) -> String {
        guard let t else { return "{\"type\":\"pong\"}" }
        return "{\"type\":\"pong\",\"t\":\(t.jsonText)}"
    }
}
