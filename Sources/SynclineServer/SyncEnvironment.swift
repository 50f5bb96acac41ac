import Logging
import Metrics
import NIOConcurrencyHelpers
import SynclinePostgres

/// What every `/v1/sync` connection shares: configuration, the hub, the readers, the authenticator.
final class SyncEnvironment: Sendable {
    let configuration: ServerConfiguration
    let hub: Hub
    let reader: FeedReader
    let clients: ClientRegistry
    let mutations: MutationExecutor
    let authenticator: Authenticator
    /// Shared snapshot reads (ADR 0007).
    let snapshots: SnapshotCoordinator
    let logger: Logger
    let connections = NIOLockedValueBox(0)
    let connectionsGauge = Gauge(label: "syncline_connections")
    let errorsCounter = Counter(label: "syncline_client_errors_total")
    let closesCounter = Counter(label: "syncline_closes_total")

    init(configuration: ServerConfiguration, hub: Hub, reader: FeedReader, clients: ClientRegistry,
         mutations: MutationExecutor, authenticator: Authenticator, logger: Logger) {
        self.configuration = configuration
        self.hub = hub
        self.reader = reader
        self.clients = clients
        self.mutations = mutations
        self.authenticator = authenticator
        self.logger = logger
        self.snapshots = SnapshotCoordinator(reader: reader, epoch: hub.epoch, configuration: configuration, logger: logger)
    }

    /// Takes a connection slot; false when the limit is reached.
    func admitConnection() -> Bool {
        let admitted = connections.withLockedValue { n -> Int? in
            guard n < configuration.maximumConnections else { return nil }
            n += 1
            return n
        }
        if let admitted { connectionsGauge.record(admitted) }
        return admitted != nil
    }

    func releaseConnection() {
        let n = connections.withLockedValue { n -> Int in
            n -= 1
            return n
        }
        connectionsGauge.record(n)
    }
}
