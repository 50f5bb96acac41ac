import SynclineCore
import SynclineProtocol

/// The input is a script: its first byte picks the limits, every following byte an event for
/// `SessionStateMachine` (a message, an invalid frame, the token check's outcome, a subscription
/// that ended, the connection closing), some with argument bytes; an event may also carry a
/// length-prefixed frame that goes through `ClientMessage.decode` first, as in `SyncConnection`.
/// After each event `Checker` verifies the machine's invariants against what it has seen.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSession(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var script = Script(UnsafeBufferPointer(start: data, count: size))
    guard let first = script.next() else { return 0 }
    let limits = SessionStateMachine.Limits(maximumSubscriptions: 1 + Int(first & 7), maximumPendingMessages: 1 + Int(first >> 3 & 7))
    var checker = Checker(SessionStateMachine(limits: limits))
    while let op = script.next() {
        switch op % 11 {
        case 0: checker.receive(.hello(.init(clientID: "c\(script.byte() % 3)", token: script.byte() & 1 == 0 ? nil : "t")))
        case 1: checker.receive(.subscribe(.init(id: script.id(), target: script.byte() & 1 == 0 ? .topic("t") : .collection(name: "c", filter: [:]), after: nil)))
        case 2: checker.receive(.unsubscribe(id: script.id()))
        case 3: checker.receive(.mutate(.init(mid: Int64(script.byte()) + 1, name: "m", args: .object([]))))
        case 4: checker.receive(.auth(token: "t\(script.byte())"))
        case 5: checker.receive(.ping(t: script.byte() & 1 == 0 ? nil : .number("\(script.byte())")))
        case 6: checker.receiveInvalid(ClientMessageError(code: .badRequest, message: "bad", ref: .string(script.id())))
        case 7: checker.authenticated(sub: "u\(script.byte() % 2)")
        case 8: checker.authenticationFailed(script.byte() & 1 == 0 ? .tokenInvalid : .forbidden)
        case 9:
            if script.byte() & 3 == 0 { checker.closed() } else { checker.subscriptionEnded(id: script.id()) }
        default:
            let frame = script.chunk()
            do throws(ClientMessageError) {
                checker.receive(try frame.withUnsafeBufferPointer { buffer throws(ClientMessageError) in try ClientMessage.decode(buffer) })
            } catch {
                checker.receiveInvalid(error)
            }
        }
    }
    return 0
}

/// Reads the fuzzer's bytes; past the end every read is 0.
struct Script {
    let bytes: UnsafeBufferPointer<UInt8>
    var index = 0
    init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    mutating func next() -> UInt8? {
        guard index < bytes.count else { return nil }
        defer { index += 1 }
        return bytes[index]
    }
    mutating func byte() -> UInt8 { next() ?? 0 }
    /// One of a few subscription ids, so that duplicates and unknown ids happen.
    mutating func id() -> String { "s\(byte() % 5)" }
    /// A length byte, then that many bytes.
    mutating func chunk() -> [UInt8] {
        let count = min(Int(byte()), bytes.count - index)
        defer { index += count }
        return Array(bytes[index..<index + count])
    }
}

/// Wraps the machine: applies each event and checks every invariant on the actions it returned.
struct Checker {
    var machine: SessionStateMachine
    /// What the checker expects the machine to hold back while the token is verified.
    var pending: [Result<ClientMessage, ClientMessageError>] = []
    /// Subscription ids the actions so far have opened and not closed.
    var subscriptions: Set<String> = []
    var welcomed = false
    var authenticateAsked = false

    init(_ machine: SessionStateMachine) { self.machine = machine }

    mutating func receive(_ message: ClientMessage) {
        let before = machine.state
        let actions = machine.received(message)
        switch before {
        case .closed:
            expect(actions.isEmpty, "acted after close: \(actions)")
        case .awaitingHello:
            if case .hello(let hello) = message {
                expect(!authenticateAsked && actions == [.authenticate(token: hello.token, clientID: hello.clientID)], "hello answered with \(actions)")
                expect(machine.state == .authenticating(clientID: hello.clientID), "after hello: \(machine.state)")
                authenticateAsked = true
            } else {
                expectClose(actions, .protocolViolation)
            }
        case .authenticating:
            if case .hello = message {
                expectClose(actions, .protocolViolation)
            } else if pending.count == machine.limits.maximumPendingMessages {
                expectClose(actions, .policyViolation)
            } else {
                expect(actions.isEmpty && machine.state == before, "not held back while authenticating: \(actions)")
                pending.append(.success(message))
            }
        case .open:
            applyOpen(message, actions)
        }
        checkState()
    }

    mutating func receiveInvalid(_ error: ClientMessageError) {
        let before = machine.state
        let actions = machine.receivedInvalid(error)
        switch before {
        case .closed: expect(actions.isEmpty, "acted after close")
        case .awaitingHello: expectClose(actions, .protocolViolation)
        case .authenticating:
            if pending.count == machine.limits.maximumPendingMessages {
                expectClose(actions, .policyViolation)
            } else {
                expect(actions.isEmpty, "invalid frame not held back")
                pending.append(.failure(error))
            }
        case .open:
            expect(actions.count == 1, "invalid frame answered with \(actions)")
            expectError(actions.first, error.code, ref: error.ref)
        }
        checkState()
    }

    mutating func authenticated(sub: String) {
        let before = machine.state
        let actions = machine.authenticated(sub: sub)
        guard case .authenticating(let clientID) = before else {
            expect(actions.isEmpty && machine.state == before, "authenticated in \(before): \(actions)")
            return checkState()
        }
        expect(!welcomed && actions.first == .sendWelcome(sub: sub, clientID: clientID), "welcome missing: \(actions)")
        welcomed = true
        // The held-back messages are answered in the order they arrived, one action each, as if
        // they came now (none of them can be a hello: that closes at once).
        var rest = actions.dropFirst()
        let replay = pending
        pending = []
        for item in replay {
            guard let action = rest.first else { fail("replay ended early: \(actions)") }
            rest = rest.dropFirst()
            switch item {
            case .success(let message): applyOpen(message, [action])
            case .failure(let error): expectError(action, error.code, ref: error.ref)
            }
        }
        expect(rest.isEmpty, "actions left after the replay: \(Array(rest))")
        expect(machine.state == .open(sub: sub, clientID: clientID), "state after welcome: \(machine.state)")
        checkState()
    }

    mutating func authenticationFailed(_ code: CloseCode) {
        let before = machine.state
        let actions = machine.authenticationFailed(code, reason: "no")
        if before == .closed {
            expect(actions.isEmpty, "closed twice")
        } else {
            expect(actions == [.close(code, reason: "no")], "authentication failure answered with \(actions)")
        }
        pending = []
        checkState()
    }

    mutating func subscriptionEnded(id: String) {
        machine.subscriptionEnded(id: id)
        subscriptions.remove(id)
        checkState()
    }

    mutating func closed() {
        machine.closed()
        pending = []
        expect(machine.state == .closed, "closed() left \(machine.state)")
        checkState()
    }

    /// One message in the open state: exactly one action, of the message's kind.
    private mutating func applyOpen(_ message: ClientMessage, _ actions: [SessionStateMachine.Action]) {
        guard actions.count == 1, let action = actions.first else { fail("\(message) answered with \(actions)") }
        switch message {
        case .hello:
            expect(action == .close(.protocolViolation, reason: "hello sent twice"), "second hello: \(action)")
        case .subscribe(let request):
            if subscriptions.contains(request.id) {
                expectError(action, .duplicateID, ref: .string(request.id))
            } else if subscriptions.count >= machine.limits.maximumSubscriptions {
                expectError(action, .rateLimited, ref: .string(request.id))
            } else {
                expect(action == .subscribe(request), "subscribe answered with \(action)")
                subscriptions.insert(request.id)
            }
        case .unsubscribe(let id):
            if subscriptions.remove(id) != nil {
                expect(action == .unsubscribe(id: id), "unsubscribe answered with \(action)")
            } else {
                expectError(action, .notFound, ref: .string(id))
            }
        case .mutate(let mutate):
            expect(action == .mutate(mutate), "mutate answered with \(action)")
        case .auth(let token):
            expect(action == .reauthenticate(token: token), "auth answered with \(action)")
        case .ping(let t):
            guard case .send(let text) = action, let reply = try? JSONParser.parse(text),
                  reply["type"] == .string("pong"), reply["t"] == t
            else { fail("ping \(String(describing: t)) answered with \(action)") }
        }
    }

    /// The machine's own state agrees with what its actions said.
    private func checkState() {
        expect(machine.subscriptionIDs == subscriptions, "subscription ids \(machine.subscriptionIDs), actions said \(subscriptions)")
        expect(machine.subscriptionIDs.count <= machine.limits.maximumSubscriptions, "over the subscription limit")
        switch machine.state {
        case .awaitingHello: expect(!authenticateAsked, "back to awaiting hello")
        case .authenticating: expect(authenticateAsked && !welcomed, "authenticating after welcome")
        case .open: expect(welcomed, "open without welcome")
        case .closed: break
        }
    }

    private func expectClose(_ actions: [SessionStateMachine.Action], _ code: CloseCode) {
        guard actions.count == 1, case .close(let actual, _) = actions[0], actual == code else { fail("expected close \(code), got \(actions)") }
        expect(machine.state == .closed, "closed without .closed state")
    }

    private func expectError(_ action: SessionStateMachine.Action?, _ code: ErrorCode, ref: JSONValue?) {
        guard case .send(let text)? = action, let reply = try? JSONParser.parse(text),
              reply["type"] == .string("error"), reply["code"] == .string(code.rawValue), reply["ref"] == ref,
              reply["message"]?.stringValue != nil
        else { fail("expected error \(code) ref \(String(describing: ref)), got \(String(describing: action))") }
    }

    private func expect(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { fail(message()) }
    }

    private func fail(_ message: String) -> Never {
        fatalError("session invariant: \(message)")
    }
}
