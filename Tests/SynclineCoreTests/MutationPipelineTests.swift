import SynclineCore
import SynclineProtocol
import Testing

@Suite("Mutation pipeline")
struct MutationPipelineTests {
    static let ack5 = MutationOutcome.ack(position: 5, result: "null", duplicate: false)
    static let reject = MutationOutcome.reject(code: "invalid", message: "no", details: nil, duplicate: false)

    @Test("answers leave in the order the mutations were sent")
    func inOrder() {
        var pipeline = MutationPipeline(limit: 8)
        let r1 = pipeline.submit(mid: 1)
        #expect(r1)
        let r2 = pipeline.submit(mid: 2)
        #expect(r2)
        pipeline.decided(mid: 2, Self.reject)
        #expect(pipeline.release { _ in true }.isEmpty)  // 1 is still undecided
        pipeline.decided(mid: 1, .error(.unavailable, message: "x", retryAfterMS: nil))
        let r3 = pipeline.release { _ in true }
        #expect(r3.map(\.mid) == [1, 2])
        #expect(pipeline.isEmpty)
    }

    @Test("an ack waits for delivery of its position, and holds back what follows")
    func ackWaitsForDelivery() {
        var pipeline = MutationPipeline(limit: 8)
        _ = pipeline.submit(mid: 1)
        _ = pipeline.submit(mid: 2)
        pipeline.decided(mid: 1, Self.ack5)
        pipeline.decided(mid: 2, Self.reject)
        let r4 = pipeline.release { $0 <= 4 }
        #expect(r4.isEmpty)
        #expect(pipeline.blockingPosition == 5)
        let released = pipeline.release { $0 <= 5 }
        #expect(released.map(\.mid) == [1, 2])
        #expect(released.first?.outcome == Self.ack5)
        #expect(pipeline.blockingPosition == nil)
    }

    @Test("the in-flight limit refuses, and frees up as answers leave")
    func limit() {
        var pipeline = MutationPipeline(limit: 2)
        let r5 = pipeline.submit(mid: 1)
        #expect(r5)
        let r6 = pipeline.submit(mid: 2)
        #expect(r6)
        let r7 = pipeline.submit(mid: 3)
        #expect(!r7)
        pipeline.decided(mid: 1, Self.reject)
        _ = pipeline.release { _ in true }
        let r8 = pipeline.submit(mid: 3)
        #expect(r8)
        #expect(pipeline.count == 2)
    }

    @Test("the same mid twice in flight: outcomes fill the entries in order")
    func duplicateInFlight() {
        var pipeline = MutationPipeline(limit: 4)
        _ = pipeline.submit(mid: 7)
        _ = pipeline.submit(mid: 7)
        pipeline.decided(mid: 7, Self.ack5)
        pipeline.decided(mid: 7, .ack(position: 5, result: "null", duplicate: true))
        let released = pipeline.release { _ in true }
        #expect(released.map(\.outcome) == [Self.ack5, .ack(position: 5, result: "null", duplicate: true)])
    }

    @Test("answers render as protocol messages")
    func messages() {
        #expect(Self.ack5.message(mid: 3, epoch: "e") == #"{"type":"ack","mid":3,"cursor":"e.5","result":null}"#)
        #expect(MutationOutcome.ack(position: 9, result: #"{"a":1}"#, duplicate: true).message(mid: 1, epoch: "e")
            == #"{"type":"ack","mid":1,"cursor":"e.9","result":{"a":1},"duplicate":true}"#)
        #expect(MutationOutcome.reject(code: "insufficient_funds", message: "low", details: #"{"balance":1}"#, duplicate: false)
            .message(mid: 2, epoch: "e") == #"{"type":"reject","mid":2,"code":"insufficient_funds","message":"low","details":{"balance":1}}"#)
        #expect(MutationOutcome.error(.outOfOrder, message: "m", retryAfterMS: nil).message(mid: 4, epoch: "e")
            == #"{"type":"error","code":"out_of_order","message":"m","ref":4}"#)
    }

    @Test("a long-lived pipeline does not grow")
    func compacts() {
        var pipeline = MutationPipeline(limit: 4)
        for mid in Int64(1)...10_000 {
            let r9 = pipeline.submit(mid: mid)
            #expect(r9)
            pipeline.decided(mid: mid, Self.reject)
            let r10 = pipeline.release { _ in true }
            #expect(r10.count == 1)
        }
        #expect(pipeline.isEmpty)
    }
}
