import Foundation
import NIOConcurrencyHelpers

/// Child processes for the tests without Foundation's `Process`: on Linux its `run()` (Swift 6.3.1's
/// swift-corelibs-foundation) can over-read a directory entry while listing /proc/self/fd and
/// SIGSEGV, which took the whole parallel test process down (swiftlang/swift-corelibs-foundation
/// #5472). Here: posix_spawn, with every descriptor from 3 up closed in the child as `Process` does
/// (so a child never holds another's pipe or a test server's socket), and output to files rather
/// than pipes (nothing to drain, no deadlock).
enum Spawn {
    /// Starts `executable`; returns its pid. The descriptors become the child's 0, 1 and 2.
    static func start(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                      stdin: Int32, stdout: Int32, stderr: Int32) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdin, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)
        guard let closeFrom = addCloseFrom else { throw TestFailure("posix_spawn_file_actions_addclosefrom_np is missing (glibc ≥ 2.34 needed)") }
        closeFrom(&actions, 3)
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for arg in argv { free(arg) } }
        let envp: [UnsafeMutablePointer<CChar>?] = (environment ?? ProcessInfo.processInfo.environment)
            .map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for entry in envp { free(entry) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        guard spawned == 0 else { throw TestFailure("could not run \(executable): \(String(cString: strerror(spawned)))") }
        return pid
    }

    /// Runs `executable` to completion with `input` on its stdin; returns its exit status and output.
    static func run(_ executable: String, _ arguments: [String], input: [UInt8] = []) throws -> (status: Int32, output: [UInt8], error: [UInt8]) {
        let files = try (0..<3).map { _ in try TemporaryFile() }
        defer { for file in files { file.remove() } }
        _ = input.withUnsafeBytes { write(files[0].fd, $0.baseAddress, $0.count) }
        lseek(files[0].fd, 0, SEEK_SET)
        let pid = try start(executable, arguments, stdin: files[0].fd, stdout: files[1].fd, stderr: files[2].fd)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (exitStatus(status), files[1].contents(), files[2].contents())
    }

    /// The exit code, or the signal's number for a child a signal ended (as `Process` reports it).
    static func exitStatus(_ status: Int32) -> Int32 {
        (status & 0x7f) == 0 ? (status >> 8) & 0xff : status & 0x7f
    }

    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    /// Not in Swift's Glibc module, so looked up by name.
    private static let addCloseFrom: AddCloseFrom? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np")
        .map { unsafeBitCast($0, to: AddCloseFrom.self) }
}

/// An unlinked-on-remove temporary file, open for reading and writing.
struct TemporaryFile {
    let path = NSTemporaryDirectory() + "syncline-spawn-\(UUID().uuidString)"
    let fd: Int32

    init() throws {
        fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw TestFailure("cannot create \(path): \(String(cString: strerror(errno)))") }
    }

    /// Everything from `offset` on.
    func contents(from offset: Int = 0) -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        var at = off_t(offset)
        while true {
            let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, at) }
            guard n > 0 else { break }
            bytes += chunk[..<n]
            at += off_t(n)
        }
        return bytes
    }

    func remove() {
        close(fd)
        unlink(path)
    }
}
