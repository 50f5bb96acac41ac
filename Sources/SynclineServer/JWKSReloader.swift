import Dispatch
import Foundation
import Logging
import ServiceLifecycle

/// Re-reads `--jwks-file` on SIGHUP and swaps the verification keys in place: open connections
/// stay open (their tokens were checked when they arrived; the next `auth` refresh meets the new
/// keys). A file that cannot be read or does not load logs an error and keeps the current keys.
struct JWKSReloader: Service {
    let path: String
    let authenticator: Authenticator
    let logger: Logger

    func run() async throws {
        let (signals, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        // Without SIG_IGN the default action of SIGHUP ends the process; the dispatch source still
        // sees ignored signals.
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        source.setEventHandler { continuation.yield() }
        source.resume()
        defer { source.cancel() }
        logger.info("JWKS: send SIGHUP to reload", metadata: ["file": "\(path)", "kids": "\(authenticator.keyIDs.joined(separator: ","))"])
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                await reload()
            }
        }
        continuation.finish()
    }

    /// One reload; public to the module so tests of the reload itself need no signal.
    func reload() async {
        do {
            let json = try String(contentsOfFile: path, encoding: .utf8)
            try await authenticator.reloadJWKS(json)
            logger.notice("JWKS reloaded", metadata: ["file": "\(path)", "kids": "\(authenticator.keyIDs.joined(separator: ","))"])
        } catch {
            logger.error("JWKS reload failed; keeping the previous keys", metadata: [
                "file": "\(path)", "error": "\(error)", "kids": "\(authenticator.keyIDs.joined(separator: ","))",
            ])
        }
    }
}
