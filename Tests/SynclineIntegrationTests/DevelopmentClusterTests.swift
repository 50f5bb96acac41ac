import Foundation
import SynclinePostgres
import Testing

/// `syncline serve` without `--database-url` starts a private cluster under `--dev-data-dir`. As
/// root (CI), PostgreSQL runs as `postgres`, which cannot enter root's 0700 home: a clone there
/// must still work, with the data where that user can reach it.
@Suite("Development cluster")
struct DevelopmentClusterTests {
    @Test("starts, keeps its data across restarts and stops, from a folder inside a 0700 directory")
    func insideClosedDirectory() async throws {
        let fm = FileManager.default
        let closed = NSTemporaryDirectory() + "syncline-closed-\(getpid())-\(UUID().uuidString.prefix(8))"
        try fm.createDirectory(atPath: closed, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        let directory = closed + "/clone/.syncline"
        let configuration = DevelopmentCluster.Configuration(directory: directory, settings: ["fsync": "off"])
        var homes: Set<String> = []
        defer {
            for home in homes where home != directory { try? fm.removeItem(atPath: home) }
            try? fm.removeItem(atPath: closed)
        }

        // initdb and pg_ctl are waited for off the cooperative pool (Thread.run).
        var cluster = try await Thread.run { try DevelopmentCluster.start(configuration, logger: TestCluster.logger) }
        homes.insert(cluster.home)
        do {
            #expect(cluster.startedHere)
            if geteuid() == 0 {
                // The postgres user cannot cross `closed`: the data lives under /var/lib/syncline.
                #expect(cluster.home.hasPrefix("/var/lib/syncline/"))
                #expect(!cluster.dataDirectory.hasPrefix(closed))
                let home = try fm.attributesOfItem(atPath: cluster.home)
                #expect((home[.posixPermissions] as? Int) == 0o700)
                #expect((home[.ownerAccountName] as? String) == "postgres")
                #expect(try fm.destinationOfSymbolicLink(atPath: directory + "/data") == cluster.dataDirectory)
                #expect(try fm.destinationOfSymbolicLink(atPath: directory + "/postgres.log") == cluster.home + "/postgres.log")
            } else {
                #expect(cluster.home == directory)
            }
            let url = try String(contentsOfFile: directory + "/postgres.url", encoding: .utf8)
            #expect(url == cluster.url + "\n")
            let database = TestDatabase(url: cluster.url)
            _ = try await database.psql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        } catch {
            let started = cluster
            try await Thread.run { started.stop(logger: TestCluster.logger) }
            throw error
        }
        let first = cluster
        try await Thread.run { first.stop(logger: TestCluster.logger) }

        // Started again from the same folder: the same data, not a new cluster.
        cluster = try await Thread.run { try DevelopmentCluster.start(configuration, logger: TestCluster.logger) }
        homes.insert(cluster.home)
        #expect(homes.count == 1)
        let kept = try? await TestDatabase(url: cluster.url).psql("SELECT n FROM kept")
        #expect(kept == "42\n")
        let second = cluster
        try await Thread.run { second.stop(logger: TestCluster.logger) }
    }

    @Test("a folder the postgres user can reach holds the cluster itself")
    func reachableFolderStaysPut() async throws {
        let cluster = try await Thread.run { try TestCluster.cluster }
        #expect(cluster.home == cluster.configuration.directory)
        #expect(cluster.dataDirectory == cluster.configuration.directory + "/data")
    }
}
