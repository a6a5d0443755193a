// swift-tools-version:6.1
import PackageDescription

/// Strict concurrency everywhere: every target builds in the Swift 6 language mode.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "gantry",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "gantry", targets: ["GantryCLI"]),
        .executable(name: "gantry-worker", targets: ["GantryWorkerMain"]),
        .executable(name: "gantry-coordinator", targets: ["GantryCoordinatorMain"]),
        .executable(name: "gantry-kafka-dev", targets: ["GantryKafkaDevBroker"]),
        .executable(name: "gantry-bench", targets: ["GantryBenchmarks"]),
        .executable(name: "gantry-example-worker", targets: ["ExampleWorker"]),
        .library(name: "GantryCore", targets: ["GantryCore"]),
        .library(name: "GantryWorker", targets: ["GantryWorker"]),
        .library(name: "GantryTasks", targets: ["GantryTasks"]),
        .library(name: "GantryWorkerApp", targets: ["GantryWorkerApp"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // MARK: C shims over Debian's -dev packages
        .systemLibrary(
            name: "CRdKafka",
            pkgConfig: "rdkafka",
            providers: [.apt(["librdkafka-dev"])]
        ),
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),

        // MARK: Domain core and wires
        .target(
            name: "GantryCore",
            dependencies: [
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "GantryRedis",
            dependencies: ["CHiredis", "GantryCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "GantryKafka",
            dependencies: ["CRdKafka", "GantryCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "GantryAMQP",
            dependencies: ["CRabbitMQ", "GantryCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),

        .target(
            name: "GantryStore",
            dependencies: ["GantryCore", "GantryRedis", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),

        // MARK: Runtime
        .target(
            name: "GantryRuntime",
            dependencies: ["GantryCore", "GantryRedis", "GantryStore", "GantryKafka", "GantryAMQP", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "GantryTasks",
            dependencies: [
                "GantryCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "GantryWorker",
            dependencies: [
                "GantryCore", "GantryTasks", "GantryRedis", "GantryStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "GantryCoordinator",
            dependencies: [
                "GantryCore", "GantryRedis", "GantryStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: Observability: /healthz, /readyz, /metrics and the dashboard
        .target(
            name: "GantryObservability",
            dependencies: [
                "GantryCore", "GantryRedis", "GantryStore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "GantryDashboard",
            dependencies: [
                "GantryCore", "GantryStore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),

        /// The standard worker executable as a library: `gantry-worker` and users' own workers.
        .target(
            name: "GantryWorkerApp",
            dependencies: [
                "GantryCore", "GantryTasks", "GantryWorker", "GantryRuntime", "GantryObservability",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: Executables (thin)
        .executableTarget(
            name: "GantryCLI",
            dependencies: [
                "GantryCore", "GantryTasks", "GantryStore", "GantryWorker", "GantryCoordinator", "GantryRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "GantryWorkerMain",
            dependencies: [
                "GantryWorker", "GantryTasks", "GantryRuntime", "GantryObservability", "GantryWorkerApp",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "GantryCoordinatorMain",
            dependencies: [
                "GantryCoordinator", "GantryRuntime", "GantryObservability", "GantryDashboard",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "GantryKafkaDevBroker",
            dependencies: [
                "GantryKafka",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),

        .executableTarget(
            name: "GantryBenchmarks",
            dependencies: [
                "GantryCore", "GantryRedis", "GantryStore", "GantryKafka", "GantryAMQP",
                "GantryRuntime", "GantryWorker", "GantryCoordinator", "GantryTasks",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: swiftSettings
        ),

        /// The README's "Your own tasks" example: one custom task plus the standard worker.
        .executableTarget(
            name: "ExampleWorker",
            dependencies: ["GantryCore", "GantryWorkerApp"],
            swiftSettings: swiftSettings
        ),

        /// A child for the process-pool tests: the built-in tasks plus misbehaving ones (crash, hang, grow).
        .executableTarget(
            name: "GantryPoolTestChild",
            dependencies: ["GantryCore", "GantryTasks", "GantryWorker"],
            swiftSettings: swiftSettings
        ),

        // MARK: Tests
        .testTarget(
            name: "GantryUnitTests",
            dependencies: ["GantryCore", "GantryTasks", "GantryWorker", "GantryCoordinator", "GantryObservability", "GantryDashboard"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "GantryIntegrationTests",
            dependencies: ["GantryCore", "GantryRedis", "GantryStore", "GantryKafka", "GantryAMQP", "GantryWorker", "GantryCoordinator", "GantryPoolTestChild", "GantryObservability", "GantryDashboard",
                "GantryTasks", "GantryRuntime", .product(name: "Hummingbird", package: "hummingbird")],
            swiftSettings: swiftSettings
        ),
    ]
)
