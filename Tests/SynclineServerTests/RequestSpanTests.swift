import Foundation
import InMemoryTracing
import Logging
import NIOConcurrencyHelpers
@testable import SynclineServer
import SynclineCore
import SynclineProtocol
import Testing
import Tracing

/// The process's tracer: `InstrumentationSystem` takes one bootstrap per process, so every test
/// of this target that starts spans records into it; a test picks its own out by session id.
enum TestTracer {
    static let shared: InMemoryTracer = {
        let tracer = InMemoryTracer()
        InstrumentationSystem.bootstrap(tracer)
        return tracer
    }()

    /// The finished spans named `name` whose `attribute` is `value`.
    static func finished(_ name: String, where attribute: String, is value: SpanAttribute) -> [FinishedInMemorySpan] {
        shared.finishedSpans.filter { $0.operationName == name && $0.attributes.get(attribute) == value }
    }
}

@Suite("Request spans (swift-distributed-tracing)")
struct RequestSpanTests {
    typealias H = ConnectionHarness

    @Test("subscribe, snapshot and mutation spans carry the connection's and the request's ids and outcomes")
    func spansOfOneSession() async throws {
        _ = TestTracer.shared
        try await H.with { h in
            h.feed.state.withLockedValue { $0.rows[H.key("alice-checking")] = (1...3).map { H.row($0, account: "alice-checking") } }
            let welcome = try await h.open(clientID: "span-device")
            let session = try #require(welcome["session"]?.stringValue)
            try await h.subscribeLive("tx-span")
            try await h.send(#"{"type":"mutate","mid":7,"name":"transfer","args":{}}"#)
            try await h.mutations.next().reply(.ack(position: 5, result: "null", duplicate: false))
            #expect(try await h.next("ack")["mid"] == .number("7"))
            try await h.send(#"{"type":"mutate","mid":8,"name":"transfer","args":{}}"#)
            try await h.mutations.next().reply(.reject(code: "insufficient_funds", message: "no", details: nil, duplicate: false))
            #expect(try await h.next("reject")["mid"] == .number("8"))

            let subscribes = TestTracer.finished(RequestSpans.subscribe, where: "syncline.session", is: .string(session))
            #expect(subscribes.count == 1)
            let subscribe = try #require(subscribes.first)
            #expect(subscribe.attributes.get("syncline.subscription") == .string("tx-span"))
            #expect(subscribe.attributes.get("syncline.client_id") == .string("span-device"))
            #expect(subscribe.attributes.get("syncline.sub") == .string("alice"))
            #expect(subscribe.attributes.get("syncline.outcome") == .string("snapshot"))
            #expect(subscribe.attributes.get("syncline.feed") == .string(H.key("alice-checking").description))
            #expect(subscribe.kind == .server)

            // One read for the subscription (its sharers named), at the hub's head.
            let snapshots = TestTracer.finished(RequestSpans.snapshot, where: "syncline.subscriptions", is: .stringArray(["tx-span"]))
                .filter { $0.attributes.get("syncline.feed") == .string(H.key("alice-checking").description) }
            #expect(snapshots.count >= 1)
            let snapshot = try #require(snapshots.last)
            #expect(snapshot.attributes.get("syncline.sharers") == .int64(1))
            #expect(snapshot.attributes.get("syncline.position") == .int64(5))
            #expect(snapshot.attributes.get("syncline.outcome") == .string("done"))

            let mutations = TestTracer.finished(RequestSpans.mutation, where: "syncline.session", is: .string(session))
                .sorted { ($0.attributes.get("syncline.mid").map { "\($0)" } ?? "") < ($1.attributes.get("syncline.mid").map { "\($0)" } ?? "") }
            #expect(mutations.count == 2)
            #expect(mutations.map { $0.attributes.get("syncline.mid") } == [.int64(7), .int64(8)])
            #expect(mutations.map { $0.attributes.get("syncline.outcome") } == [.string("ack"), .string("reject")])
            #expect(mutations.first?.attributes.get("syncline.position") == .int64(5))
            #expect(mutations.last?.attributes.get("syncline.reject_code") == .string("insufficient_funds"))
            #expect(mutations.allSatisfy { $0.attributes.get("syncline.mutation") == .string("transfer") })
            #expect(mutations.allSatisfy { $0.status == nil }, "decided mutations are not errors")
        }
    }

    @Test("a subscribe that fails and a mutation the server cannot take end their spans as errors")
    func failedRequestsAreErrorSpans() async throws {
        _ = TestTracer.shared
        try await H.with { h in
            let welcome = try await h.open(clientID: "span-errors")
            let session = try #require(welcome["session"]?.stringValue)
            try await h.send(#"{"type":"subscribe","id":"bad","collection":"transactions","after":"not-a-cursor"}"#)
            #expect(try await h.next("error")["code"]?.stringValue == "bad_request")
            h.mutations.accepting.withLockedValue { $0 = false }
            try await h.send(#"{"type":"mutate","mid":1,"name":"transfer","args":{}}"#)
            #expect(try await h.next("error")["code"]?.stringValue == "unavailable")

            let subscribe = try #require(TestTracer.finished(RequestSpans.subscribe, where: "syncline.session", is: .string(session)).first)
            #expect(subscribe.attributes.get("syncline.outcome") == .string("error"))
            #expect(subscribe.attributes.get("syncline.error") == .string("bad_request"))
            #expect(subscribe.status?.code == .error)
            let mutation = try #require(TestTracer.finished(RequestSpans.mutation, where: "syncline.session", is: .string(session)).first)
            #expect(mutation.attributes.get("syncline.error") == .string("unavailable"))
            #expect(mutation.status?.code == .error)
        }
    }
}

@Suite("JSON log lines")
struct JSONLogHandlerTests {
    @Test("one object per line with time, level, label, message and nested metadata; text escaped")
    func lineShape() throws {
        let line = JSONLogHandler.line(
            time: Date(timeIntervalSince1970: 1_764_610_800.25), level: .notice, label: "syncline",
            message: "quote \" backslash \\ newline \n tab \t bell \u{7} é",
            metadata: ["session": "abc", "n": .stringConvertible(42), "nested": ["list": ["a", "b"]]], source: "SynclineServer")
        #expect(!line.contains("\n"))
        let object = try JSONParser.parse(line)
        #expect(object["time"]?.stringValue == "2025-12-01T17:40:00.250Z")
        #expect(object["level"]?.stringValue == "notice")
        #expect(object["label"]?.stringValue == "syncline")
        #expect(object["message"]?.stringValue == "quote \" backslash \\ newline \n tab \t bell \u{7} é")
        #expect(object["source"]?.stringValue == "SynclineServer")
        #expect(object["metadata"]?["session"]?.stringValue == "abc")
        #expect(object["metadata"]?["n"]?.stringValue == "42")
        #expect(object["metadata"]?["nested"]?["list"] == .array([.string("a"), .string("b")]))
    }

    @Test("the handler merges its own, the provider's and the call's metadata (the call wins)")
    func metadataMerge() throws {
        let lines = NIOLockedValueBox<[String]>([])
        var handler = JSONLogHandler(label: "syncline.test", metadataProvider: .init { ["trace": "t1", "k": "provider"] },
                                     output: JSONLogOutput { line in lines.withLockedValue { $0.append(line) } })
        handler[metadataKey: "k"] = "handler"
        handler[metadataKey: "connection"] = "3"
        handler.logLevel = .debug
        let configured = handler
        var logger = Logger(label: "syncline.test") { _ in configured }
        logger.logLevel = .debug
        logger.debug("one", metadata: ["mid": "9"])
        logger.trace("not at debug level")
        logger.info("two", metadata: ["k": "call"])
        let objects = try lines.withLockedValue { $0 }.map { try JSONParser.parse($0) }
        #expect(objects.count == 2)
        #expect(objects[0]["metadata"] == .object([("connection", "3"), ("k", "provider"), ("mid", "9"), ("trace", "t1")]))
        #expect(objects[1]["metadata"]?["k"]?.stringValue == "call")
        #expect(objects.map { $0["level"]?.stringValue } == ["debug", "info"])
    }
}
