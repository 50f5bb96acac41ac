import Foundation
import Testing

/// `syncline.track` and row-level security (migration 0004, docs/security.md): RLS does not
/// filter feeds, so tracking an RLS table takes the deployer's statement that the feed policy
/// covers it.
@Suite("track and row-level security")
struct TrackRLSTests {
    static func migrated() async throws -> TestDatabase {
        let database = try await TestDatabase(url: TestCluster.makeDatabase())
        _ = try await LeastPrivilegeTests.migrate(database.url)
        _ = try await database.psql("""
            CREATE TABLE public.secrets (id int PRIMARY KEY, owner text);
            ALTER TABLE public.secrets ENABLE ROW LEVEL SECURITY;
            CREATE TABLE public.plain (id int PRIMARY KEY);
            """)
        return database
    }

    @Test("track refuses a table with RLS enabled, explaining why, unless rls => 'feed_policy_covers'")
    func refusesWithoutStatement() async throws {
        let database = try await Self.migrated()
        var refusal = ""
        do {
            _ = try await database.psql("SELECT syncline.track('public.secrets', '{id}', '{owner}')")
            Issue.record("track accepted an RLS table without the statement")
        } catch {
            refusal = "\(error)"
        }
        #expect(refusal.contains("syncline.track: secrets has row-level security enabled, but RLS does not filter Syncline feeds"), "\(refusal)")
        #expect(refusal.contains("The feed policy (track's policy argument) is the only read boundary"))
        #expect(refusal.contains("the server reads as its own role"))
        #expect(refusal.contains("rls => 'feed_policy_covers'"))
        #expect(try await database.psql("SELECT count(*) FROM syncline.collections") == "0\n")
        #expect(try await database.psql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.secrets'::regclass") == "0\n")

        // Any other statement is refused as such.
        await #expect(throws: TestFailure.self) {
            try await database.psql("SELECT syncline.track('public.secrets', '{id}', rls => 'trust me')")
        }
        // With the statement it is tracked, captured, and the statement is recorded.
        _ = try await database.psql("SELECT syncline.track('public.secrets', '{id}', '{owner}', rls => 'feed_policy_covers')")
        #expect(try await database.psql("SELECT name || ':' || rls FROM syncline.collections") == "secrets:feed_policy_covers\n")
        _ = try await database.psql("INSERT INTO public.secrets VALUES (1, 'alice')")
        #expect(try await database.psql("SELECT count(*) FROM syncline.changes WHERE collection = 'secrets'") == "1\n")
        // A table without RLS needs no statement.
        _ = try await database.psql("SELECT syncline.track('public.plain', '{id}')")
        #expect(try await database.psql("SELECT count(*) FROM syncline.collections WHERE rls IS NULL") == "1\n")
    }

    @Test("a table whose RLS was enabled after track is named by serve's startup check")
    func enabledAfterTrack() async throws {
        let database = try await Self.migrated()
        _ = try await database.psql("SELECT syncline.track('public.plain', '{id}'); ALTER TABLE public.plain ENABLE ROW LEVEL SECURITY")
        let log = CapturedLog()
        try await LeastPrivilegeTests.serving(database.url, log: log) { _ in }
        #expect(log.lines.contains { $0.contains("row-level security is enabled on the tracked tables plain but does not filter feeds") },
                "\(log.lines.filter { $0.contains("SECURITY") })")
    }
}
