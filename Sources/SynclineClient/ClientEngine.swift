import Foundation
import Logging
import NIOConcurrencyHelpers
import SynclineProtocol

/// The I/O shell around ``ClientCore``: one task that takes inputs one at a time, asks the core
/// what to do, and does it in order (a store write completes before the actions after it).
final class ClientEngine: Sendable {
    private let url: String
    private let tokenProvider: @Sendable () async throws -> String
    private let store: any ClientStore
    private let configuration: SynclineClient.Configuration
    private let inbox: InputQueue<ClientInput>
    private let statusBox: NIOLockedValueBox<ClientStatus>
    private let statusQueues: NIOLockedValueBox<[EventQueue<ClientStatus>]>
    private let outcomes: EventQueue<MutationOutcome>
    private let errors: EventQueue<SynclineClientError>
    private let start = ContinuousClock.now

    init(url: String, tokenProvider: @escaping @Sendable () async throws -> String, store: any ClientStore,
         configuration: SynclineClient.Configuration, inbox: InputQueue<ClientInput>, statusBox: NIOLockedValueBox<ClientStatus>,
         statusQueues: NIOLockedValueBox<[EventQueue<ClientStatus>]>, outcomes: EventQueue<MutationOutcome>,
         errors: EventQueue<SynclineClientError>) {
        self.url = url
        self.tokenProvider = tokenProvider
        self.store = store
        self.configuration = configuration
        self.inbox = inbox
        self.statusBox = statusBox
        self.statusQueues = statusQueues
        self.outcomes = outcomes
        self.errors = errors
    }

    /// State only the loop task touches.
    private final class Loop {
        var core: ClientCore
        var connections: [Int: SocketConnection] = [:]
        var timers: [ClientTimer: Task<Void, Never>] = [:]
        var queries: [String: LiveQuery] = [:]
        var topics: [String: TopicSubscription] = [:]
        var promises: [Int: MutationPromise] = [:]
        var pendingCommands: [ClientInput] = []
        var loaded = false
        var stopped = false
        var firstMutationSent = false
        /// Store writes not yet committed: feed writes wait for the inbox to drain, so a burst of
        /// changes costs one fsync; anything that must be durable first commits them at once.
        var unwritten: [StoreBatch] = []

        init(core: ClientCore) { self.core = core }
    }

    private var now: Duration { ContinuousClock.now - start }

    func run() async {
        var coreConfiguration = ClientCore.Configuration()
        coreConfiguration.backoff = Backoff(base: configuration.backoffBase, cap: configuration.backoffCap)
        coreConfiguration.connectTimeout = configuration.connectTimeout
        coreConfiguration.keyColumns = configuration.keyColumns
        coreConfiguration.seed = UInt64.random(in: 1...UInt64.max)
        let loop = Loop(core: ClientCore(configuration: coreConfiguration))
        do {
            let state = try await store.load()
            let newID = "swift-" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(24)
            await execute(loop.core.handle(.loaded(state, newClientID: String(newID)), now: now), loop)
        } catch {
            report(.store("cannot load the store: \(error)"))
            loop.stopped = true
            publishStatus(ClientStatus(state: .stopped, pending: 0))
        }
        while true {
            let input = await inbox.next()
            if case .close(let done) = input {
                if !loop.stopped { await execute(loop.core.close(now: now), loop) }
                await shutdown(loop)
                done.resume()
                return
            }
            guard !loop.stopped else {
                refuse(input)
                continue
            }
            await handle(input, loop)
            if inbox.isEmpty { await commit(loop) }
        }
    }

    private func refuse(_ input: ClientInput) {
        switch input {
        case .subscribeQuery(_, _, _, let reply): reply.resume(throwing: ClientClosed())
        case .subscribeTopic(_, _, let reply): reply.resume(throwing: ClientClosed())
        case .enqueue(_, _, _, let reply): reply.resume(throwing: ClientClosed())
        case .unsubscribe(_, let reply): reply.resume()
        case .close(let reply): reply.resume()
        case .event, .register: break
        }
    }

    private func handle(_ input: ClientInput, _ loop: Loop) async {
        switch input {
        case .event(let event):
            if case .closed(let id, _, _) = event { loop.connections[id] = nil }
            if let observer = configuration.observer, case .received(let id, let message) = event, loop.core.link.connection == id {
                observer(.received(connection: id, message: message))
            }
            await execute(loop.core.handle(event, now: now), loop)
        case .register(let name, let effect):
            await execute(loop.core.register(name, effect: effect), loop)
        case .subscribeQuery(let collection, let filter, let conflate, let reply):
            let opened = loop.core.subscribe(.collection(name: collection, filter: filter, conflate: conflate), now: now)
            let query = loop.queries[opened.key] ?? LiveQuery(
                collection: collection, filter: filter, key: opened.key, rows: opened.rows, live: opened.live,
                onUnsubscribe: { [inbox] in await withCheckedContinuation { inbox.push(.unsubscribe(opened.key, $0)) } })
            loop.queries[opened.key] = query
            // After the actions: they publish the status (`resyncing` while the new feed loads), so
            // a caller that reads `status` once `subscribe` returns never sees a stale `live`.
            await execute(opened.actions, loop)
            reply.resume(returning: query)
        case .subscribeTopic(let topic, let limit, let reply):
            let opened = loop.core.subscribe(.topic(topic), now: now)
            let subscription = loop.topics[opened.key] ?? TopicSubscription(
                topic: topic, key: opened.key, limit: limit,
                onUnsubscribe: { [inbox] in await withCheckedContinuation { inbox.push(.unsubscribe(opened.key, $0)) } })
            loop.topics[opened.key] = subscription
            await execute(opened.actions, loop)
            reply.resume(returning: subscription)
        case .unsubscribe(let key, let reply):
            let actions = loop.core.unsubscribe(key, now: now)
            if loop.core.feeds[key] == nil {
                loop.queries.removeValue(forKey: key)?.finish()
                loop.topics.removeValue(forKey: key)?.finish()
            }
            await execute(actions, loop)
            reply.resume()
        case .enqueue(let name, let args, let promise, let reply):
            let queued = loop.core.enqueue(name: name, args: args, now: now)
            loop.promises[queued.local] = promise
            await execute(queued.actions, loop, afterFirstPersist: { reply.resume(returning: queued.mid) },
                          onStoreFailure: { reply.resume(throwing: $0) })
        case .close(let reply):
            reply.resume()
        }
    }

    /// Runs actions in order. `afterFirstPersist` runs once the first store write is durable (an
    /// enqueue's answer); if that write fails, `onStoreFailure` runs instead and the client stops.
    private func execute(_ actions: [ClientCore.Action], _ loop: Loop, afterFirstPersist: (() -> Void)? = nil,
                         onStoreFailure: ((any Error) -> Void)? = nil) async {
        var answer = afterFirstPersist
        for action in actions {
            guard !loop.stopped else { break }
            switch action {
            case .fetchToken:
                let provider = tokenProvider
                let inbox = inbox
                Task {
                    do {
                        let token = try await provider()
                        inbox.push(.event(.token(token, nowSeconds: Date().timeIntervalSince1970)))
                    } catch {
                        inbox.push(.event(.tokenFailed("\(error)")))
                    }
                }
            case .open(let id):
                configuration.observer?(.connecting(connection: id))
                loop.connections[id] = SocketConnection(
                    id: id, url: url, inbox: inbox, maxMessageBytes: configuration.maxMessageBytes,
                    crashAfterAck: CrashPoint.configured == "after-ack", logger: configuration.logger)
            case .send(let id, let text, let mid):
                guard let connection = loop.connections[id] else { continue }
                // A mutation is durable before it is sent (under this mid: renumbering writes it anew).
                if let mid, loop.unwritten.contains(where: { $0.insertMutations.contains { $0.mid == mid } }),
                   !(await commit(loop)) { continue }
                configuration.observer?(.sent(connection: id, text: text))
                if mid != nil, !loop.firstMutationSent, let point = CrashPoint.configured {
                    loop.firstMutationSent = true
                    if point == "before-send" { CrashPoint.crash("before-send") }
                    if point == "after-send" {
                        connection.send(text) {
                            // Give the server time to read the frame before dying: the kill resets
                            // the connection, and a reset drops what the server has not read yet
                            // (50 ms was too short on a loaded machine). The ack, if it comes
                            // meanwhile, is never processed.
                            usleep(500_000)
                            CrashPoint.crash("after-send")
                        }
                        continue
                    }
                }
                connection.send(text)
            case .close(let id, _):
                loop.connections.removeValue(forKey: id)?.close()
            case .persist(let batch):
                loop.unwritten.append(batch)
                if let observer = configuration.observer {
                    for observation in Self.savedObservations(batch, core: loop.core) { observer(observation) }
                }
                if answer != nil, !(await commit(loop, onFailure: onStoreFailure)) { answer = nil }
            case .schedule(let timer, let delay, let generation):
                loop.timers[timer]?.cancel()
                let inbox = inbox
                loop.timers[timer] = Task {
                    try? await Task.sleep(for: delay)
                    guard !Task.isCancelled else { return }
                    inbox.push(.event(.timer(timer, generation: generation)))
                }
            case .publish(let feed, let events, let view):
                loop.queries[feed]?.apply(events, view: view)
                if events.contains(where: { if case .ended = $0 { return true } else { return false } }) == false,
                   let query = loop.queries[feed], let state = loop.core.feeds[feed] {
                    query.setLive(state.isCaughtUp)
                }
            case .topic(let feed, let event):
                loop.topics[feed]?.push(event)
            case .decided(let local, let stored, let decision, let earlier):
                if let promise = loop.promises.removeValue(forKey: local) {
                    switch decision {
                    case .acked(let result, _): promise.resolve(.success(result))
                    case .rejected(let rejection): promise.resolve(.failure(rejection))
                    case .expired(let expired): promise.resolve(.failure(expired))
                    }
                } else if earlier {
                    outcomes.push(MutationOutcome(mid: stored.mid, name: stored.name, args: stored.args, decision: decision))
                }
            case .status(let status):
                publishStatus(status)
            case .report(let error):
                report(error)
            }
        }
        answer?()
    }

    /// Writes what is pending in one transaction; false (and the client stops) when it fails.
    @discardableResult
    private func commit(_ loop: Loop, onFailure: ((any Error) -> Void)? = nil) async -> Bool {
        guard !loop.unwritten.isEmpty else { return true }
        let batches = loop.unwritten
        loop.unwritten = []
        do {
            try await store.write(all: batches)
            return true
        } catch {
            onFailure?(error)
            report(.store("\(error)"))
            loop.stopped = true
            _ = loop.core.close(now: now)
            for connection in loop.connections.values { connection.close() }
            publishStatus(ClientStatus(state: .stopped, pending: statusBox.withLockedValue { $0.pending }))
            return false
        }
    }

    private func publishStatus(_ status: ClientStatus) {
        statusBox.withLockedValue { $0 = status }
        for queue in statusQueues.withLockedValue({ $0 }) { queue.push(status) }
    }

    private func report(_ error: SynclineClientError) {
        configuration.logger.warning("\(error)")
        errors.push(error)
    }

    private func shutdown(_ loop: Loop) async {
        await commit(loop)
        loop.stopped = true
        for connection in loop.connections.values { connection.close() }
        loop.connections = [:]
        inbox.releaseProducers()
        for timer in loop.timers.values { timer.cancel() }
        loop.timers = [:]
        for query in loop.queries.values { query.finish() }
        for topic in loop.topics.values { topic.finish() }
        for promise in loop.promises.values { promise.resolve(.failure(ClientClosed())) }
        loop.promises = [:]
        publishStatus(ClientStatus(state: .stopped, pending: statusBox.withLockedValue { $0.pending }))
        for queue in statusQueues.withLockedValue({ $0 }) { queue.finish() }
        outcomes.finish()
        errors.finish()
    }
}
