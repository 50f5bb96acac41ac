// swift-tools-version: 5.4
// 5.4, not later: from 5.5 on SwiftPM renames an executable's entry point (`<module>_main`, for
// testable executables) and links against that name, which a libFuzzer target never defines
// (libFuzzer brings `main`).
// libFuzzer targets for Syncline's decoders and state machines. A package of its own so that the
// main `swift build` never sees them: each target defines `LLVMFuzzerTestOneInput` and no `main`,
// and links only when built with `-sanitize=fuzzer`. Build and run them with `scripts/fuzz`
// (README.md here), which passes the sanitizer flags to every module, Syncline's and NIO's alike,
// so that libFuzzer's coverage feedback reaches the code under test.
import PackageDescription

let package = Package(
    name: "syncline-fuzz",
    dependencies: [
        .package(name: "syncline", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
    ],
    targets: [
        // JSONParser: parse ↔ render round trip.
        .executableTarget(
            name: "fuzz-json",
            dependencies: [.product(name: "SynclineProtocol", package: "syncline")]
        ),
        // ClientMessage.decode: typed errors only, limits hold, encode ↔ decode round trip.
        .executableTarget(
            name: "fuzz-client-message",
            dependencies: [.product(name: "SynclineProtocol", package: "syncline")]
        ),
        // NIO's frame decoder + WebSocketProtocolHandler (assembler, UTF-8, limits, close
        // handshake) + permessage-deflate, in an EmbeddedChannel; deflate/inflate round trips.
        .executableTarget(
            name: "fuzz-websocket",
            dependencies: [
                .product(name: "SynclineWebSocket", package: "syncline"),
                .product(name: "SynclineProtocol", package: "syncline"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ]
        ),
        // SessionStateMachine fed random event sequences, its invariants checked after each step.
        .executableTarget(
            name: "fuzz-session",
            dependencies: [
                .product(name: "SynclineCore", package: "syncline"),
                .product(name: "SynclineProtocol", package: "syncline"),
            ]
        ),
    ]
)
