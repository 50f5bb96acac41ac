import Foundation
import Logging

/// Where a development cluster's files (data, socket, log) live.
///
/// As root, PostgreSQL runs as the `postgres` user, which must be able to reach the folder. A clone
/// under root's home (`/root`, mode 0700) is out of its reach, so there the files go to
/// `/var/lib/syncline/<hash of the folder>` (owned by `postgres`, mode 0700), and the folder gets
/// symlinks `data` and `postgres.log` to them; `postgres.url` stays in the folder. The hash is of
/// the folder's absolute path, so each clone keeps its own cluster across runs.
enum ClusterHome {
    /// Where relocated clusters live.
    static let relocationRoot = "/var/lib/syncline"

    /// Prepares and returns the folder holding `data/`, the socket and `postgres.log` for the
    /// development folder `directory` (absolute, existing).
    static func prepare(for directory: String, asRoot: Bool, logger: Logger) throws -> String {
        guard asRoot else { return directory }
        // The folder itself is handed to postgres below; what it must be able to cross is above.
        if postgresCanReach((directory as NSString).deletingLastPathComponent, write: false) {
            try DevelopmentCluster.run("/bin/chown", ["-R", "postgres:postgres", directory], logger: logger)
            return directory
        }
        let home = relocationRoot + "/" + pathHash(directory)
        let fm = FileManager.default
        try fm.createDirectory(atPath: relocationRoot, withIntermediateDirectories: true,
                               attributes: [.posixPermissions: 0o755])
        try fm.createDirectory(atPath: home, withIntermediateDirectories: true)
        // Says which folder the cluster belongs to, for whoever finds it under /var/lib/syncline.
        try (directory + "\n").write(toFile: home + "/directory", atomically: true, encoding: .utf8)
        try DevelopmentCluster.run("/bin/chown", ["-R", "postgres:postgres", home], logger: logger)
        guard chmod(home, 0o700) == 0 else {
            throw SynclinePostgresError(.clusterSetup, "cannot chmod \(home): \(String(cString: strerror(errno)))")
        }
        guard postgresCanReach(home, write: true) else {
            throw SynclinePostgresError(.clusterSetup,
                "the postgres user can reach neither \(directory) nor \(home); pass --dev-data-dir with a folder it can reach, or --database-url")
        }
        link(directory + "/data", to: home + "/data", logger: logger)
        link(directory + "/postgres.log", to: home + "/postgres.log", logger: logger)
        logger.notice("development PostgreSQL data lives in \(home)/data (the postgres user cannot reach \(directory))")
        return home
    }

    /// Whether the `postgres` user can enter (and with `write`, write) `directory`, every folder
    /// above it included: asked of the system as that user rather than worked out from mode bits.
    static func postgresCanReach(_ directory: String, write: Bool) -> Bool {
        let test = ["-x", directory] + (write ? ["-a", "-w", directory] : [])
        do {
            try DevelopmentCluster.run("/usr/sbin/runuser", ["-u", "postgres", "--", "/usr/bin/test"] + test,
                                       logger: Logger(label: "syncline-cluster-home"))
            return true
        } catch {
            return false
        }
    }

    /// A symlink `path` → `target`, unless something other than such a link is already there (it
    /// is left alone: the logged location is what counts).
    private static func link(_ path: String, to target: String, logger: Logger) {
        let fm = FileManager.default
        if let existing = try? fm.destinationOfSymbolicLink(atPath: path) {
            if existing == target { return }
            try? fm.removeItem(atPath: path)
        } else if fm.fileExists(atPath: path) {
            logger.warning("\(path) exists and is not a link to \(target); leaving it")
            return
        }
        do {
            try fm.createSymbolicLink(atPath: path, withDestinationPath: target)
        } catch {
            logger.warning("could not link \(path) to \(target): \(error)")
        }
    }

    /// 16 hex digits of the path's FNV-1a hash: stable across runs (Swift's `Hasher` is seeded
    /// per process), and enough to tell a machine's clones apart.
    static func pathHash(_ path: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in path.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}
