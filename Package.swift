// swift-tools-version:6.2
import PackageDescription

// Hot, pure code (codecs, the Legion state machine and its simulator) is compiled with
// optimisation even in debug builds so the default test run can afford 10 000+ simulated scenarios.
let optimized: [SwiftSetting] = [.unsafeFlags(["-O"])]

let package = Package(
    name: "legion",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "legion", targets: ["LegionCLI"]),
        .library(name: "Legion", targets: ["Legion"]),
        .library(name: "Node", targets: ["Node"]),
        .library(name: "Api", targets: ["Api"]),
        .library(name: "NodeRuntime", targets: ["NodeRuntime"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        .target(name: "UwsgiWire", swiftSettings: optimized),
        .target(
            name: "Legion",
            dependencies: [
                "UwsgiWire",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: optimized
        ),
        .target(
            name: "Subscriptions",
            dependencies: [
                "UwsgiWire",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: optimized
        ),
        .target(name: "LegionSimulator", dependencies: ["Legion"], swiftSettings: optimized),
        // Debian's libdqlite-dev (scripts/setup installs it).
        .systemLibrary(name: "CDqlite", pkgConfig: "dqlite", providers: [.apt(["libdqlite-dev"])]),
        .target(
            name: "Store",
            dependencies: [
                "CDqlite",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]
        ),
        // fork/exec, pidfd and inotify wrappers for the process supervisor and the Emperor (Linux).
        .target(name: "CProcess"),
        .target(name: "Supervisor", dependencies: ["CProcess"]),
        .target(
            name: "Emperor",
            dependencies: [
                "Supervisor",
                "CProcess",
                "CRouterIO",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Loop mounts beneath a customer's home that follow no symlink (openat2), for loopboxes (Linux).
        .target(name: "CMount"),
        // epoll/eventfd/socket wrappers for the router's fast path (Linux).
        .target(name: "CRouterIO"),
        // Debian's libsqlite3-dev: the node-local metric store.
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        // Debian's libcurl4-openssl-dev: alarm delivery to webhooks and push services (a variadic C API, wrapped in C).
        .target(name: "CCurl", linkerSettings: [.linkedLibrary("curl")]),
        // Debian's libssl-dev (OpenSSL 3): TLS inside the router's fast-path loops.
        .target(name: "CFastTLS", linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]),
        // The Legion protocol thread's AES-256-GCM (OpenSSL's libcrypto, key schedule kept).
        .target(name: "CLegionAEAD", linkerSettings: [.linkedLibrary("crypto")]),
        .target(
            name: "Node",
            dependencies: [
                "CRouterIO",
                "CMount",
                "CSQLite",
                "CCurl",
                "CFastTLS",
                "CLegionAEAD",
                "Emperor",
                "Supervisor",
                "Legion",
                "Subscriptions",
                "UwsgiWire",
                "Store",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "Api",
            dependencies: [
                "Node",
                "Legion",
                "Store",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            exclude: ["Dashboard/Assets"]
        ),
        .target(
            name: "NodeRuntime",
            dependencies: [
                "Node",
                "Api",
                "Emperor",
                "Store",
                "Subscriptions",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "LegionCLI",
            dependencies: [
                "NodeRuntime",
                "Emperor",
                "Supervisor",
                "Node",
                "Api",
                "Legion",
                "LegionSimulator",
                "Subscriptions",
                "Store",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
        .target(name: "TestSupport", dependencies: ["UwsgiWire"], path: "Tests/TestSupport"),
        .testTarget(name: "UwsgiWireTests", dependencies: ["UwsgiWire", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "LegionTests", dependencies: ["Legion", "UwsgiWire", "LegionSimulator", "TestSupport"], resources: [.copy("Fixtures")],
                    swiftSettings: optimized),
        .testTarget(name: "SubscriptionsTests", dependencies: ["Subscriptions", "UwsgiWire", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "EmperorTests", dependencies: ["Emperor", "Supervisor", "LegionSimulator"]),
        .testTarget(name: "StoreTests", dependencies: ["Store", "TestSupport", .product(name: "NIOCore", package: "swift-nio"),
                                                       .product(name: "NIOPosix", package: "swift-nio")]),
        .testTarget(name: "NodeTests", dependencies: ["Node", "Legion", "Api", "LegionSimulator", "Emperor", "Store", "Supervisor", "TestSupport",
                                                      .product(name: "NIOCore", package: "swift-nio"),
                                                      .product(name: "NIOPosix", package: "swift-nio"),
                                                      .product(name: "NIOHTTP1", package: "swift-nio"),
                                                      .product(name: "NIOEmbedded", package: "swift-nio")]),
    ],
    swiftLanguageModes: [.v6]
)
