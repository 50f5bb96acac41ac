import SynclineProtocol

/// What a ``SynclineClient/Configuration/observer`` sees: the wire traffic of the current
/// connection and every cursor the client saves, in the order the client handles them.
///
/// For test harnesses that judge a client's history (scripts/chaos records these lines for
/// scripts/check-history); apps do not need it. The observer runs on the client's own task, before
/// the client acts on what it reports: keep it short (append to a buffer) and never block.
public enum ClientObservation: Sendable {
    /// Connection `connection` is being opened (subscription ids start afresh on it).
    case connecting(connection: Int)
    /// A message sent on the current connection, as the exact JSON text written.
    case sent(connection: Int, text: String)
    /// A message received on the current connection (messages of a connection the client already
    /// gave up on are not reported: the client ignores them).
    case received(connection: Int, message: JSONValue)
    /// A feed's cursor was stored with its rows: `subscription` is the feed's id on the current
    /// connection; `rows` are all the confirmed rows held for it then (nil for topics, and when
    /// the rows stored are not those at `cursor`).
    case saved(subscription: String, spec: FeedSpec, cursor: String, rows: [JSONValue]?)
}

/// Receives ``ClientObservation``s (see ``SynclineClient/Configuration/observer``).
public typealias ClientObserver = @Sendable (ClientObservation) -> Void

extension ClientEngine {
    /// The `saved` observations of one store write (collection and topic feeds with a cursor).
    static func savedObservations(_ batch: StoreBatch, core: ClientCore) -> [ClientObservation] {
        var out: [ClientObservation] = []
        for write in batch.feeds {
            let spec: FeedSpec, cursor: String?
            switch write {
            case .replace(let s, _, let c, _): (spec, cursor) = (s, c)
            case .apply(let s, _, let c, _, _): (spec, cursor) = (s, c)
            case .remove: continue
            }
            guard let cursor, let feed = core.feeds[spec.storageKey], let wireID = feed.phase.wireID else { continue }
            // Rows only when the feed still stands at this write's cursor (one event may write twice).
            let rows = spec.collection != nil && feed.cursor == cursor ? feed.confirmed.values.map(\.row) : nil
            out.append(.saved(subscription: wireID, spec: spec, cursor: cursor, rows: rows))
        }
        return out
    }
}
