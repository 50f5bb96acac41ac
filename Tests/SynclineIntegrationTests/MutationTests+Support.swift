import Foundation
import PostgresNIO
import SynclineProtocol
import Testing

extension TestDatabase {
    /// One value from `psql`, without its trailing newline.
    func value(_ sql: String) async throws -> String {
        try await psql(sql).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// What the mutation tests send and wait for: `mutate` messages, answers, balances, and a
/// sleeper that keeps a batch busy.
extension MutationTests {
    static func transfer(_ mid: Int64, from: String = "alice-checking", to: String = "bob-checking", amount: String = "10.00",
                         memo: String = "test") -> String {
        "{\"type\":\"mutate\",\"mid\":\(mid),\"name\":\"transfer\",\"args\":{\"from\":\"\(from)\",\"to\":\"\(to)\",\"amount\":\(amount),\"memo\":\"\(memo)\"}}"
    }

    static func mutate(_ mid: Int64, _ name: String, _ args: String) -> String {
        "{\"type\":\"mutate\",\"mid\":\(mid),\"name\":\"\(name)\",\"args\":\(args)}"
    }

    /// The next `ack`/`reject`/`error` answering a mutation, skipping feed traffic.
    static func answer(_ client: TestClient, timeout: Duration = .seconds(15), sourceLocation: SourceLocation = #_sourceLocation) async throws -> JSONValue {
        let deadline = ContinuousClock.now + timeout
        while true {
            let message: JSONValue
            do {
                message = try await client.next(timeout: max(.milliseconds(1), deadline - ContinuousClock.now))
            } catch {
                throw TestFailure("\(error), waiting for the answer at line \(sourceLocation.line)")
            }
            switch message["type"]?.stringValue {
            case "ack", "reject", "error": return message
            default: continue
            }
        }
    }

    static func balances(_ server: TestServer) async throws -> String {
        try await server.database.value("SELECT string_agg(id || '=' || balance, ',' ORDER BY id) FROM accounts")
    }

    /// A mutator that sleeps `args.s` seconds: it keeps a batch busy so that others queue behind it.
    /// Waits (up to 30 s) until the executor's connection is inside `test_sleep`.
    static func waitForSleeper(_ server: TestServer) async throws {
        let sleeping = ContinuousClock.now + .seconds(30)
        while try await server.database.value("""
            SELECT count(*) FROM pg_stat_activity
            WHERE application_name = 'syncline-mutations' AND datname = current_database() AND wait_event = 'PgSleep'
            """) != "1" {
            guard ContinuousClock.now < sleeping else { throw TestFailure("the mutation lane never entered test_sleep") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    static func installSleeper(_ server: TestServer) async throws {
        _ = try await server.database.psql("""
            CREATE FUNCTION public.test_sleep(args jsonb) RETURNS jsonb LANGUAGE sql AS $$
                SELECT pg_sleep((args ->> 's')::float8); SELECT '{"slept": true}'::jsonb $$;
            SELECT syncline.register_mutator('test_sleep', 'public.test_sleep(jsonb)');
            """)
    }
}
