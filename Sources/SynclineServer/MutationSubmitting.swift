import SynclinePostgres

/// Where a connection hands its `mutate`s: `MutationExecutor` decides them in PostgreSQL with
/// group commit; `SyncConnection`'s unit tests decide them when the test says so. Called once per
/// `mutate`, from the connection's event loop: it must not block.
protocol MutationSubmitting: Sendable {
    /// Queues a mutation; its `reply` is called exactly once, from any thread. Returns false —
    /// and never calls `reply` — when it cannot take the mutation now (the connection answers
    /// `error unavailable`).
    func submit(_ request: MutationExecutor.Request) -> Bool
}

extension MutationExecutor: MutationSubmitting {}
