import Logging
import Metrics
import NIOConcurrencyHelpers
import SynclinePostgres

/// What every `/v1/sync` connection shares: configuration, the hub, the readers, the authenticator.
///
/// The database-backed dependencies are protocols (`FeedReading`, `ClientRegistering`,
/// `MutationSubmitting`) so that `SyncConnection` runs in unit tests without PostgreSQL; the
/// server passes `FeedReader`, `ClientRegistry` and `MutationExecutor`. The hub and the
/// authenticator are the real ones everywhere (neither does I/O).
final class SyncEnvironment: Sendable {
    let configuration: ServerConfiguration
    let hub: Hub
    let reader: any FeedReading
    let clients: any ClientRegistering
    let mutations: any MutationSubmitting
    let authenticator: Authenticator
    /// Shared snapshot reads (ADR 0008).
    let snapshots: SnapshotCoordinator
    let logger: Logger
    let connections = NIOLockedValueBox(0)
    let connectionsGauge = Gauge(label: "syncline_connections")
    let errorsCounter = Counter(label: "syncline_client_errors_total")
    /// Connections closed with 1008 by the message rate limit.
    let rateLimitClosesCounter = Counter(label: "syncline_rate_limit_closes_total")
    let closesCounter = Counter(label: "syncline_closes_total")
    /// Per-address and per-user connection tables (`ConnectionLimits`).
    let limits: ConnectionLimits
    /// Delivery health: the canary, readiness, the drain.
    let health: NodeHealth

    init(configuration: ServerConfiguration, hub: Hub, reader: any FeedReading, clients: any ClientRegistering,
         mutations: any MutationSubmitting, authenticator: Authenticator, logger: Logger) {
        self.configuration = configuration
        self.hub = hub
        self.reader = reader
        self.clients = clients
        self.mutations = mutations
        self.authenticator = authenticator
        self.logger = logger
        self.limits = ConnectionLimits(configuration)
        self.health = NodeHealth(configuration)
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
