import NIOCore
import SynclineCore
import SynclineProtocol

/// One subscription of one connection. Lives on that connection's event loop and is touched only
/// there; the fan-out holds it in its feed's list while live.
final class Subscriber {
    enum Phase: Equatable {
        /// Resolving, authorizing, streaming its snapshot or catching up: not in the live lists.
        case starting
        /// In the loop's live list; frames are its prefix plus the feed's shared body.
        case live
        /// In the loop's young list: batches encoded before the feed existed, or a cursor that falls
        /// inside a batch, are served per subscriber until the shared bodies cover it.
        case young
        case ended
    }

    let id: String
    let key: FeedKey
    let feedID: FeedID
    /// The hub's index generation when the feed was retained for this subscriber.
    let generation: UInt64
    unowned(unsafe) let connection: SyncConnection
    /// `{"type":"changes","sub":"<id>",` and `{"type":"message","sub":"<id>",`.
    let changesPrefix: ByteBuffer
    let messagePrefix: ByteBuffer
    var phase: Phase = .starting
    /// Everything at or below this position has been sent (or does not concern the feed).
    var cursor: Int64 = 0
    /// Position in the loop's live list for O(1) removal.
    var slot = -1
    /// When a frame last carried this subscriber's cursor forward.
    var lastSent: NIODeadline = .now()
    var lastSentPosition: Int64 = 0
    /// The snapshot or catch-up work in flight.
    var task: Task<Void, Never>?
    /// Queued for the loop's next catch-up pass; cleared when the fan-out removes the subscriber
    /// (restart, unsubscribe, close), so the pass never touches a subscriber that moved on.
    var awaitingCatchUp = false
    /// In (or waiting for) the loop's change-log scan (`LogCatchUp`); cleared like
    /// `awaitingCatchUp`.
    var awaitingLogCatchUp = false

    init(id: String, key: FeedKey, feedID: FeedID, generation: UInt64, connection: SyncConnection) {
        self.id = id
        self.key = key
        self.feedID = feedID
        self.generation = generation
        self.connection = connection
        let quoted = JSONValue.quoted(id)
        self.changesPrefix = ByteBuffer(string: "{\"type\":\"changes\",\"sub\":\(quoted),")
        self.messagePrefix = ByteBuffer(string: "{\"type\":\"message\",\"sub\":\(quoted),")
    }

    /// `{"type":"changes","sub":"<id>","live":true,`: the prefix of the feed's live marker, made
    /// when needed (once per start of the feed) rather than held by every subscriber.
    var liveChangesPrefix: ByteBuffer {
        ByteBuffer(string: "{\"type\":\"changes\",\"sub\":\(JSONValue.quoted(id)),\"live\":true,")
    }
}
