import Foundation

extension Thread {
    /// Runs blocking `body` (a child process, a blocking socket) on a thread of its own. Swift
    /// concurrency's cooperative pool has one thread per core, two here: a test that blocks one of
    /// them, say for openssl or initdb, stalls every in-process server and every other test.
    static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread { continuation.resume(with: Result { try body() }) }
            thread.stackSize = 1 << 22
            thread.start()
        }
    }
}
