import Foundation
import GantryAMQP
import GantryCore
import GantryCoordinator
import GantryKafka
import GantryRedis
import GantryStore
import GantryTasks
import GantryWorker
import Logging
import ServiceLifecycle
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real brokers a worker runs on in ``WorkerBrokerTests``.
enum WorkerBroker: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case rabbitmq
    case kafka

    var testDescription: String { rawValue }
}

/// One test's slice of the local stack: a private Redis namespace, a UUID-named queue (topic)
/// and Kafka consumer group, a transport on the real broker and a dispatcher publishing to it.
struct BrokerCluster: Sendable {
    let broker: WorkerBroker
    let namespace: String
    let queue: String
    let kafkaGroup: String
    let store: RedisStateStore
    let transport: any TaskTransport
    let dispatcher: TaskDispatcher

    /// Kafka members here heartbeat often and expire fast, so that a killed worker's
    /// partitions move to the survivor within seconds instead of librdkafka's 45.
    static let kafkaConsumerProperties = ["session.timeout.ms": "3000", "heartbeat.interval.ms": "300"]

    static func make(_ broker: WorkerBroker) async throws -> BrokerCluster {
        let suffix = UUID().uuidString.prefix(12).lowercased()
        let namespace = "gantry-wb-\(suffix)"
        let queue = "wb-\(suffix)"
        let group = KafkaTestEnvironment.group("worker")
        var redis = try RedisConfiguration(url: RedisTestEnvironment.url)
        redis.poolSize = 8
        let store = RedisStateStore(client: try RedisClient(configuration: redis), configuration: StoreConfiguration(namespace: namespace))
        let transport: any TaskTransport
        switch broker {
        case .rabbitmq:
            transport = try await RabbitMQConformanceTransport.make()
        case .kafka:
            var configuration = KafkaConformanceTransport.configuration(group: group)
            configuration.consumerProperties.merge(kafkaConsumerProperties) { _, new in new }
            transport = try KafkaTransport(configuration: configuration)
        }
        try await transport.declare(queues: [queue])
        return BrokerCluster(
            broker: broker, namespace: namespace, queue: queue, kafkaGroup: group, store: store, transport: transport,
            dispatcher: TaskDispatcher(store: store, transport: transport)
        )
    }

    /// A worker on this cluster's queue with a short lease, so lost work comes back in seconds.
    func worker(_ registry: TaskRegistry, pool: ChildProcessPool? = nil, configure: (inout WorkerConfiguration) -> Void = { _ in }) throws -> Worker {
        var configuration = WorkerConfiguration(
            queues: [queue], concurrency: 4, lease: .seconds(2), renewInterval: .milliseconds(400),
            heartbeatInterval: .milliseconds(200), drainTimeout: .seconds(10)
        )
        configure(&configuration)
        var logger = Logger(label: "test-worker")
        logger.logLevel = .warning
        return try Worker(configuration: configuration, registry: registry, store: store, transport: transport, dispatcher: dispatcher, pool: pool, logger: logger)
    }

    func coordinator() -> Coordinator {
        var logger = Logger(label: "test-coordinator")
        logger.logLevel = .warning
        return Coordinator(configuration: CoordinatorConfiguration(leaderLease: .seconds(2), sweepInterval: .milliseconds(50)), store: store, dispatcher: dispatcher, logger: logger)
    }

    /// Submits a pipeline of `stages` (YAML list items) on this cluster's queue.
    func submit(_ stages: String, input: String = "", registry: TaskRegistry) async throws -> RunID {
        let yaml = "name: p\ndefaults: { queue: \(queue) }\nstages:\n" + stages
        let plan = try PipelinePlan(PipelineSpec.parse(yaml: yaml, knownTasks: registry.names))
        return try await dispatcher.submit(plan, input: Array(input.utf8)).runID
    }

    func waitForEnd(_ run: RunID, timeout: Duration = .seconds(30)) async throws -> RunState {
        try await waitForRunEnd(run, in: store, timeout: timeout)
    }

    /// Waits until `run`'s first stage is running and returns its lease owner.
    func waitUntilRunning(_ run: RunID, timeout: Duration = .seconds(20)) async throws -> String {
        var owner: String?
        try await redisWaitUntil("the task of \(run) to start", timeout: timeout) {
            let stage = try await store.status(run).stages[0]
            owner = stage.state == .running ? stage.owner : nil
            return owner != nil
        }
        return owner!
    }

    /// A configuration file for a `gantry-worker` process on this cluster (short lease, one
    /// pool child, `exec` allowed to run `sh`).
    func workerConfigFile() throws -> String {
        let environment = ProcessInfo.processInfo.environment
        let kafkaProperties = Self.kafkaConsumerProperties.map { "\"\($0.key)\": \"\($0.value)\"" }.sorted().joined(separator: ", ")
        let yaml = """
            redis: { url: "\(RedisTestEnvironment.url)" }
            broker:
              kind: \(broker.rawValue)
              rabbitmq_url: "\(environment[AMQPConfiguration.environmentKey] ?? AMQPConfiguration.defaultURL)"
              kafka_brokers: "\(KafkaTestEnvironment.brokers)"
              kafka_group: "\(kafkaGroup)"
              kafka_properties: { \(kafkaProperties) }
            store: { namespace: "\(namespace)" }
            worker: { queues: [\(queue)], concurrency: 4, lease: 2s, renew_interval: 400ms, drain_timeout: 15s }
            pool: { size: 1, termination_grace: 500ms }
            tasks: { exec_allow: [sh] }
            log: { level: info }
            """
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-worker-\(namespace).yaml").path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func close() async {
        await transport.close()
    }
}

/// Runs `services` in a ServiceGroup while `body` runs, then shuts the group down gracefully
/// (every integration suite that runs workers, coordinators or servers in-process uses it).
func withWorkerServices<T: Sendable>(_ services: [any Service], _ body: () async throws -> T) async throws -> T {
    var logger = Logger(label: "test")
    logger.logLevel = .warning
    let group = ServiceGroup(services: services, logger: logger)
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        do {
            let result = try await body()
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return result
        } catch {
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            throw error
        }
    }
}

/// A Gantry executable (`gantry-worker`, `gantry-example-worker`) run as a separate process by
/// a test, with its standard error in a file for the test to show when it fails.
final class SpawnedWorker: @unchecked Sendable {
    // @unchecked: `Process` is a class the tests only read after start (pid, isRunning, status),
    // which Foundation makes safe to call from any thread.
    let process: Process
    let logFile: URL

    var pid: Int32 { process.processIdentifier }

    /// The product `name` next to the test bundle.
    static func executable(_ name: String) -> String {
        let products = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        return products.appendingPathComponent(name).path
    }

    /// Starts `name --config config …` with no `GANTRY_*` variables of the test's environment
    /// (the file says everything), from a thread whose signal mask is empty: cooperative-pool
    /// threads block signals, and a child inherits the mask, so SIGTERM would never arrive.
    static func start(_ name: String = "gantry-worker", config: String, arguments: [String] = []) async throws -> SpawnedWorker {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable(name))
        process.arguments = ["--config", config] + arguments
        process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("GANTRY_") }
        let logFile = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-worker-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: logFile.path, contents: nil)
        process.standardError = try FileHandle(forWritingTo: logFile)
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try await launchWithSignalsUnblocked(process)
        return SpawnedWorker(process: process, logFile: logFile)
    }

    private init(process: Process, logFile: URL) {
        self.process = process
        self.logFile = logFile
    }

    /// The last lines the process logged.
    var logTail: String {
        let text = (try? String(contentsOf: logFile, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(25).joined(separator: "\n")
    }

    func signal(_ number: Int32) {
        kill(pid, number)
    }

    /// Waits for the process to exit and returns its exit status, or nil if a signal ended it.
    func waitForExit(timeout: Duration = .seconds(30)) async throws -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            guard ContinuousClock.now < deadline else {
                kill(pid, SIGKILL)
                throw GantryError(.timeout, "\(process.executableURL?.lastPathComponent ?? "worker") (pid \(pid)) did not exit within \(timeout); its log ends:\n\(logTail)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return process.terminationReason == .exit ? process.terminationStatus : nil
    }

    /// Waits until this process's worker has written its heartbeat to the cluster's Redis.
    func waitUntilRegistered(in cluster: BrokerCluster, timeout: Duration = .seconds(30)) async throws {
        let marker = ":\(pid):"
        do {
            try await redisWaitUntil("worker pid \(pid) to heartbeat", timeout: timeout) {
                guard process.isRunning else { throw GantryError(.closed, "the worker exited early") }
                return try await cluster.store.workers().contains { $0.id.contains(marker) }
            }
        } catch {
            throw GantryError(.timeout, "\(error); its log ends:\n\(logTail)")
        }
    }

    /// Stops the process if it still runs and removes its log.
    func cleanUp() async {
        if process.isRunning {
            kill(pid, SIGKILL)
            _ = try? await waitForExit(timeout: .seconds(10))
        }
        try? FileManager.default.removeItem(at: logFile)
    }
}

/// Tasks the in-process worker registers under the names the pool's test child serves, so the
/// worker accepts them; they only ever run in a child (stages of `kind: cpu`).
func poolOnlyTasks(_ names: [String]) -> TaskRegistry {
    var registry = TaskRegistry()
    for name in names {
        registry.register(name, kind: .cpu) { _, _ in
            throw GantryError(.configuration, "'\(name)' runs in the pool's test child only; give its stage kind: cpu")
        }
    }
    return registry
}
