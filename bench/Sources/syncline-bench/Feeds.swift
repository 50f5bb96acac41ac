#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One feed per connection (many-feeds and resume storm): connection `index` is user
/// `<subPrefix><n>` subscribed to its own account `<accountPrefix><n>`, n = index + 1 — the accounts
/// `bench/sql/setup.sql` creates. The server then holds as many feeds as connections, each with one
/// subscriber: the opposite of fan-out, where one encoding serves every subscriber.
struct FeedSettings: Sendable {
    var subPrefix = "bench"
    var accountPrefix = "bench-"
    /// Resume: the cursor connection `index` subscribes `after` (empty: a fresh snapshot).
    var after: [String] = []
    /// Check each row's per-account sequence number (memo `seq:<k>`, written by
    /// `ChangeWriter.writeSequenced`): every connection must see 1, 2, … exactly once, in order.
    var verifySequence = false

    var resuming: Bool { !self.after.isEmpty }

    func number(index: Int) -> Int { index + 1 }

    func account(index: Int) -> String { "\(self.accountPrefix)\(self.number(index: index))" }

    func subscribeFrame(index: Int) -> String {
        let after = index < self.after.count ? #","after":"\#(self.after[index])""# : ""
        return #"{"type":"subscribe","id":"t","collection":"transactions","where":{"account_id":"\#(self.account(index: index))"}\#(after)}"#
    }
}

extension ClientSettings {
    /// The request path of connection `index`: a peer bridge in feeds mode gets its own account in
    /// the query (`?account=bench-<n>`), as a bridge client names the one feed it wants.
    func path(index: Int) -> String {
        guard self.peer, case .feeds(let f) = self.mode else { return self.path }
        return self.path + (self.path.contains("?") ? "&" : "?") + "account=" + f.account(index: index)
    }
}

/// Per-loop tally of the sequence check: rows that skipped numbers (gaps), came again
/// (duplicates), and connections that ended short of the last number.
struct SequenceTally: Sendable {
    var checked = 0
    /// Sequence numbers never received (skipped in the middle, or missing at the end).
    var gaps = 0
    /// Rows whose number was already seen (or lower than one seen: out of order).
    var duplicates = 0
    var unparsable = 0
    /// Connections that ended before their last number (counted by `finish`).
    var shortConnections = 0

    /// Checks every row of one `changes` frame against the connection's next expected number.
    mutating func check(_ p: UnsafeRawBufferPointer, next: inout Int32) {
        var tally = self
        FrameScan.forEachMemoSequence(p) { seq in
            tally.checked += 1
            guard let seq else { tally.unparsable += 1; return }
            if seq == next {
                next += 1
            } else if seq > next {
                tally.gaps += Int(seq - next)
                next = seq + 1
            } else {
                tally.duplicates += 1
            }
        }
        self = tally
    }

    /// Counts the numbers each connection never reached: `expected` is the last one written.
    mutating func finish(nextSeqs: [Int32], expected: Int32) {
        for next in nextSeqs where next <= expected {
            self.gaps += Int(expected - next + 1)
            self.shortConnections += 1
        }
    }

    mutating func add(_ o: SequenceTally) {
        self.checked += o.checked
        self.gaps += o.gaps
        self.duplicates += o.duplicates
        self.unparsable += o.unparsable
        self.shortConnections += o.shortConnections
    }
}

extension FrameScan {
    static let memoKey: [UInt8] = Array("\"memo\"".utf8)
    static let cursorKey: [UInt8] = Array("\"cursor\"".utf8)
    static let modeKey: [UInt8] = Array("\"mode\"".utf8)
    static let seqPrefix: [UInt8] = Array("seq:".utf8)

    /// The frame's top-level `cursor` (the first `"cursor"` key: it precedes the rows in every
    /// server frame), or nil.
    static func cursor(_ p: UnsafeRawBufferPointer) -> String? {
        self.stringField(p, key: self.cursorKey, anchor: 2)
    }

    /// True for a `subscribed` frame with `"mode": "resume"`.
    static func isResumeMode(_ p: UnsafeRawBufferPointer) -> Bool {
        self.stringField(p, key: self.modeKey, anchor: 2) == "resume"
    }

    /// Calls `body` with the sequence number of every row whose `memo` is `"seq:<k>"` (nil for a
    /// memo of another form); rows without a memo (deletes) are skipped.
    static func forEachMemoSequence(_ p: UnsafeRawBufferPointer, _ body: (Int32?) -> Void) {
        var from = 0
        memoKey.withUnsafeBytes { needle in
            while let at = find(p, needle, anchor: 1, from: from) {
                from = at + needle.count
                guard let j = skipColon(p, from), j < p.count else { continue }
                guard p[j] == UInt8(ascii: "\""), j + 1 + seqPrefix.count <= p.count,
                      seqPrefix.withUnsafeBytes({ memcmp(p.baseAddress! + j + 1, $0.baseAddress!, $0.count) }) == 0
                else {
                    body(nil)
                    continue
                }
                var k = j + 1 + seqPrefix.count
                body(digits(p, &k, atMost: 9).map { Int32($0) })
                from = k
            }
        }
    }
}
