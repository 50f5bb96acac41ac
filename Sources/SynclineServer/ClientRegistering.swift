import SynclinePostgres

/// Who owns a `client_id`, asked once per `hello`. `ClientRegistry` keeps it in PostgreSQL
/// (`syncline.clients`); `SyncConnection`'s unit tests keep it in a dictionary.
protocol ClientRegistering: Sendable {
    /// Records first use of `clientID` by `sub`; returns the owning `sub` (another user's means
    /// the hello is refused with 4003) and the highest decided `mid`.
    func register(clientID: String, sub: String) async throws -> (owner: String, lastMID: Int64)
}

extension ClientRegistry: ClientRegistering {}
