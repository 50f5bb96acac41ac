import Foundation
import SynclinePostgres
@testable import SynclineServer
import NIOCore
import NIOHTTP1
import Testing

/// The least-privilege setup (docs/security.md): an owner role runs `syncline migrate`, a runtime
/// role with no DDL rights runs `serve`; serve refuses a schema that is behind, warns about a
/// privileged login, and `/demo/token` answers loopback peers only.
@Suite("Least privilege")
struct LeastPrivilegeTests {
    /// A database owned by a fresh non-superuser `owner` (CREATEROLE, for syncline_writer), and a
    /// fresh login `runtime` with nothing granted yet. Roles are cluster-wide: names are unique.
    struct Roles {
        let superuser: TestDatabase
        let owner: String
        let runtime: String

        init() async throws {
            superuser = try await TestDatabase(url: TestCluster.makeDatabase())
            let tag = UUID().uuidString.prefix(8).lowercased()
            owner = "owner_\(tag)"
            runtime = "runtime_\(tag)"
            let database = try PostgresSettings(url: superuser.url).database
            _ = try await superuser.psql("""
                CREATE ROLE \(owner) LOGIN CREATEROLE;
                CREATE ROLE \(runtime) LOGIN;
                ALTER DATABASE \(database) OWNER TO \(owner);
                """)
        }

        func url(as role: String) -> String { superuser.url.replacingOccurrences(of: "://syncline@", with: "://\(role)@") }
        func database(as role: String) -> TestDatabase { TestDatabase(url: url(as: role)) }
    }

    /// `syncline migrate` as the real command.
    static func migrate(_ url: String, _ extra: [String] = []) async throws -> [String] {
        let child = try ChildProcess(ChildProcess.binary("syncline"), [
            "migrate", "--database-url", url, "--migrations-dir", repositoryRoot + "/migrations", "--log-level", "warning",
        ] + extra, name: "syncline migrate")
        let status = try await child.waitForExit(timeout: .seconds(60))
        guard status == 0 else { throw TestFailure("syncline migrate failed (\(status)):\n" + child.lines.joined(separator: "\n")) }
        return child.lines
    }

    static func demoSchema() throws -> String {
        try String(contentsOfFile: repositoryRoot + "/examples/demo/schema.sql", encoding: .utf8)
    }

    /// Serve over `url` without the demo (so without any setup of its own).
    static func serving(_ url: String, log: CapturedLog, _ body: (TestServer) async throws -> Void) async throws {
        let server = try await TestServer.start(database: TestDatabase(url: url), logger: log.logger(level: .info)) {
            $0.demoSchemaPath = nil
            $0.server.canaryIntervalMilliseconds = 200  // syncline.canary() must work for the runtime role
        }
        do {
            try await eventually("a canary round trip as this role", timeout: .seconds(10)) { server.app.health.lastRoundTrip != nil }
            try await body(server)
            await server.stop()
        } catch {
            await server.stop()
            throw error
        }
    }

    @Test("with --database-url, serve runs no DDL: a schema that is behind is refused with 'run syncline migrate'")
    func refusesSchemaBehind() async throws {
        let database = try await TestDatabase(url: TestCluster.makeDatabase())
        var options = SynclineApplication.Options(migrationsDirectory: repositoryRoot + "/migrations")
        options.databaseURL = database.url
        options.server.insecureDevAuth = true
        options.server.port = 0
        do {
            _ = try await SynclineApplication.prepare(options, logger: TestCluster.logger)
            Issue.record("serve started on an empty database")
        } catch let error as SynclinePostgresError {
            #expect(error.code == .notMigrated)
            #expect(error.message.contains("Run `syncline migrate"), "\(error.message)")
            #expect(error.message.contains("0001_syncline_core.sql"))
        }
        // Nothing was created: no schema, no table, no role grant.
        #expect(try await database.psql("SELECT to_regnamespace('syncline') IS NULL") == "t\n")

        // Migrated up to 0003 only (an older binary's migrate): refused, naming what is missing.
        let older = NSTemporaryDirectory() + "syncline-migrations-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: older, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: older) }
        let before = try Migrator(directory: repositoryRoot + "/migrations").files().filter { $0 < "0004_least_privilege.sql" }
        for file in before {
            try FileManager.default.copyItem(atPath: repositoryRoot + "/migrations/" + file, toPath: older + "/" + file)
        }
        let lines = try await Self.migrate(database.url, ["--migrations-dir", older])
        #expect(lines.contains { $0.contains("applied: 0001") })
        do {
            _ = try await SynclineApplication.prepare(options, logger: TestCluster.logger)
            Issue.record("serve started on a schema behind its migrations")
        } catch let error as SynclinePostgresError {
            #expect(error.code == .notMigrated)
            #expect(error.message.contains("migration(s) not applied (0004_least_privilege.sql"), "\(error.message)")
        }
        #expect(try await database.psql("SELECT count(*) FROM syncline.schema_migrations") == "\(before.count)\n")

        // After migrate, it starts.
        _ = try await Self.migrate(database.url)
        let log = CapturedLog()
        try await Self.serving(database.url, log: log) { server in
            let client = try await TestClient.open(server, sub: "alice")
            await client.close()
        }
    }

    @Test("owner migrates, the runtime role serves snapshots, live changes and mutations, and can run no DDL")
    func runtimeRoleServes() async throws {
        let roles = try await Roles()
        let ownerURL = roles.url(as: roles.owner), runtimeURL = roles.url(as: roles.runtime)
        // The deployer's steps (docs/security.md): migrate and grant as the owner, then the app schema.
        _ = try await Self.migrate(ownerURL, ["--grant-runtime", roles.runtime])
        _ = try await roles.database(as: roles.owner).psql(try Self.demoSchema())
        #expect(try await roles.superuser.psql("SELECT role FROM syncline.runtime_roles") == "\(roles.runtime)\n")

        let log = CapturedLog()
        try await Self.serving(runtimeURL, log: log) { server in
            let alice = try await TestClient.open(server, sub: "alice")
            alice.send(ChangeFeedTests.subscribeChecking)
            var feed = FeedCollector(sub: "t")
            try await feed.collect(from: alice) { $0.snapshotDone }
            #expect(feed.rows.count == 1, "RLS must not hide rows from the runtime role's snapshot")
            alice.send(MutationTests.transfer(1, amount: "5.00", memo: "least privilege"))
            var acked = false
            while !acked || !feed.rows.values.contains(where: { $0["memo"]?.stringValue == "least privilege" }) {
                let message = try await alice.next()
                feed.apply(message)
                #expect(message["type"]?.stringValue != "reject" && message["type"]?.stringValue != "error", "\(message.jsonText)")
                if message["type"]?.stringValue == "ack" { acked = true }
            }
            // A row written by the application (as the owner) arrives live.
            _ = try await roles.database(as: roles.owner).psql(
                "INSERT INTO public.transactions (account_id, amount, memo) VALUES ('alice-checking', 1.00, 'from the app')")
            while !feed.rows.values.contains(where: { $0["memo"]?.stringValue == "from the app" }) {
                feed.apply(try await alice.next())
            }
            // The feed policy still decides: bob's account is not alice's.
            alice.send(["type": "subscribe", "id": "b", "collection": "transactions", "where": ["account_id": "bob-checking"]])
            let refused = try await alice.next("error", skipping: ["cursor", "changes"])
            #expect(refused["code"] == "forbidden")
            await alice.close()
        }
        #expect(!log.lines.contains { $0.contains("SECURITY WARNING") }, "\(log.lines.filter { $0.contains("SECURITY") })")

        // The runtime role can change no schema and no Syncline bookkeeping beyond its own tables.
        let runtime = roles.database(as: roles.runtime)
        for ddl in [
            "CREATE TABLE syncline.evil (x int)", "CREATE TABLE public.evil (x int)", "DROP TABLE public.transactions",
            "ALTER TABLE syncline.changes ADD COLUMN x int", "CREATE SCHEMA evil",
            "SELECT syncline.track('public.transactions', '{id}')", "SELECT syncline.untrack('public.transactions')",
            "DELETE FROM syncline.changes", "UPDATE syncline.meta SET value = 'x'", "INSERT INTO syncline.collections (name, relation, key_columns, published) VALUES ('x', 'public.transactions', '{id}', '{id}')",
            "SELECT syncline.grant_runtime('\(roles.runtime)')", "SELECT syncline.prune(keep_count => 0)",
            "DROP POLICY syncline_runtime_read ON public.transactions",
        ] {
            await #expect(throws: TestFailure.self, "the runtime role ran: \(ddl)") { try await runtime.psql(ddl) }
        }
        #expect(try await runtime.psql("SELECT count(*) > 0 FROM syncline.changes") == "t\n")
        #expect(try await runtime.psql("SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls FROM pg_roles WHERE rolname = current_user") == "f\n")
    }

    @Test("serve logs a loud warning when its login is a superuser, or owns the tracked tables, and names RLS left unstated")
    func privilegedLoginWarns() async throws {
        let roles = try await Roles()
        _ = try await Self.migrate(roles.url(as: roles.owner), ["--grant-runtime", roles.runtime])
        _ = try await roles.database(as: roles.owner).psql(try Self.demoSchema() + """
            ;
            CREATE TABLE public.notes (id int PRIMARY KEY, owner text);
            SELECT syncline.track('public.notes', '{id}');
            ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;
            """)
        for (login, expected) in [
            ("syncline", "the login syncline is a superuser"),
            (roles.owner, "the login \(roles.owner) owns the syncline schema"),
            (roles.owner, "owns the tracked tables accounts, notes, notifications, transactions"),
            (roles.runtime, "row-level security is enabled on the tracked tables notes but does not filter feeds"),
        ] {
            let log = CapturedLog()
            try await Self.serving(roles.url(as: login), log: log) { _ in }
            let warnings = log.lines.filter { $0.hasPrefix("warning SECURITY WARNING:") }
            #expect(warnings.contains { $0.contains(expected) }, "\(login): \(warnings)")
            if login == roles.runtime {
                #expect(warnings.count == 1, "only the RLS finding for the runtime role: \(warnings)")
            }
        }
    }

    @Test("/demo/token answers loopback peers only, never through a proxy")
    func demoTokenLoopbackOnly() async throws {
        try await TestServer.with(configure: { $0.server.demo = true }) { server in
            let direct = try await RawHTTP.request(port: server.port, "GET /demo/token?sub=alice HTTP/1.1\nHost: x\nConnection: close\n\n")
            #expect(direct.hasPrefix("HTTP/1.1 200"), "\(direct.prefix(80))")
            for header in ["X-Forwarded-For: 203.0.113.7", "Forwarded: for=203.0.113.7", "X-Real-IP: 203.0.113.7"] {
                let proxied = try await RawHTTP.request(
                    port: server.port, "GET /demo/token?sub=alice HTTP/1.1\nHost: x\n\(header)\nConnection: close\n\n")
                #expect(proxied.hasPrefix("HTTP/1.1 403"), "\(header): \(proxied.prefix(80))")
                #expect(proxied.contains("loopback peers only"))
            }
        }
        // Peers on other machines (no traffic needed: the decision is on the peer address).
        let none = HTTPHeaders()
        for (ip, local) in [("127.0.0.1", true), ("127.8.9.10", true), ("::1", true), ("::ffff:127.0.0.1", true),
                            ("10.0.0.5", false), ("203.0.113.7", false), ("::ffff:10.0.0.5", false), ("2001:db8::1", false)] {
            #expect(HTTPRouter.isLocalPeer(try SocketAddress(ipAddress: ip, port: 1234), none) == local, "\(ip)")
        }
        #expect(!HTTPRouter.isLocalPeer(nil, none))
    }
}
