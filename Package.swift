// swift-tools-version: 6.2
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "syncline",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "syncline", targets: ["syncline"]),
        .executable(name: "syncline-bench", targets: ["syncline-bench"]),
        .library(name: "SynclineProtocol", targets: ["SynclineProtocol"]),
        .library(name: "SynclineServer", targets: ["SynclineServer"]),
        // For Fuzz/ (its own package, built by scripts/fuzz), which links only these two and NIO.
        .library(name: "SynclineCore", targets: ["SynclineCore"]),
        .library(name: "SynclineWebSocket", targets: ["SynclineWebSocket"]),
        .library(name: "SynclineClient", targets: ["SynclineClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.0"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.7.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.0"),
        .package(url: "https://github.com/hummingbird-project/swift-websocket.git", from: "1.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.0.0"),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.13.0"),
        // Already used by jwt-kit; the server hashes static files with it (ETags).
        .package(url: "https://github.com/apple/swift-crypto.git", "4.1.0"..<"6.0.0"),
        // Spans for subscribe, snapshot and mutation; no-ops unless a tracer is bootstrapped.
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.1.0"),
    ],
    targets: [
        // Wire types, cursors and codes. No I/O; shared with clients.
        .target(
            name: "SynclineProtocol",
            swiftSettings: strict
        ),
        // I/O-free state machines and indexes: session, subscription index, filters.
        .target(
            name: "SynclineCore",
            dependencies: ["SynclineProtocol", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strict
        ),
        // Everything that talks to PostgreSQL.
        .target(
            name: "SynclinePostgres",
            dependencies: [
                "SynclineCore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // System zlib (Debian: zlib1g-dev) for permessage-deflate.
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", providers: [.apt(["zlib1g-dev"])]),
        // The RFC 6455/7692 layer: frames, reassembly, UTF-8, limits, close handshake,
        // permessage-deflate. Apart from the server (no HTTP, no Postgres) so fuzz builds stay small.
        .target(
            name: "SynclineWebSocket",
            dependencies: [
                "SynclineProtocol",
                "CZlib",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // The browser client (clients/js/syncline.js and .d.ts), shipped as resources so that
        // `syncline serve` serves it at /client/. Resources must live in their target's folder.
        .target(
            name: "SynclineWebClient",
            path: "clients/js",
            exclude: ["README.md", "test"],
            sources: ["SynclineWebClient.swift"],
            resources: [.copy("syncline.js"), .copy("syncline.d.ts")],
            swiftSettings: strict
        ),
        // HTTP routes, the WebSocket endpoint, auth, fan-out, metrics, lifecycle.
        .target(
            name: "SynclineServer",
            dependencies: [
                "SynclineCore",
                "SynclinePostgres",
                "SynclineWebClient",
                "SynclineWebSocket",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            resources: [.copy("Resources/dashboard.html"), .copy("Resources/dashboard-sw.js")],
            swiftSettings: strict
        ),
        // The Swift client SDK: an I/O-free core (ClientCore) and its shell (WebSocket, SQLite store).
        .target(
            name: "SynclineClient",
            dependencies: [
                "SynclineProtocol",
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // A console app on SynclineClient: one account's live query and transfers typed at the prompt.
        .executableTarget(
            name: "syncline-swift-client-example",
            dependencies: ["SynclineClient"],
            path: "examples/swift-client",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "syncline",
            dependencies: [
                "SynclineServer",
                "SynclineWebSocket",
                "SynclineClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        // scripts/chaos's clients: N SynclineClient instances recording histories for check-history.
        .executableTarget(
            name: "syncline-chaos-client",
            dependencies: [
                "SynclineClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // The Autobahn|Testsuite echo endpoint over the server's WebSocket layer (scripts/autobahn).
        .executableTarget(
            name: "syncline-ws-echo",
            dependencies: [
                "SynclineServer",
                "SynclineWebSocket",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "syncline-bench",
            dependencies: [
                "SynclineProtocol",
                "CZlib",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            path: "bench/Sources/syncline-bench",
            swiftSettings: strict
        ),
        // The fan-out's instructions per delivery, in process (valgrind callgrind; bench/README.md).
        .executableTarget(
            name: "syncline-fanout-cost",
            dependencies: ["SynclineServer"],
            path: "bench/Sources/syncline-fanout-cost",
            swiftSettings: strict
        ),
        .testTarget(
            name: "SynclineCoreTests",
            dependencies: ["SynclineCore", "SynclineProtocol", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strict
        ),
        // SyncConnection without sockets or PostgreSQL: NIOAsyncTestingChannel, the real hub and
        // authenticator, in-memory feeds, client registry and mutation submitter.
        .testTarget(
            name: "SynclineServerTests",
            dependencies: [
                "SynclineServer",
                "SynclineWebSocket",
                "SynclineCore",
                "SynclinePostgres",
                "SynclineProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SynclineClientTests",
            dependencies: ["SynclineClient", "SynclineProtocol"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SynclineIntegrationTests",
            dependencies: [
                "SynclineServer",
                "SynclineWebSocket",
                "SynclineClient",
                "SynclineProtocol",
                "SynclinePostgres",
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "WSCore", package: "swift-websocket"),
                .product(name: "WSCompression", package: "swift-websocket"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
    ]
)
