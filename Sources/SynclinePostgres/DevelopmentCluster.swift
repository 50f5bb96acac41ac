import Foundation
import Logging

/// A private PostgreSQL cluster for development and tests: `initdb` once into a folder, then
/// `pg_ctl start` on a free loopback port, stopped again with the server.
///
/// PostgreSQL refuses to run as root, so as root every cluster command runs as the `postgres`
/// user through `runuser`, and the folder is handed to that user. When that user cannot reach the
/// folder (a clone under root's 0700 home), the cluster's files live under
/// `/var/lib/syncline/<hash of the folder>` instead, linked from the folder (see `ClusterHome`).
public struct DevelopmentCluster: Sendable {
    public struct Configuration: Sendable {
        /// Folder holding `data/`, the log and `postgres.url`.
        public var directory: String
        /// Extra `postgres -c` settings, e.g. `fsync=off` for throwaway test clusters.
        public var settings: [String: String]
        /// Database created for Syncline.
        public var database: String

        public init(directory: String, settings: [String: String] = [:], database: String = "syncline") {
            self.directory = directory
            self.settings = settings
            self.database = database
        }
    }

    public let configuration: Configuration
    public let port: Int
    /// Whether this process started the cluster (and so stops it).
    public let startedHere: Bool

    public var host: String { "127.0.0.1" }
    public var username: String { "syncline" }
    public var url: String { "postgres://\(username)@\(host):\(port)/\(configuration.database)" }

    /// Where the cluster's files are: `configuration.directory`, or the folder under
    /// `/var/lib/syncline` used when the `postgres` user cannot reach it.
    public let home: String
    /// The cluster's data directory (`home/data`).
    public var dataDirectory: String { home + "/data" }

    /// Creates (if needed) and starts the cluster, or attaches to it if it already runs.
    public static func start(_ configuration: Configuration, logger: Logger) throws -> DevelopmentCluster {
        var configuration = configuration
        configuration.directory = URL(fileURLWithPath: configuration.directory).standardizedFileURL.path
        let fm = FileManager.default
        let bin = try binDirectory()
        try fm.createDirectory(atPath: configuration.directory, withIntermediateDirectories: true)
        let asRoot = geteuid() == 0
        // Data, socket and log go where the cluster's user can reach them.
        let dir = try ClusterHome.prepare(for: configuration.directory, asRoot: asRoot, logger: logger)
        let data = dir + "/data"
        if !fm.fileExists(atPath: data + "/PG_VERSION") {
            logger.info("initializing a development PostgreSQL cluster", metadata: ["directory": "\(data)"])
            try runPostgres(bin + "/initdb", ["-D", data, "-U", "syncline", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"],
                            asRoot: asRoot, logger: logger)
        }
        if let running = runningPort(data: data) {
            logger.info("attaching to the running development cluster", metadata: ["port": "\(running)"])
            let cluster = DevelopmentCluster(configuration: configuration, port: running, startedHere: false, home: dir)
            try cluster.createDatabase(configuration.database, bin: bin, logger: logger)
            try cluster.writeURL()
            return cluster
        }
        let port = try freePort()
        var options = ["-c listen_addresses=127.0.0.1", "-p \(port)", "-k \(dir)", "-c max_connections=500",
                       "-c shared_buffers=256MB"]
        for (k, v) in configuration.settings.sorted(by: { $0.key < $1.key }) { options.append("-c \(k)=\(v)") }
        try runPostgres(bin + "/pg_ctl", ["-D", data, "-l", dir + "/postgres.log", "-w", "-t", "60",
                                          "-o", options.joined(separator: " "), "start"],
                        asRoot: asRoot, logger: logger)
        let cluster = DevelopmentCluster(configuration: configuration, port: port, startedHere: true, home: dir)
        try cluster.createDatabase(configuration.database, bin: bin, logger: logger)
        try cluster.writeURL()
        logger.info("development PostgreSQL running", metadata: ["url": "\(cluster.url)"])
        return cluster
    }

    /// Creates another database in this cluster (tests give each suite its own).
    public func createDatabase(_ name: String, logger: Logger) throws {
        try createDatabase(name, bin: try Self.binDirectory(), logger: logger)
    }

    /// Stops the cluster if this process started it.
    public func stop(logger: Logger) {
        guard startedHere else { return }
        do {
            try Self.runPostgres(try Self.binDirectory() + "/pg_ctl", ["-D", dataDirectory, "-m", "fast", "-w", "stop"],
                                 asRoot: geteuid() == 0, logger: logger)
            logger.info("development PostgreSQL stopped")
        } catch {
            logger.error("could not stop the development PostgreSQL", metadata: ["error": "\(error)"])
        }
    }

    private func createDatabase(_ name: String, bin: String, logger: Logger) throws {
        guard name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
            throw SynclinePostgresError(.clusterSetup, "invalid database name \(name)")
        }
        let psql = bin + "/psql"
        let out = try Self.run(psql, ["-h", host, "-p", "\(port)", "-U", username, "-d", "postgres", "-tAc",
                                      "SELECT 1 FROM pg_database WHERE datname = '\(name)'"], logger: logger)
        if out.trimmingCharacters(in: .whitespacesAndNewlines) != "1" {
            _ = try Self.run(psql, ["-h", host, "-p", "\(port)", "-U", username, "-d", "postgres", "-qc",
                                    "CREATE DATABASE \(name)"], logger: logger)
        }
    }

    private func writeURL() throws {
        try (url + "\n").write(toFile: configuration.directory + "/postgres.url", atomically: true, encoding: .utf8)
    }

    /// The port of a postmaster already running on `data`, from its `postmaster.pid`.
    private static func runningPort(data: String) -> Int? {
        guard let pidFile = try? String(contentsOfFile: data + "/postmaster.pid", encoding: .utf8) else { return nil }
        let lines = pidFile.split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count > 3, let pid = Int32(lines[0]), let port = Int(lines[3]) else { return nil }
        guard kill(pid, 0) == 0 else { return nil }
        return port
    }

    /// Where initdb, pg_ctl and psql live: `$SYNCLINE_PG_BINDIR`, `pg_config --bindir`, or the
    /// newest `/usr/lib/postgresql/*/bin`.
    static func binDirectory() throws -> String {
        if let dir = ProcessInfo.processInfo.environment["SYNCLINE_PG_BINDIR"], !dir.isEmpty { return dir }
        if let out = try? run("/usr/bin/env", ["pg_config", "--bindir"], logger: Logger(label: "pg_config")),
           case let dir = out.trimmingCharacters(in: .whitespacesAndNewlines),
           FileManager.default.isExecutableFile(atPath: dir + "/initdb") {
            return dir
        }
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .compactMap(Int.init).sorted()
        if let newest = versions.last, FileManager.default.isExecutableFile(atPath: "\(root)/\(newest)/bin/initdb") {
            return "\(root)/\(newest)/bin"
        }
        throw SynclinePostgresError(.clusterSetup,
            "PostgreSQL server binaries not found (install postgresql, or set SYNCLINE_PG_BINDIR, or pass --database-url)")
    }

    private static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SynclinePostgresError(.clusterSetup, "socket() failed") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { ptr -> Bool in
                bind(fd, ptr, len) == 0 && getsockname(fd, ptr, &len) == 0
            }
        }
        guard bound else { throw SynclinePostgresError(.clusterSetup, "could not find a free port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    static func runPostgres(_ tool: String, _ args: [String], asRoot: Bool, logger: Logger) throws {
        if asRoot {
            _ = try run("/usr/sbin/runuser", ["-u", "postgres", "--", tool] + args, logger: logger)
        } else {
            _ = try run(tool, args, logger: logger)
        }
    }

    /// Runs a tool to completion, its output captured in a temporary file (not a pipe: pg_ctl's
    /// postmaster would inherit a pipe and hold it open) and waited for with waitpid. (Foundation's
    /// `Process.waitUntilExit` was seen to hang here, blocking the thread that called it.)
    @discardableResult
    public static func run(_ tool: String, _ args: [String], logger: Logger) throws -> String {
        let outputPath = NSTemporaryDirectory() + "syncline-\(UUID().uuidString).out"
        let fd = open(outputPath, O_CREAT | O_RDWR | O_TRUNC, 0o644)
        guard fd >= 0 else { throw SynclinePostgresError(.clusterSetup, "cannot create \(outputPath)") }
        defer {
            close(fd)
            unlink(outputPath)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fd, 1)
        posix_spawn_file_actions_adddup2(&actions, fd, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([tool] + args).map { strdup($0) } + [nil]
        defer { for arg in argv { free(arg) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, tool, &actions, nil, argv, environ)
        guard spawned == 0 else {
            throw SynclinePostgresError(.clusterSetup, "could not run \(tool): \(String(cString: strerror(spawned)))")
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        let exited = (status & 0x7f) == 0
        let code = (status >> 8) & 0xff
        guard exited && code == 0 else {
            throw SynclinePostgresError(.clusterSetup,
                "\((tool as NSString).lastPathComponent) \(args.prefix(6).joined(separator: " ")) failed (status \(status)): \(output)")
        }
        return output
    }
}

