import PostgresNIO
import Testing

/// A gate for batches: the `test_gate` mutator waits for an advisory lock the test holds, so its
/// batch keeps the lane busy until the test has seen the others queue behind it. (A sleeper of a
/// fixed length raced a loaded machine: the others sometimes arrived after it had finished.)
extension MutationTests {
    static let gateLock = 4_242

    static func installGate(_ server: TestServer) async throws {
        _ = try await server.database.psql("""
            CREATE FUNCTION public.test_gate(args jsonb) RETURNS jsonb LANGUAGE sql AS $$
                SELECT pg_advisory_xact_lock(\(gateLock)); SELECT '{"passed": true}'::jsonb $$;
            SELECT syncline.register_mutator('test_gate', 'public.test_gate(jsonb)');
            """)
    }

    /// Runs `body` with the gate closed: a `test_gate` mutation waits until `body` returns.
    static func withGateClosed<T: Sendable>(_ server: TestServer, _ body: () async throws -> T) async throws -> T {
        try await server.database.withConnection { connection in
            for try await _ in try await connection.query("SELECT pg_advisory_lock(\(Self.gateLock))", logger: TestCluster.logger) {}
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            for try await _ in try await connection.query("SELECT pg_advisory_unlock(\(Self.gateLock))", logger: TestCluster.logger) {}
            return try result.get()
        }
    }

    /// Waits until the server holds `count` mutations it has not answered yet (queued or in a batch).
    static func waitForPending(_ server: TestServer, _ count: Int) async throws {
        try await eventually("\(count) mutations pending on the server", timeout: .seconds(30)) {
            server.app.mutationsPending == count
        }
    }
}
