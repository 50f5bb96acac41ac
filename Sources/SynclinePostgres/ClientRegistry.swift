import Logging
import PostgresNIO

/// Client installs (`syncline.clients`): which `sub` owns a `client_id`, and its decided `mid`.
public final class ClientRegistry: Sendable {
    private let client: PostgresClient
    private let logger: Logger

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// Records first use of `clientID` by `sub`. Returns the owning `sub` (another user's means the
    /// hello must be refused) and the highest decided `mid`.
    public func register(clientID: String, sub: String) async throws -> (owner: String, lastMID: Int64) {
        let rows = try await client.query("""
            INSERT INTO syncline.clients AS c (client_id, sub) VALUES (\(clientID), \(sub))
            ON CONFLICT (client_id) DO UPDATE SET seen_at = now()
            RETURNING c.sub, c.last_mid
            """, logger: logger)
        for try await (owner, lastMID) in rows.decode((String, Int64).self) { return (owner, lastMID) }
        throw SynclinePostgresError(.unavailable, "client registration returned nothing")
    }
}
