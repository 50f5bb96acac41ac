import Foundation

/// The browser client library (`syncline.js` and its `syncline.d.ts`) shipped with the server as
/// SwiftPM resources, so `syncline serve` can serve it at `/client/…` with nothing to build.
/// SwiftPM wants a resource inside its target's folder, hence this one-file target in
/// `clients/js`.
public enum SynclineWebClient {
    /// The files, by the name they are served under (`/client/<name>`).
    public static let fileNames = ["syncline.js", "syncline.d.ts"]

    /// Where the shipped copy of `name` (one of `fileNames`) is.
    public static func url(of name: String) -> URL? {
        Bundle.module.url(forResource: name, withExtension: nil)
    }
}
