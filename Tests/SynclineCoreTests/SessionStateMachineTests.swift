import SynclineCore
import SynclineProtocol
import Testing

private typealias Action = SessionStateMachine.Action

private func hello(_ clientID: String = "c1", token: String? = "tok") -> ClientMessage {
    .hello(.init(clientID: clientID, token: token))
}

private func subscribe(_ id: String, collection: String = "todos") -> ClientMessage.Subscribe {
    .init(id: id, target: .collection(name: collection, filter: [:]), after: nil)
}

/// The close code of a `[.close]` answer, else nil.
private func closeCode(_ actions: [Action]) -> CloseCode? {
    guard actions.count == 1, case .close(let code, _) = actions[0] else { return nil }
    return code
}

/// The JSON sent by a `.send` action.
private func sent(_ action: Action) throws -> JSONValue {
    guard case .send(let text) = action else {
        Issue.record("expected .send, got \(action)")
        throw SentError()
    }
    return try JSONParser.parse(text)
}

private struct SentError: Error {}

/// A machine that received hello and was authenticated as `sub`.
private func openMachine(limits: SessionStateMachine.Limits = .init()) -> SessionStateMachine {
    var machine = SessionStateMachine(limits: limits)
    _ = machine.received(hello())
    _ = machine.authenticated(sub: "u1")
    return machine
}

@Suite("SessionStateMachine")
struct SessionStateMachineTests {
    // MARK: - hello

    @Test func startsAwaitingHello() {
        let machine = SessionStateMachine()
        #expect(machine.state == .awaitingHello)
        #expect(machine.subscriptionIDs.isEmpty)
        #expect(machine.limits.maximumSubscriptions == 100)
        #expect(machine.limits.maximumPendingMessages == 64)
    }

    @Test(arguments: [
        ClientMessage.ping(t: nil),
        .subscribe(subscribe("s1")),
        .unsubscribe(id: "s1"),
        .mutate(.init(mid: 1, name: "m", args: .object([]))),
        .auth(token: "t"),
    ])
    func firstMessageNotHelloCloses4400(_ message: ClientMessage) {
        var machine = SessionStateMachine()
        #expect(closeCode(machine.received(message)) == .protocolViolation)
        #expect(CloseCode.protocolViolation.rawValue == 4400)
        #expect(machine.state == .closed)
        // A hello after that is ignored.
        #expect(machine.received(hello()).isEmpty)
        #expect(machine.state == .closed)
    }

    @Test func firstMessageInvalidCloses4400() {
        var machine = SessionStateMachine()
        let actions = machine.receivedInvalid(ClientMessageError(code: .badRequest, message: "message is not valid JSON"))
        #expect(closeCode(actions) == .protocolViolation)
        #expect(machine.state == .closed)
    }

    @Test func helloAsksForAuthentication() {
        var machine = SessionStateMachine()
        #expect(machine.received(hello("dev-1", token: "jwt")) == [.authenticate(token: "jwt", clientID: "dev-1")])
        #expect(machine.state == .authenticating(clientID: "dev-1"))
    }

    @Test func helloWithoutTokenAuthenticatesWithNil() {
        var machine = SessionStateMachine()
        #expect(machine.received(hello("dev-1", token: nil)) == [.authenticate(token: nil, clientID: "dev-1")])
    }

    @Test func authenticatedSendsWelcomeAndOpens() {
        var machine = SessionStateMachine()
        _ = machine.received(hello("dev-1"))
        #expect(machine.authenticated(sub: "user-9") == [.sendWelcome(sub: "user-9", clientID: "dev-1")])
        #expect(machine.state == .open(sub: "user-9", clientID: "dev-1"))
        // Only once.
        #expect(machine.authenticated(sub: "user-9").isEmpty)
        #expect(machine.state == .open(sub: "user-9", clientID: "dev-1"))
    }

    @Test func authenticatedBeforeHelloDoesNothing() {
        var machine = SessionStateMachine()
        #expect(machine.authenticated(sub: "u1").isEmpty)
        #expect(machine.state == .awaitingHello)
    }

    @Test func secondHelloWhileAuthenticatingCloses4400() {
        var machine = SessionStateMachine()
        _ = machine.received(hello())
        #expect(closeCode(machine.received(hello())) == .protocolViolation)
        #expect(machine.state == .closed)
        #expect(machine.authenticated(sub: "u1").isEmpty)
        #expect(machine.state == .closed)
    }

    @Test func secondHelloWhenOpenCloses4400() {
        var machine = openMachine()
        #expect(closeCode(machine.received(hello("c2"))) == .protocolViolation)
        #expect(machine.state == .closed)
        #expect(machine.received(.ping(t: nil)).isEmpty)
    }

    // MARK: - messages held during authentication

    @Test func messagesDuringAuthenticationAreReplayedInOrderAfterWelcome() throws {
        var machine = SessionStateMachine()
        _ = machine.received(hello("c1"))
        let s1 = subscribe("s1")
        let mutate = ClientMessage.Mutate(mid: 1, name: "add", args: .object([("x", .number("1.50"))]))
        #expect(machine.received(.subscribe(s1)).isEmpty)
        #expect(machine.received(.ping(t: .number("1"))).isEmpty)
        #expect(machine.receivedInvalid(ClientMessageError(code: .unknownType, message: "unknown message type 'x'", type: "x")).isEmpty)
        #expect(machine.received(.mutate(mutate)).isEmpty)
        #expect(machine.receivedInvalid(ClientMessageError(code: .badRequest, message: "bad mid", ref: .number("1.5"), type: "mutate")).isEmpty)
        #expect(machine.received(.unsubscribe(id: "nope")).isEmpty)
        #expect(machine.received(.subscribe(s1)).isEmpty)
        #expect(machine.received(.auth(token: "t2")).isEmpty)
        #expect(machine.state == .authenticating(clientID: "c1"))
        #expect(machine.subscriptionIDs.isEmpty)

        let actions = machine.authenticated(sub: "u1")
        #expect(machine.state == .open(sub: "u1", clientID: "c1"))
        try #require(actions.count == 9)
        #expect(actions[0] == .sendWelcome(sub: "u1", clientID: "c1"))
        #expect(actions[1] == .subscribe(s1))
        #expect(actions[2] == .send(#"{"type":"pong","t":1}"#))
        let unknown = try sent(actions[3])
        #expect(unknown["type"] == .string("error"))
        #expect(unknown["code"] == .string("unknown_type"))
        #expect(unknown["ref"] == nil)
        #expect(actions[4] == .mutate(mutate))
        let badMid = try sent(actions[5])
        #expect(badMid["code"] == .string("bad_request"))
        #expect(badMid["ref"] == .number("1.5"))
        let notFound = try sent(actions[6])
        #expect(notFound["code"] == .string("not_found"))
        #expect(notFound["ref"] == .string("nope"))
        let duplicate = try sent(actions[7])
        #expect(duplicate["code"] == .string("duplicate_id"))
        #expect(duplicate["ref"] == .string("s1"))
        #expect(actions[8] == .reauthenticate(token: "t2"))
        #expect(machine.subscriptionIDs == ["s1"])

        // The queue is drained: nothing is replayed twice.
        #expect(machine.authenticated(sub: "u1").isEmpty)
    }

    @Test func pendingOverflowCloses1008() {
        var machine = SessionStateMachine(limits: .init(maximumPendingMessages: 3))
        _ = machine.received(hello())
        #expect(machine.received(.ping(t: nil)).isEmpty)
        #expect(machine.receivedInvalid(ClientMessageError(code: .badRequest, message: "x")).isEmpty)
        #expect(machine.received(.ping(t: nil)).isEmpty)
        #expect(closeCode(machine.received(.ping(t: nil))) == .policyViolation)
        #expect(CloseCode.policyViolation.rawValue == 1008)
        #expect(machine.state == .closed)
        // The held messages die with the session.
        #expect(machine.authenticated(sub: "u1").isEmpty)
    }

    @Test func pendingOverflowByInvalidMessagesCloses1008() {
        var machine = SessionStateMachine(limits: .init(maximumPendingMessages: 2))
        _ = machine.received(hello())
        let invalid = ClientMessageError(code: .badRequest, message: "x")
        #expect(machine.receivedInvalid(invalid).isEmpty)
        #expect(machine.receivedInvalid(invalid).isEmpty)
        #expect(closeCode(machine.receivedInvalid(invalid)) == .policyViolation)
        #expect(machine.state == .closed)
    }

    @Test func defaultPendingLimitHolds64Messages() {
        var machine = SessionStateMachine()
        _ = machine.received(hello())
        for i in 0..<64 {
            #expect(machine.received(.ping(t: .number("\(i)"))).isEmpty)
        }
        #expect(closeCode(machine.received(.ping(t: nil))) == .policyViolation)
    }

    @Test func pendingQueueAtTheLimitReplaysFully() {
        var machine = SessionStateMachine(limits: .init(maximumPendingMessages: 3))
        _ = machine.received(hello())
        for i in 1...3 { _ = machine.received(.ping(t: .number("\(i)"))) }
        let actions = machine.authenticated(sub: "u1")
        #expect(actions == [
            .sendWelcome(sub: "u1", clientID: "c1"),
            .send(#"{"type":"pong","t":1}"#),
            .send(#"{"type":"pong","t":2}"#),
            .send(#"{"type":"pong","t":3}"#),
        ])
    }

    // MARK: - authentication failure and closing

    @Test(arguments: [CloseCode.tokenInvalid, .forbidden])
    func authenticationFailedClosesWithTheGivenCode(_ code: CloseCode) {
        var machine = SessionStateMachine()
        _ = machine.received(hello())
        _ = machine.received(.subscribe(subscribe("s1")))
        #expect(machine.authenticationFailed(code, reason: "nope") == [.close(code, reason: "nope")])
        #expect(machine.state == .closed)
        #expect(machine.authenticated(sub: "u1").isEmpty)
        #expect(machine.authenticationFailed(code, reason: "again").isEmpty)
    }

    @Test func nothingHappensAfterClose() {
        var machine = openMachine()
        _ = machine.received(.subscribe(subscribe("s1")))
        machine.closed()
        #expect(machine.state == .closed)
        #expect(machine.received(.subscribe(subscribe("s2"))).isEmpty)
        #expect(machine.received(.ping(t: nil)).isEmpty)
        #expect(machine.received(hello()).isEmpty)
        #expect(machine.received(.unsubscribe(id: "s1")).isEmpty)
        #expect(machine.receivedInvalid(ClientMessageError(code: .badRequest, message: "x")).isEmpty)
        #expect(machine.authenticated(sub: "u1").isEmpty)
        #expect(machine.authenticationFailed(.tokenInvalid, reason: "x").isEmpty)
        #expect(machine.state == .closed)
    }

    @Test func closedWhileAuthenticatingDropsPending() {
        var machine = SessionStateMachine()
        _ = machine.received(hello())
        _ = machine.received(.ping(t: nil))
        machine.closed()
        #expect(machine.authenticated(sub: "u1").isEmpty)
        #expect(machine.state == .closed)
    }

    // MARK: - open session

    @Test func subscribeAndDuplicateID() throws {
        var machine = openMachine()
        let s1 = subscribe("s1")
        #expect(machine.received(.subscribe(s1)) == [.subscribe(s1)])
        #expect(machine.subscriptionIDs == ["s1"])
        let actions = machine.received(.subscribe(subscribe("s1", collection: "other")))
        try #require(actions.count == 1)
        let error = try sent(actions[0])
        #expect(error["type"] == .string("error"))
        #expect(error["code"] == .string("duplicate_id"))
        #expect(error["ref"] == .string("s1"))
        #expect(machine.subscriptionIDs == ["s1"])
    }

    @Test func unsubscribeKnownAndUnknown() throws {
        var machine = openMachine()
        _ = machine.received(.subscribe(subscribe("s1")))
        #expect(machine.received(.unsubscribe(id: "s1")) == [.unsubscribe(id: "s1")])
        #expect(machine.subscriptionIDs.isEmpty)
        let again = machine.received(.unsubscribe(id: "s1"))
        try #require(again.count == 1)
        let error = try sent(again[0])
        #expect(error["code"] == .string("not_found"))
        #expect(error["ref"] == .string("s1"))
        // The id is free again.
        #expect(machine.received(.subscribe(subscribe("s1"))) == [.subscribe(subscribe("s1"))])
    }

    @Test func unsubscribeNeverSubscribedIsNotFound() throws {
        var machine = openMachine()
        let actions = machine.received(.unsubscribe(id: "ghost"))
        try #require(actions.count == 1)
        let error = try sent(actions[0])
        #expect(error["code"] == .string("not_found"))
        #expect(error["ref"] == .string("ghost"))
    }

    @Test func subscriptionEndedFreesTheID() {
        var machine = openMachine()
        _ = machine.received(.subscribe(subscribe("s1")))
        machine.subscriptionEnded(id: "s1")
        #expect(machine.subscriptionIDs.isEmpty)
        #expect(machine.received(.subscribe(subscribe("s1"))) == [.subscribe(subscribe("s1"))])
    }

    @Test func subscriptionLimit() throws {
        var machine = openMachine(limits: .init(maximumSubscriptions: 2))
        #expect(machine.received(.subscribe(subscribe("s1"))) == [.subscribe(subscribe("s1"))])
        #expect(machine.received(.subscribe(subscribe("s2"))) == [.subscribe(subscribe("s2"))])
        let actions = machine.received(.subscribe(subscribe("s3")))
        try #require(actions.count == 1)
        let error = try sent(actions[0])
        #expect(error["type"] == .string("error"))
        #expect(error["code"] == .string("rate_limited"))
        #expect(error["ref"] == .string("s3"))
        #expect(machine.subscriptionIDs == ["s1", "s2"])
        // Duplicate is reported as such even at the limit.
        let duplicate = machine.received(.subscribe(subscribe("s1")))
        try #require(duplicate.count == 1)
        #expect(try sent(duplicate[0])["code"] == .string("duplicate_id"))
        // Room again after an unsubscribe.
        _ = machine.received(.unsubscribe(id: "s1"))
        #expect(machine.received(.subscribe(subscribe("s3"))) == [.subscribe(subscribe("s3"))])
    }

    @Test(arguments: [
        (JSONValue?.none, #"{"type":"pong"}"#),
        (.number("1712345678901.50"), #"{"type":"pong","t":1712345678901.50}"#),
        (.string("a\"b"), #"{"type":"pong","t":"a\"b"}"#),
        (.object([("k", .array([.null, .bool(true)]))]), #"{"type":"pong","t":{"k":[null,true]}}"#),
        (.null, #"{"type":"pong","t":null}"#),
    ])
    func pingIsAnsweredWithPongEchoingT(_ t: JSONValue?, _ expected: String) {
        var machine = openMachine()
        #expect(machine.received(.ping(t: t)) == [.send(expected)])
    }

    @Test func mutateAndAuthArePassedOn() {
        var machine = openMachine()
        let mutate = ClientMessage.Mutate(mid: 3, name: "transfer", args: .object([("amount", .number("1250.00"))]))
        #expect(machine.received(.mutate(mutate)) == [.mutate(mutate)])
        #expect(machine.received(.auth(token: "fresh")) == [.reauthenticate(token: "fresh")])
        #expect(machine.state == .open(sub: "u1", clientID: "c1"))
    }

    @Test func invalidMessageWhenOpenIsAnsweredAndKeepsTheSessionOpen() throws {
        var machine = openMachine()
        let actions = machine.receivedInvalid(ClientMessageError(code: .badRequest, message: "'mid' must be an integer ≥ 1", ref: .string("1"), type: "mutate"))
        try #require(actions.count == 1)
        let error = try sent(actions[0])
        #expect(error["code"] == .string("bad_request"))
        #expect(error["message"] == .string("'mid' must be an integer ≥ 1"))
        #expect(error["ref"] == .string("1"))
        #expect(machine.state == .open(sub: "u1", clientID: "c1"))
        let unknown = machine.receivedInvalid(ClientMessageError(code: .unknownType, message: "unknown", type: "zap"))
        #expect(try sent(unknown[0])["code"] == .string("unknown_type"))
        #expect(machine.state == .open(sub: "u1", clientID: "c1"))
    }

    @Test func decodedFramesDriveTheMachine() throws {
        // End to end with the real decoder: what a connection handler does per frame.
        var machine = SessionStateMachine()
        func feed(_ text: String) -> [Action] {
            do throws(ClientMessageError) {
                return machine.received(try ClientMessage.decode(text))
            } catch {
                return machine.receivedInvalid(error)
            }
        }
        #expect(feed(#"{"type":"hello","client_id":"web_1"}"#) == [.authenticate(token: nil, clientID: "web_1")])
        #expect(feed(#"{"type":"mutate","mid":1.5,"name":"x","args":{}}"#).isEmpty)
        let actions = machine.authenticated(sub: "u7")
        try #require(actions.count == 2)
        #expect(actions[0] == .sendWelcome(sub: "u7", clientID: "web_1"))
        let error = try sent(actions[1])
        #expect(error["code"] == .string("bad_request"))
        #expect(error["ref"] == .number("1.5"))
        let garbage = feed("{not json")
        try #require(garbage.count == 1)
        #expect(try sent(garbage[0])["code"] == .string("bad_request"))
        #expect(machine.state == .open(sub: "u7", clientID: "web_1"))
    }
}
