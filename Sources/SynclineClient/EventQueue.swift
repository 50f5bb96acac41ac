import NIOConcurrencyHelpers

/// A bounded single-consumer queue: when a push finds `limit` elements waiting, `overflow` replaces
/// them (e.g. with one `.resynced(rows)`), so a consumer that falls behind costs bounded memory.
final class EventQueue<Element: Sendable>: Sendable {
    private struct State {
        var items: [Element] = []
        var head = 0
        var waiter: CheckedContinuation<Element?, Never>?
        var finished = false
    }

    private let state = NIOLockedValueBox(State())
    let limit: Int
    private let overflow: @Sendable ([Element]) -> [Element]

    init(limit: Int, overflow: @escaping @Sendable ([Element]) -> [Element]) {
        self.limit = max(limit, 1)
        self.overflow = overflow
    }

    func push(_ element: Element) {
        let waiter: CheckedContinuation<Element?, Never>? = state.withLockedValue { state in
            guard !state.finished else { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            if state.items.count - state.head >= limit {
                let waiting = Array(state.items[state.head...])
                state.items = overflow(waiting + [element])
                state.head = 0
            } else {
                state.items.append(element)
            }
            return nil
        }
        waiter?.resume(returning: element)
    }

    func finish() {
        let waiter = state.withLockedValue { state -> CheckedContinuation<Element?, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    func next() async -> Element? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Element?, Never>) in
                let ready: Element?? = state.withLockedValue { state in
                    if state.head < state.items.count {
                        let element = state.items[state.head]
                        state.head += 1
                        if state.head > 64, state.head * 2 > state.items.count {
                            state.items.removeFirst(state.head)
                            state.head = 0
                        }
                        return .some(element)
                    }
                    if state.finished || Task.isCancelled { return .some(nil) }
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            finish()
        }
    }
}

/// An `AsyncSequence` of a client's events (live query changes, topic messages, status, outcomes).
/// Bounded: see where each is made for what a consumer that falls behind gets instead.
public struct SynclineEvents<Element: Sendable>: AsyncSequence, Sendable {
    let queue: EventQueue<Element>

    /// The iterator; one consumer per sequence.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let queue: EventQueue<Element>
        /// The next event; nil once the source ended (client closed, query unsubscribed) or the task was cancelled.
        public mutating func next() async -> Element? { await queue.next() }
    }

    /// Starts iterating.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(queue: queue) }
}

/// The shell's inbox: API calls and timers push without waiting; socket messages wait while
/// `limit` are unprocessed, so a fast server meets TCP backpressure instead of unbounded memory.
final class InputQueue<Element: Sendable>: Sendable {
    private struct State {
        var items: [Element] = []
        var head = 0
        var waiter: CheckedContinuation<Element, Never>?
        var producers: [CheckedContinuation<Void, Never>] = []
        var released = false
    }

    private let state = NIOLockedValueBox(State())
    private let limit: Int

    init(limit: Int = 256) { self.limit = limit }

    func push(_ element: Element) {
        let waiter = state.withLockedValue { state -> CheckedContinuation<Element, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.items.append(element)
            return nil
        }
        waiter?.resume(returning: element)
    }

    /// Pushes, then waits while the queue is over its limit.
    func pushWaiting(_ element: Element) async {
        push(element)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let full = state.withLockedValue { state -> Bool in
                guard !state.released, state.items.count - state.head > limit else { return false }
                state.producers.append(continuation)
                return true
            }
            if !full { continuation.resume() }
        }
    }

    /// Lets every waiting producer go (the client is closing: nothing will drain the queue).
    func releaseProducers() {
        let producers = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
            state.released = true
            defer { state.producers = [] }
            return state.producers
        }
        for producer in producers { producer.resume() }
    }

    /// Whether an element is waiting (the loop commits its store writes when none is).
    var isEmpty: Bool { state.withLockedValue { $0.head >= $0.items.count } }

    func next() async -> Element {
        await withCheckedContinuation { (continuation: CheckedContinuation<Element, Never>) in
            let (ready, wake) = state.withLockedValue { state -> (Element?, [CheckedContinuation<Void, Never>]) in
                guard state.head < state.items.count else {
                    state.waiter = continuation
                    return (nil, [])
                }
                let element = state.items[state.head]
                state.head += 1
                if state.head > 64, state.head * 2 > state.items.count {
                    state.items.removeFirst(state.head)
                    state.head = 0
                }
                var wake: [CheckedContinuation<Void, Never>] = []
                if state.items.count - state.head <= limit / 2 {
                    wake = state.producers
                    state.producers = []
                }
                return (element, wake)
            }
            for producer in wake { producer.resume() }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
