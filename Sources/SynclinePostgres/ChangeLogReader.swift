import Logging
import PostgresNIO
import SynclineCore

/// Reads pages of the change log, with the prune horizon from the same statement (one snapshot):
/// a prune that overtakes a reader is seen as such, never as a silent gap.
public enum ChangeLogReader {
    public struct Page: Sendable {
        /// Every position ≤ this may have been pruned.
        public var prunedThrough: Int64
        public var records: [ChangeRecord]
    }

    /// Which log entries a reader wants: all (the tail), or those of one collection or topic.
    public enum Scope: Sendable, Equatable {
        case all
        case collection(String)
        case topic(String)

        /// The narrowest scope that holds every entry of these feeds: their collection or topic
        /// when all share one, else everything.
        public static func covering(_ keys: [FeedKey]) -> Scope {
            var scope: Scope?
            for key in keys {
                let own: Scope
                switch key {
                case .collection(let name, _, _): own = .collection(name)
                case .topic(let topic): own = .topic(topic)
                }
                if scope == nil { scope = own } else if scope != own { return .all }
            }
            return scope ?? .all
        }
    }

    /// Positions in (`after`, `through`], at most `limit`, in order.
    public static func readPage(
        _ connection: PostgresConnection, after: Int64, through: Int64 = .max, limit: Int,
        scope: Scope = .all, logger: Logger
    ) async throws -> Page {
        let collection: String?, topic: String?
        switch scope {
        case .all: (collection, topic) = (nil, nil)
        case .collection(let name): (collection, topic) = (name, nil)
        case .topic(let name): (collection, topic) = (nil, name)
        }
        let query: PostgresQuery = """
            WITH h AS (SELECT pruned_through FROM syncline.retention)
            SELECT h.pruned_through, c.pos, c.txid::text, c.collection, c.topic, c.op::text, c.key::text,
                   c.old_key::text, c.row_image::text, c.new_match::text, c.old_match::text
            FROM h LEFT JOIN LATERAL (
                SELECT * FROM syncline.changes
                WHERE pos > \(after) AND pos <= \(through)
                  AND (\(collection)::text IS NULL OR collection = \(collection))
                  AND (\(topic)::text IS NULL OR topic = \(topic))
                ORDER BY pos LIMIT \(limit)
            ) c ON true ORDER BY c.pos
            """
        let rows = try await connection.query(query, logger: logger)
        var horizon: Int64 = 0
        var records: [ChangeRecord] = []
        for try await row in rows {
            let (pruned, pos, txid, collection, topic, op, key, oldKey, image, newMatch, oldMatch) = try row.decode(
                (Int64, Int64?, String?, String?, String?, String?, String?, String?, String?, String?, String?).self)
            horizon = pruned
            guard let pos, let op else { continue }
            let operation: ChangeRecord.Operation
            switch op {
            case "i": operation = .insert
            case "u": operation = .update
            case "d": operation = .delete
            case "t": operation = .truncate
            case "m": operation = .message
            case "a": operation = .policy
            default: continue
            }
            records.append(ChangeRecord(
                position: pos, transaction: txid.flatMap { UInt64($0) } ?? 0, operation: operation,
                collection: collection, topic: topic, key: key, oldKey: oldKey, row: image,
                newMatch: ChangeRecord.decodeMatch(newMatch), oldMatch: ChangeRecord.decodeMatch(oldMatch)))
        }
        return Page(prunedThrough: horizon, records: records)
    }

    /// Reads up to `limit` positions after `after`, extended so that the page ends on a transaction
    /// boundary (the rest of the last transaction is read too). A page whose rows pass `byteLimit`
    /// ends with the transaction in which they did, so large rows make smaller batches (and frames)
    /// instead of one that would restart feeds or overflow a connection's outbound limit; the rest
    /// is read next time.
    public static func readTransactions(
        _ connection: PostgresConnection, after: Int64, limit: Int, byteLimit: Int = 1 << 20, logger: Logger
    ) async throws -> Page {
        var page = try await readPage(connection, after: after, limit: limit, logger: logger)
        let full = page.records.count == limit
        if let cut = transactionEndPastByteLimit(page.records, byteLimit: byteLimit), cut < page.records.count - 1 {
            page.records.removeSubrange((cut + 1)...)
            return page
        }
        guard full else { return page }
        try await readRestOfLastTransaction(&page, connection, through: .max, limit: limit, scope: .all, logger: logger)
        return page
    }

    /// `readPage` for catch-ups: a full page is extended with the rest of its last transaction, so
    /// the page's cursor (its last position) never splits a transaction across two `changes`
    /// messages (protocol §3.3: one transaction's changes are contiguous under one cursor).
    public static func readCatchUpPage(
        _ connection: PostgresConnection, after: Int64, through: Int64, limit: Int, scope: Scope, logger: Logger
    ) async throws -> Page {
        var page = try await readPage(connection, after: after, through: through, limit: limit, scope: scope, logger: logger)
        if page.records.count == limit {
            try await readRestOfLastTransaction(&page, connection, through: through, limit: limit, scope: scope, logger: logger)
        }
        return page
    }

    /// Appends the records after the page's last one that belong to its transaction (a
    /// transaction's positions are contiguous, so they come next), a page of `limit` at a time.
    private static func readRestOfLastTransaction(
        _ page: inout Page, _ connection: PostgresConnection, through: Int64, limit: Int, scope: Scope, logger: Logger
    ) async throws {
        guard let last = page.records.last else { return }
        while true {
            let rest = try await readPage(
                connection, after: page.records.last!.position, through: through, limit: limit, scope: scope, logger: logger)
            let sameTransaction = rest.records.prefix { $0.transaction == last.transaction }
            page.records += sameTransaction
            if sameTransaction.count < rest.records.count || rest.records.count < limit { break }
        }
    }

    /// The index of the last record of the transaction in which the rows' cumulative size passes
    /// `byteLimit`, or nil if it never does.
    static func transactionEndPastByteLimit(_ records: [ChangeRecord], byteLimit: Int) -> Int? {
        var bytes = 0
        for (i, record) in records.enumerated() {
            bytes += (record.row?.utf8.count ?? 0) + (record.key?.utf8.count ?? 0)
            guard bytes > byteLimit else { continue }
            var end = i
            while end + 1 < records.count && records[end + 1].transaction == record.transaction { end += 1 }
            return end
        }
        return nil
    }
}
