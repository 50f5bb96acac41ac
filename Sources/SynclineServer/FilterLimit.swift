import SynclineProtocol

/// The size limit of a subscribe's `where` (`--max-where-bytes`, `--max-where-terms`): a filter is
/// a feed key and a SQL predicate, kept for the subscription's life, so its size is bounded well
/// below the message limit. Checked before any database work; over it is `error bad_request`
/// naming the limit, and the connection stays open.
enum FilterLimit {
    /// Bytes of a filter: each column name plus its value's JSON text.
    static func bytes(of filter: [String: JSONValue]) -> Int {
        filter.reduce(0) { $0 + $1.key.utf8.count + $1.value.jsonText.utf8.count }
    }

    static func check(_ filter: [String: JSONValue], configuration: ServerConfiguration) throws(ClientFacingError) {
        let terms = configuration.maximumWhereTerms
        if terms > 0, filter.count > terms {
            SynclineLimitMetrics.refused(.whereSize)
            throw ClientFacingError(.badRequest, "'where' has \(filter.count) terms; this server accepts at most \(terms) (--max-where-terms)")
        }
        let limit = configuration.maximumWhereBytes
        guard limit > 0 else { return }
        let size = bytes(of: filter)
        if size > limit {
            SynclineLimitMetrics.refused(.whereSize)
            throw ClientFacingError(.badRequest, "'where' is \(size) bytes; this server accepts at most \(limit) (--max-where-bytes)")
        }
    }
}
