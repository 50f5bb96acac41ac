@testable import SynclineClient
import SynclineProtocol
import Testing

/// `conflate: true` (protocol §3.8) in the Swift client: sent on subscribe, a feed of its own,
/// stored with its spec, and a merged stream applied by key like any other.
@Suite("Client core: conflating feeds")
struct ConflateFeedTests {
    let merged = FeedSpec.collection(name: "accounts", filter: ["owner": "alice"], conflate: true)

    @Test func conflateIsSentAndIsAFeedOfItsOwn() {
        #expect(merged.storageKey != accounts.storageKey)
        #expect(FeedSpec(json: merged.json) == merged)
        #expect(FeedSpec(json: accounts.json) == accounts)
        var h = CoreHarness.connected()
        _ = h.subscribe(accounts)
        _ = h.subscribe(merged)
        let sent = h.takeSent().filter { $0["type"] == "subscribe" }
        #expect(sent.count == 2)
        #expect(sent.filter { $0["conflate"] == .bool(true) }.count == 1)
        #expect(sent.filter { $0["conflate"] != nil }.count == 1, "an exact feed sends no conflate field")
    }

    @Test func mergedAndExactFormsOfOneHistoryReachTheSameRows() {
        var h = CoreHarness.connected()
        let (exactKey, _) = h.subscribe(accounts)
        let (mergedKey, _) = h.subscribe(merged)
        for key in [exactKey, mergedKey] {
            let id = h.wireID(key)!
            h.receive(#"{"type":"subscribed","id":"\#(id)","mode":"snapshot","cursor":"E.5"}"#)
            h.receive(#"{"type":"snapshot","sub":"\#(id)","cursor":"E.5","done":true,"rows":[\#(account("a", "1")),\#(account("b", "2"))]}"#)
        }
        let exactID = h.wireID(exactKey)!, mergedID = h.wireID(mergedKey)!
        h.receive(#"{"type":"changes","sub":"\#(exactID)","cursor":"E.9","changes":[{"op":"delete","key":{"id":"a"},"row":null},{"op":"insert","key":{"id":"c"},"row":\#(account("c", "3"))},{"op":"insert","key":{"id":"a"},"row":\#(account("a", "1.25"))},{"op":"update","key":{"id":"c"},"row":\#(account("c", "3.5"))},{"op":"update","key":{"id":"b"},"row":\#(account("b", "2.1"))},{"op":"delete","key":{"id":"b"},"row":null}]}"#)
        // The same history as the server merges it (delete+insert → update, insert+update → insert, update+delete → delete).
        h.receive(#"{"type":"changes","sub":"\#(mergedID)","cursor":"E.9","changes":[{"op":"update","key":{"id":"a"},"row":\#(account("a", "1.25"))},{"op":"insert","key":{"id":"c"},"row":\#(account("c", "3.5"))},{"op":"delete","key":{"id":"b"},"row":null}]}"#)
        #expect(h.view(mergedKey) == h.view(exactKey))
        #expect(h.view(mergedKey).keys.sorted() == [#"{"id":"a"}"#, #"{"id":"c"}"#])
        let cursors = h.store.feeds.map(\.cursor)
        #expect(cursors == ["E.9", "E.9"])
    }
}
