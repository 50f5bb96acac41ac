import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SynclineClient

/// A child process (the `syncline` server, or the Swift client example) whose output lines are
/// collected, and which can be stopped with SIGTERM or killed with SIGKILL. Spawned with `Spawn`
/// (not Foundation's `Process`, which can crash the test process); its stdin is a pipe, its
/// stdout and stderr one file, read as it grows.
final class ChildProcess: Sendable {
    private struct State {
        var exitStatus: Int32?
        var readOffset = 0
        var partial: [UInt8] = []
        var lines: [String] = []
    }

    private let state = NIOLockedValueBox(State())
    private let output: TemporaryFile
    /// Our end of the child's stdin.
    private let inputFD: Int32
    let pid: Int32
    let name: String

    static func binary(_ name: String) -> String { repositoryRoot + "/.build/debug/" + name }

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], name: String) throws {
        self.name = name
        var env = ProcessInfo.processInfo.environment
        env["SYNCLINE_CLIENT_CRASH_AT"] = nil
        for (k, v) in environment { env[k] = v }
        output = try TemporaryFile()
        var ends: [Int32] = [-1, -1]
        // (Close-on-exec for a child spawned elsewhere meanwhile; ours closes them anyway.)
        guard pipe(&ends) == 0 else { throw TestFailure("pipe: \(String(cString: strerror(errno)))") }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        do {
            pid = try Spawn.start(executable, arguments, environment: env, stdin: ends[0], stdout: output.fd, stderr: output.fd)
        } catch {
            close(ends[0])
            close(ends[1])
            output.remove()
            throw error
        }
        close(ends[0])
        inputFD = ends[1]
    }

    /// Every complete line written so far.
    var lines: [String] {
        state.withLockedValue { state in
            let new = output.contents(from: state.readOffset)
            state.readOffset += new.count
            state.partial += new
            while let newline = state.partial.firstIndex(of: UInt8(ascii: "\n")) {
                state.lines.append(String(decoding: state.partial[..<newline], as: UTF8.self))
                state.partial.removeSubrange(...newline)
            }
            return state.lines
        }
    }

    var isRunning: Bool {
        state.withLockedValue { state in
            guard state.exitStatus == nil else { return false }
            var status: Int32 = 0
            guard waitpid(pid, &status, WNOHANG) == pid else { return true }
            state.exitStatus = Spawn.exitStatus(status)
            return false
        }
    }

    func write(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(inputFD, $0.baseAddress, $0.count) }
    }

    /// Waits for an output line containing `text`; returns it.
    @discardableResult
    func waitForLine(containing text: String, timeout: Duration = .seconds(30)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let line = lines.first(where: { $0.contains(text) }) { return line }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestFailure("\(name): no line containing '\(text)' within \(timeout); output:\n" + lines.suffix(40).joined(separator: "\n"))
    }

    /// Waits for the process to end; returns its exit code (or the number of the signal that ended it).
    @discardableResult
    func waitForExit(timeout: Duration = .seconds(30)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while isRunning {
            guard ContinuousClock.now < deadline else {
                kill(pid, SIGKILL)
                throw TestFailure("\(name) did not exit within \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return state.withLockedValue { $0.exitStatus ?? -1 }
    }

    func signal(_ signal: Int32) {
        if isRunning { kill(pid, signal) }
    }

    deinit {
        if isRunning {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        close(inputFD)
        output.remove()
    }
}

/// `syncline serve --demo` as a child process on a fixed port over a test database, so it can be
/// killed (SIGKILL) or stopped (SIGTERM) and started again on the same port and data.
final class ServerProcess: Sendable {
    let database: TestDatabase
    let port: Int
    private let current = NIOLockedValueBox<ChildProcess?>(nil)

    var url: String { "ws://127.0.0.1:\(port)/v1/sync" }

    init(database: TestDatabase? = nil) async throws {
        if let database {
            self.database = database
        } else {
            self.database = TestDatabase(url: try await TestCluster.makeDatabase())
        }
        port = try freePort()
    }

    /// Starts the server and waits until `/readyz` answers 200.
    func start() async throws {
        let child = try ChildProcess(ChildProcess.binary("syncline"), [
            "serve", "--database-url", database.url, "--port", "\(port)", "--demo", "--no-demo-generator",
            "--insecure-dev-auth", "--heartbeat-ms", "2000", "--event-loop-threads", "1", "--log-level", "warning",
        ], name: "syncline serve :\(port)")
        current.withLockedValue { $0 = child }
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if !child.isRunning { throw TestFailure("the server exited:\n" + child.lines.joined(separator: "\n")) }
            if let answer = try? await RawHTTP.request(port: port, "GET /readyz HTTP/1.1\nHost: x\nConnection: close\n\n"),
               answer.hasPrefix("HTTP/1.1 200") {
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestFailure("the server never became ready:\n" + child.lines.joined(separator: "\n"))
    }

    /// Stops the server with `signal` (SIGTERM: graceful, 1001 to clients; SIGKILL: gone at once).
    func stop(_ signal: Int32 = SIGTERM) async throws {
        guard let child = current.withLockedValue({ $0 }) else { return }
        child.signal(signal)
        try await child.waitForExit()
        current.withLockedValue { $0 = nil }
    }
}

/// A fresh path for a client's SQLite store, removed with its WAL by `remove`.
struct TempStorePath {
    let path = NSTemporaryDirectory() + "syncline-client-\(UUID().uuidString).sqlite"
    func remove() {
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }
}

/// Waits until `condition` holds, polling; fails after `timeout` with `what`.
func eventually(_ what: String, timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw TestFailure("timed out waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(20))
    }
}

/// A client of `url` as alice (unsigned dev tokens) over `store`.
func makeClient(url: String, store: any ClientStore, sub: String = "alice", cap: Duration = .seconds(10)) -> SynclineClient {
    var configuration = SynclineClient.Configuration()
    configuration.backoffCap = cap
    configuration.logger.logLevel = .error
    return SynclineClient(url: url, tokenProvider: { DevToken.unsigned(sub: sub) }, store: store, configuration: configuration)
}
