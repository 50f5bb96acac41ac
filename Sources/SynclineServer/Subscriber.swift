import NIOCore
import SynclineCore
import SynclineProtocol

/// One subscription of one connection. Lives on that connection's event loop and is touched only
/// there. Its life (snapshot, catch-up, young, live, ended) is `machine`'s: the connection, the
/// loop's fan-out and the log scan report events to it and carry out the actions it returns.
final class Subscriber {
    /// Which of the fan-out's lists holds the subscriber: the fan-out's own bookkeeping, kept in
    /// step with the machine's `young`/`live` states by the actions it carries out.
    enum Listed: Equatable {
        case none
        case live
        case young
    }

    let id: String
    let key: FeedKey
    let feedID: FeedID
    /// Weak: a subscriber queued in a catch-up or log scan may outlive its connection's close.
    weak var connection: SyncConnection?
    /// `{"type":"changes","sub":"<id>",` and `{"type":"message","sub":"<id>",`.
    let changesPrefix: ByteBuffer
    let messagePrefix: ByteBuffer
    var machine: SubscriptionStateMachine
    /// Written by the fan-out only: its list and position there (O(1) removal).
    var listed: Listed = .none
    var slot = -1
    /// When a frame last carried this subscriber's cursor forward (the idle advance).
    var lastSent: NIODeadline = .now()
    var lastSentPosition: Int64 = 0
    /// Set when the client asked for `"conflate": true`: the fan-out hands this subscriber's
    /// deliveries to `SyncConnection.deliverConflating`, which merges them while the connection's
    /// outbound queue is over the threshold. Nil (the exact stream) costs the fan-out one check.
    var conflation: ConflatingDelivery?

    init(id: String, key: FeedKey, feedID: FeedID, generation: UInt64, connection: SyncConnection) {
        self.id = id
        self.key = key
        self.feedID = feedID
        self.machine = SubscriptionStateMachine(generation: generation)
        self.connection = connection
        let quoted = JSONValue.quoted(id)
        self.changesPrefix = ByteBuffer(string: "{\"type\":\"changes\",\"sub\":\(quoted),")
        self.messagePrefix = ByteBuffer(string: "{\"type\":\"message\",\"sub\":\(quoted),")
    }

    var cursor: Int64 { machine.cursor }

    /// `{"type":"changes","sub":"<id>","live":true,`: the prefix of the feed's live marker, made
    /// when needed (once per start of the feed) rather than held by every subscriber.
    var liveChangesPrefix: ByteBuffer {
        ByteBuffer(string: "{\"type\":\"changes\",\"sub\":\(JSONValue.quoted(id)),\"live\":true,")
    }
}
