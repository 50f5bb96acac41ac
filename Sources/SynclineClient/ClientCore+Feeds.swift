import SynclineProtocol

extension ClientCore {
    /// A row as a live query shows it.
    struct ViewRow: Sendable, Hashable {
        var key: JSONValue
        var row: JSONValue
        var pending: Bool
    }

    struct Feed: Sendable {
        enum Phase: Sendable {
            case idle
            case requested(wireID: String)
            case snapshot(wireID: String, reset: Bool, rows: [StoredRow])
            case catchingUp(wireID: String)
            case live(wireID: String)
            case ended

            var wireID: String? {
                switch self {
                case .requested(let id), .snapshot(let id, _, _), .catchingUp(let id), .live(let id): return id
                case .idle, .ended: return nil
                }
            }
        }

        /// Received, not yet published (held while a mutation may have committed, §5's overlay rule).
        enum Held: Sendable {
            case replace(cursor: String, rows: [StoredRow], reset: Bool)
            case changes(cursor: String, [(op: String, key: JSONValue, row: JSONValue?)])
            case live
        }

        let spec: FeedSpec
        var keyColumns: [String]
        /// Published (and stored) cursor and rows.
        var cursor: String?
        var confirmed: [String: StoredRow] = [:]
        var hasRows = false
        var holders = 0
        var phase: Phase = .idle
        var buffer: [Held] = []
        var view: [String: ViewRow] = [:]
        /// Keys the overlay touched when the view was last computed.
        var touched: Set<String> = []
        var attempts = 0
        /// The live marker of the current subscription has been published.
        var liveShown = false
        /// Subscribe without `after` next time (the server refused the saved cursor).
        var fresh = false

        init(spec: FeedSpec, keyColumns: [String], cursor: String?) {
            self.spec = spec
            self.keyColumns = keyColumns
            self.cursor = cursor
        }

        var isCaughtUp: Bool {
            switch phase {
            case .ended: return true
            case .live: return liveShown || spec.collection == nil
            default: return false
            }
        }

        func key(of row: JSONValue) -> JSONValue {
            guard !keyColumns.isEmpty, keyColumns.allSatisfy({ row[$0] != nil }) else { return row }
            return .object(keyColumns.map { ($0, row[$0]!) })
        }
    }

    // MARK: API

    /// Opens (or joins) the feed for `spec`; returns its key and the rows to show now.
    mutating func subscribe(_ spec: FeedSpec, now: Duration) -> (key: String, rows: [String: ViewRow], live: Bool, actions: [Action]) {
        self.now = now
        out = []
        let key = spec.storageKey
        if feeds[key] == nil {
            let columns = spec.collection.map { keyColumns[$0] ?? configuration.defaultKeyColumns } ?? []
            feeds[key] = Feed(spec: spec, keyColumns: columns, cursor: nil)
        }
        feeds[key]!.holders += 1
        if feeds[key]!.holders == 1 {
            if case .ended = feeds[key]!.phase { feeds[key]!.phase = .idle }
            // The whole view of a feed taken up now (rows from the store, if any); the caller gets it
            // as the return value, so its publish action is dropped.
            let before = out.count
            refreshViews(replaced: [key: false])
            out.removeSubrange(before...)
            if case .ready = link, case .idle = feeds[key]!.phase { subscribeFeed(key) }
        }
        let feed = feeds[key]!
        return (key, feed.view, feed.isCaughtUp, finish())
    }

    /// Drops one holder of the feed; the last one unsubscribes it and forgets its stored rows.
    mutating func unsubscribe(_ key: String, now: Duration) -> [Action] {
        self.now = now
        out = []
        guard var feed = feeds[key] else { return finish() }
        feed.holders -= 1
        if feed.holders > 0 {
            feeds[key] = feed
            return finish()
        }
        if let wireID = feed.phase.wireID, let id = link.connection {
            wire[wireID] = nil
            out.append(.send(id, JSONValue.object([("type", "unsubscribe"), ("id", .string(wireID))]).jsonText, mid: nil))
        }
        feeds[key] = nil
        var batch = StoreBatch()
        batch.feeds = [.remove(spec: feed.spec)]
        out.append(.persist(batch))
        refreshViews()
        return finish()
    }

    mutating func subscribeFeed(_ key: String) {
        guard case .ready(let id) = link, var feed = feeds[key] else { return }
        if let old = feed.phase.wireID { wire[old] = nil }
        wireCounter += 1
        let wireID = "s\(wireCounter)"
        wire[wireID] = key
        feed.phase = .requested(wireID: wireID)
        feed.buffer = []
        feed.liveShown = false
        let after = feed.fresh ? nil : feed.cursor
        feeds[key] = feed
        out.append(.send(id, feed.spec.subscribeMessage(id: wireID, after: after), mid: nil))
    }

    // MARK: Feed messages

    func feedKey(_ message: JSONValue, _ field: String = "sub") -> String? {
        message[field]?.stringValue.flatMap { wire[$0] }
    }

    mutating func feedSubscribed(_ message: JSONValue) {
        guard let key = feedKey(message, "id"), let wireID = message["id"]?.stringValue, var feed = feeds[key] else { return }
        switch message["mode"]?.stringValue {
        case "resume":
            feed.phase = .catchingUp(wireID: wireID)
        default:
            let reset = message["mode"]?.stringValue == "reset" || feed.hasRows
            feed.phase = .snapshot(wireID: wireID, reset: reset, rows: [])
            if case .topic = feed.spec, message["mode"]?.stringValue == "reset" {
                out.append(.topic(feed: key, .reset))
            }
        }
        feeds[key] = feed
    }

    mutating func feedSnapshot(_ message: JSONValue) {
        guard let key = feedKey(message), var feed = feeds[key], case .snapshot(let wireID, let reset, var rows) = feed.phase else { return }
        for row in message["rows"]?.array ?? [] { rows.append(StoredRow(key: feed.key(of: row), row: row)) }
        guard message["done"]?.bool == true, let cursor = message["cursor"]?.stringValue else {
            feed.phase = .snapshot(wireID: wireID, reset: reset, rows: rows)
            feeds[key] = feed
            return
        }
        feed.phase = .catchingUp(wireID: wireID)
        feed.attempts = 0
        feed.fresh = false
        if case .topic = feed.spec {
            feed.cursor = cursor
            feeds[key] = feed
            var batch = StoreBatch()
            batch.feeds = [.apply(spec: feed.spec, keyColumns: [], cursor: cursor, upserts: [], deletes: [])]
            out.append(.persist(batch))
            return
        }
        feed.buffer.append(.replace(cursor: cursor, rows: rows, reset: reset))
        feeds[key] = feed
        flush()
    }

    mutating func feedChanges(_ message: JSONValue) {
        guard let key = feedKey(message), var feed = feeds[key], let cursor = message["cursor"]?.stringValue else { return }
        switch feed.phase {
        case .catchingUp, .live: break
        default: return
        }
        let isLiveMarker = message["live"]?.bool == true
        if isLiveMarker, let wireID = feed.phase.wireID { feed.phase = .live(wireID: wireID) }
        if case .topic = feed.spec {
            feed.cursor = cursor
            feeds[key] = feed
            var batch = StoreBatch()
            batch.feeds = [.apply(spec: feed.spec, keyColumns: [], cursor: cursor, upserts: [], deletes: [])]
            out.append(.persist(batch))
            out.append(.topic(feed: key, .cursor(cursor)))
            if isLiveMarker { out.append(.topic(feed: key, .live)) }
            return
        }
        var changes: [(op: String, key: JSONValue, row: JSONValue?)] = []
        for change in message["changes"]?.array ?? [] {
            guard let op = change["op"]?.stringValue, let changeKey = change["key"] else { continue }
            let row = change["row"].flatMap { $0 == .null ? nil : $0 }
            changes.append((op, changeKey, row))
            if let names = changeKey.members?.map(\.0), names != feed.keyColumns, let collection = feed.spec.collection {
                feed.keyColumns = names
                keyColumns[collection] = names
            }
        }
        feed.buffer.append(.changes(cursor: cursor, changes))
        if isLiveMarker { feed.buffer.append(.live) }
        feeds[key] = feed
        flush()
    }

    mutating func topicMessage(_ message: JSONValue) {
        guard let key = feedKey(message), var feed = feeds[key], case .topic(let topic) = feed.spec,
              let cursor = message["cursor"]?.stringValue
        else { return }
        feed.cursor = cursor
        feeds[key] = feed
        var batch = StoreBatch()
        batch.feeds = [.apply(spec: feed.spec, keyColumns: [], cursor: cursor, upserts: [], deletes: [])]
        out.append(.persist(batch))
        out.append(.topic(feed: key, .message(TopicMessage(topic: message["topic"]?.stringValue ?? topic, payload: message["payload"] ?? .null, cursor: cursor))))
    }

    mutating func feedEnded(wireID: String?, code: String, message: String) {
        guard let wireID, let key = wire[wireID], var feed = feeds[key] else { return }
        wire[wireID] = nil
        feed.phase = .ended
        feed.buffer = []
        feeds[key] = feed
        switch feed.spec {
        case .topic: out.append(.topic(feed: key, .ended(code: code, message: message)))
        case .collection: out.append(.publish(feed: key, [.ended(code: code, message: message)], view: nil))
        }
    }

    /// An `error`: for a mutation (`ref` a number), a feed (`ref` one of our wire ids), or neither.
    mutating func error(_ message: JSONValue) {
        let code = message["code"]?.stringValue ?? "internal"
        let text = message["message"]?.stringValue ?? ""
        let retryAfter = message["retry_after_ms"]?.int64
        if let mid = message["ref"]?.int64 {
            mutationError(mid: mid, code: code, message: text, retryAfterMS: retryAfter)
        } else if let wireID = message["ref"]?.stringValue, let key = wire[wireID], var feed = feeds[key] {
            wire[wireID] = nil
            feed.phase = .idle
            feed.buffer = []
            switch code {
            case "bad_request" where feed.cursor != nil && !feed.fresh:
                // A cursor the server does not accept (e.g. beyond a restored database's newest
                // position): start over with a snapshot, which replaces the rows.
                feed.fresh = true
                feeds[key] = feed
                subscribeFeed(key)
            case "not_found", "forbidden", "bad_request":
                feeds[key] = feed
                feedEndedLocally(key, code: code, message: text)
            default:
                // unavailable, rate_limited, internal, duplicate_id: resubscribe from the saved cursor later.
                let delay = retryAfter.map { Duration.milliseconds($0) }
                    ?? configuration.backoff.delay(attempt: feed.attempts, random: &random)
                feed.attempts += 1
                feeds[key] = feed
                schedule(.feedRetry(key), after: delay)
            }
        } else {
            out.append(.report(.server(code: code, message: text)))
        }
    }

    mutating func feedEndedLocally(_ key: String, code: String, message: String) {
        guard var feed = feeds[key] else { return }
        feed.phase = .ended
        feeds[key] = feed
        switch feed.spec {
        case .topic: out.append(.topic(feed: key, .ended(code: code, message: message)))
        case .collection: out.append(.publish(feed: key, [.ended(code: code, message: message)], view: nil))
        }
    }

    // MARK: Publishing

    /// Publishes what the feeds hold, unless a mutation that may have committed is unanswered; then
    /// it waits, so the answer that drops the overlay and the changes carrying the effect reach the
    /// app together. `batch` and `decided` ride along (they are written in the same transaction).
    mutating func flush(batch initial: StoreBatch = StoreBatch(), decided initialDecided: [(Mutation, MutationDecision)] = []) {
        var batch = initial
        let decided = initialDecided
        var dirty: [String: [String]] = [:]  // keys in commit order, so changes publish in that order
        var replaced: [String: Bool] = [:]
        var liveMarkers: Set<String> = []
        var cursors: [String: String] = [:]
        var removedAnswered = false
        if !holdsChanges {
            for key in feeds.keys.sorted() where !feeds[key]!.buffer.isEmpty {
                var feed = feeds[key]!
                var upserts: [String: StoredRow] = [:]
                var deletes: [String: JSONValue] = [:]
                var didReplace = false
                for held in feed.buffer {
                    switch held {
                    case .replace(let cursor, let rows, let reset):
                        feed.confirmed = [:]
                        for row in rows { feed.confirmed[row.key.keyString] = row }
                        feed.cursor = cursor
                        replaced[key] = reset
                        didReplace = true
                        upserts = [:]
                        deletes = [:]
                        feed.hasRows = true
                    case .changes(let cursor, let changes):
                        for change in changes {
                            let k = change.key.keyString
                            dirty[key, default: []].append(k)
                            if change.op == "delete" || change.row == nil {
                                feed.confirmed[k] = nil
                                upserts[k] = nil
                                deletes[k] = change.key
                            } else {
                                let row = StoredRow(key: change.key, row: change.row!)
                                feed.confirmed[k] = row
                                upserts[k] = row
                                deletes[k] = nil
                            }
                        }
                        feed.cursor = cursor
                    case .live:
                        liveMarkers.insert(key)
                        feed.liveShown = true
                    }
                }
                feed.buffer = []
                if let cursor = feed.cursor { cursors[key] = cursor }
                if didReplace {
                    batch.feeds.append(.replace(spec: feed.spec, keyColumns: feed.keyColumns, cursor: feed.cursor,
                                                rows: feed.confirmed.keys.sorted().map { feed.confirmed[$0]! }))
                } else {
                    batch.feeds.append(.apply(spec: feed.spec, keyColumns: feed.keyColumns, cursor: feed.cursor,
                                              upserts: upserts.keys.sorted().map { upserts[$0]! },
                                              deletes: deletes.keys.sorted().map { deletes[$0]! }))
                }
                feeds[key] = feed
            }
            // Answered mutations whose effects are now published leave the queue with them.
            let answered = mutations.filter(\.isAnswered)
            if !answered.isEmpty {
                mutations.removeAll(where: \.isAnswered)
                for m in answered { batch.deleteMutations.append(m.mid) }
                removedAnswered = true
            }
        }
        if !batch.isEmpty { out.append(.persist(batch)) }
        if !dirty.isEmpty || !replaced.isEmpty || !liveMarkers.isEmpty || !decided.isEmpty || !initial.isEmpty || removedAnswered || !cursors.isEmpty {
            refreshViews(dirty: dirty, replaced: replaced, live: liveMarkers, cursors: cursors)
        }
        for (m, decision) in decided {
            out.append(.decided(local: m.local, m.stored, decision, earlier: m.earlier))
        }
    }

    /// Recomputes every held feed's view (confirmed rows plus the overlay of every queued mutation,
    /// in `mid` order) and publishes the differences.
    mutating func refreshViews(dirty: [String: [String]] = [:], replaced: [String: Bool] = [:], live: Set<String> = [],
                               cursors: [String: String] = [:]) {
        var confirmedByCollection: [String: [[String: StoredRow]]] = [:]
        for feed in feeds.values {
            if let collection = feed.spec.collection { confirmedByCollection[collection, default: []].append(feed.confirmed) }
        }
        var rows = OptimisticRows(mid: 0, confirmed: confirmedByCollection)
        for m in mutations {
            guard let effect = mutators[m.stored.name] else { continue }
            rows.mid = m.mid
            effect(&rows, m.stored.args)
        }
        for key in feeds.keys.sorted() {
            var feed = feeds[key]!
            guard case .collection(let collection, let filter, _) = feed.spec, feed.holders > 0 else { continue }
            let effects = rows.effects[collection] ?? [:]
            let effectKeys = Set(effects.keys)
            func viewRow(_ k: String) -> ViewRow? {
                if let effect = effects[k] {
                    guard case .put(let row) = effect, row.row.matches(filter) else { return nil }
                    return ViewRow(key: row.key, row: row.row, pending: true)
                }
                return feed.confirmed[k].map { ViewRow(key: $0.key, row: $0.row, pending: false) }
            }
            var events: [LiveQueryEvent] = []
            if let reset = replaced[key] {
                var view: [String: ViewRow] = [:]
                for k in Set(feed.confirmed.keys).union(effectKeys) {
                    if let row = viewRow(k) { view[k] = row }
                }
                feed.view = view
                let all = view.keys.sorted().map { view[$0]!.row }
                events.append(reset ? .reset(all) : .snapshot(all))
            } else {
                var changes: [RowChange] = []
                // Changed keys in commit order (the last change of a key decides its place), then
                // keys only the overlay touches.
                var seen: Set<String> = []
                var ordered: [String] = []
                for k in (dirty[key] ?? []).reversed() where seen.insert(k).inserted { ordered.append(k) }
                ordered.reverse()
                ordered += feed.touched.union(effectKeys).subtracting(seen).sorted()
                for k in ordered {
                    let old = feed.view[k]
                    let new = viewRow(k)
                    guard old != new else { continue }
                    feed.view[k] = new
                    switch (old, new) {
                    case (nil, let new?): changes.append(RowChange(op: .insert, key: new.key, row: new.row, pending: new.pending))
                    case (_?, let new?): changes.append(RowChange(op: .update, key: new.key, row: new.row, pending: new.pending))
                    case (let old?, nil): changes.append(RowChange(op: .delete, key: old.key, row: nil, pending: false))
                    case (nil, nil): break
                    }
                }
                if !changes.isEmpty { events.append(.changes(changes)) }
            }
            feed.touched = effectKeys
            if let cursor = cursors[key] { events.append(.cursor(cursor)) }
            if live.contains(key) { events.append(.live) }
            feeds[key] = feed
            if !events.isEmpty { out.append(.publish(feed: key, events, view: replaced[key] != nil ? feed.view : nil)) }
        }
    }
}
