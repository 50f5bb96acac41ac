import NIOConcurrencyHelpers
import SynclineProtocol

/// A mutation that is durably queued: it survives the process and is sent (again) until decided.
public struct PendingMutation: Sendable {
    /// The `mid` it was stored with. (If the server's database was restored, the client renumbers
    /// undecided mutations; ``result`` still answers for this mutation.)
    public let mid: Int64
    /// The mutator's name.
    public let name: String
    /// Its arguments.
    public let args: JSONValue
    let promise: MutationPromise

    /// The mutator's result once committed (`ack`); throws ``MutationRejected`` when rejected and
    /// ``MutationOutcomeExpired`` when its outcome was pruned. Waits as long as it takes (offline
    /// included). If the client is closed first, it throws ``ClientClosed``: the mutation stays queued for the next start.
    public var result: JSONValue {
        get async throws { try await promise.value() }
    }
}

/// The client was closed before the mutation was decided; it stays in the store.
public struct ClientClosed: Error, Sendable, Hashable, CustomStringConvertible {
    /// A constant explanation.
    public var description: String { "the client was closed before the mutation was decided; it stays queued" }
}

/// A one-shot result many tasks can await.
final class MutationPromise: Sendable {
    private struct State {
        var outcome: Result<JSONValue, any Error>?
        var waiters: [CheckedContinuation<JSONValue, any Error>] = []
    }
    private let state = NIOLockedValueBox(State())

    func resolve(_ outcome: Result<JSONValue, any Error>) {
        let waiters = state.withLockedValue { state -> [CheckedContinuation<JSONValue, any Error>] in
            guard state.outcome == nil else { return [] }
            state.outcome = outcome
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(with: outcome) }
    }

    func value() async throws -> JSONValue {
        try await withCheckedThrowingContinuation { continuation in
            let done = state.withLockedValue { state -> Result<JSONValue, any Error>? in
                if let outcome = state.outcome { return outcome }
                state.waiters.append(continuation)
                return nil
            }
            if let done { continuation.resume(with: done) }
        }
    }
}
