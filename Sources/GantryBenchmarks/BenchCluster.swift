import ArgumentParser
import Foundation
import GantryAMQP
import GantryCore
import GantryCoordinator
import GantryRuntime
import GantryStore
import GantryTasks
import GantryWorker
import Logging
import ServiceLifecycle
import Synchronization

/// Where a scenario's workers run.
enum WorkerMode: String, ExpressibleByArgument, Sendable {
    /// The real `gantry-worker` (and `gantry-coordinator`) executables, siblings of gantry-bench,
    /// configured through a settings file: what an operator runs, and what memory is measured on.
    case process
    /// A ``Worker`` and a ``Coordinator`` inside gantry-bench, as a ServiceGroup.
    case inProcess = "in-process"
}

/// The executables a scenario may start, found next to gantry-bench in the build directory.
enum Executable {
    static var directory: URL {
        let own = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: own).deletingLastPathComponent()
    }

    /// The path of sibling `name` (`gantry-worker`, `gantry-coordinator`, `gantry-bench`).
    static func path(_ name: String) -> String {
        directory.appendingPathComponent(name).path
    }
}

/// A Gantry cluster for one benchmark or fault-injection run: its own Redis namespace, queue
/// prefix and Kafka group on the servers named by the settings, a connected runtime for
/// submitting and checking, and the workers and coordinators started for it — real processes
/// (``WorkerMode/process``) or services inside gantry-bench (``WorkerMode/inProcess``).
final class BenchCluster: Sendable {
    /// The settings every process of the run uses.
    let settings: GantrySettings
    /// gantry-bench's own connections.
    let runtime: GantryRuntime
    /// The run's files: the settings file its processes read and their logs.
    let directory: URL
    /// A short id of the run, in its namespace and queue names.
    let tag: String
    let logger: Logger
    private let processes = Mutex<[ChildProcess]>([])
    private let counters = Mutex<[String: Int]>([:])
    private let inProcess = Mutex<(group: ServiceGroup, task: Task<Void, any Error>)?>(nil)

    var store: RedisStateStore { runtime.store }
    var broker: String { (try? settings.string("broker.kind")) ?? "?" }

    private init(settings: GantrySettings, runtime: GantryRuntime, directory: URL, tag: String, logger: Logger) {
        self.settings = settings
        self.runtime = runtime
        self.directory = directory
        self.tag = tag
        self.logger = logger
    }

    /// Prepares a run on `broker`: settings from config/gantry.yaml and the environment, then
    /// a namespace, queue prefix and Kafka group of its own, then `overrides`; writes them to
    /// `<stateDirectory>/<kind>/<tag>/gantry.json` for the processes it starts; connects.
    static func make(
        broker: String, kind: String, stateDirectory: String, overrides: [String: JSONValue] = [:], logLevel: Logger.Level = benchLogLevel,
        tag: String = String(UUID().uuidString.prefix(8)).lowercased(), directory explicitDirectory: URL? = nil
    ) async throws -> BenchCluster {
        var settings = try GantrySettings.forProcess(explicitFile: nil)
        settings.set("broker.kind", .string(broker), source: "--broker")
        settings.set("store.namespace", .string("gantry-\(kind)-\(tag)"), source: kind)
        settings.set("broker.queue_prefix", .string("gantry-\(kind)-\(tag)."), source: kind)
        settings.set("broker.kafka_group", .string("gantry-\(kind)-\(tag)"), source: kind)
        settings.set("store.retention", .string("30m"), source: kind)
        settings.set("store.result_ttl", .string("30m"), source: kind)
        settings.set("log.level", .string("warning"), source: kind)
        // Several coordinators run at once, next to whatever else runs here: any free port.
        for key in ["observability.coordinator_listen", "observability.worker_listen"] where GantrySettings.defaults[key] != nil {
            settings.set(key, .string("127.0.0.1:0"), source: kind)
        }
        for (key, value) in overrides { settings.set(key, value, source: kind) }

        let directory = explicitDirectory ?? URL(fileURLWithPath: stateDirectory).appendingPathComponent(kind).appendingPathComponent("\(broker)-\(tag)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var sections: [String: [String: JSONValue]] = [:]
        // Only what differs from the defaults, so a worker built a little earlier or later
        // than gantry-bench still reads the file.
        for (name, value) in settings.values where GantrySettings.defaults[name] != value {
            guard let dot = name.firstIndex(of: ".") else { continue }
            sections[String(name[..<dot]), default: [:]][String(name[name.index(after: dot)...])] = value
        }
        // JSON is YAML, so the settings loader reads this file as it reads config/gantry.yaml.
        try Data(JSONValue.object(sections.mapValues { .object($0) }).jsonBytes)
            .write(to: directory.appendingPathComponent("gantry.json"))

        var logger = Logger(label: "gantry.bench")
        logger.logLevel = logLevel
        let runtime = try await GantryRuntime.connect(settings: settings, logger: logger)
        try await runtime.transport.declare(queues: try settings.strings("worker.queues"))
        ProcessRegistry.shared.installSignalHandlers()
        return BenchCluster(settings: settings, runtime: runtime, directory: directory, tag: tag, logger: logger)
    }

    // MARK: Processes

    /// The environment of a started process: this one's without any `GANTRY_*` variable (they
    /// would override the run's settings file), plus `GANTRY_CONFIG` naming that file.
    func environment(adding extra: [String: String] = [:]) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("GANTRY_") }
        environment["GANTRY_CONFIG"] = directory.appendingPathComponent("gantry.json").path
        for (key, value) in extra { environment[key] = value }
        return environment
    }

    /// Starts a real `gantry-worker` (or another worker executable built on the library).
    @discardableResult
    func startWorker(executable: String = Executable.path("gantry-worker"), arguments: [String] = [], environment extra: [String: String] = [:]) throws -> ChildProcess {
        try start("worker", executable: executable, arguments: arguments, environment: extra)
    }

    /// Starts a real `gantry-coordinator`.
    @discardableResult
    func startCoordinator() throws -> ChildProcess {
        try start("coordinator", executable: Executable.path("gantry-coordinator"), arguments: [], environment: [:])
    }

    private func start(_ role: String, executable: String, arguments: [String], environment extra: [String: String]) throws -> ChildProcess {
        let number = counters.withLock { counts -> Int in
            counts[role, default: 0] += 1
            return counts[role]!
        }
        let name = "\(role)-\(number)"
        let process = try ChildProcess.spawnTracked(
            name: name, executable: executable, arguments: arguments, environment: environment(adding: extra),
            logPath: directory.appendingPathComponent("\(name).log").path
        )
        processes.withLock { $0.append(process) }
        return process
    }

    /// Processes started so far that are still running.
    var runningProcesses: [ChildProcess] {
        processes.withLock { $0 }.filter(\.isRunning)
    }

    /// Waits until `count` workers heartbeat in the run's namespace, failing early (with its
    /// log) if a started process exits.
    func waitForWorkers(_ count: Int, timeout: Duration = .seconds(60)) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            if (try? await store.workers().count) ?? 0 >= count { return }
            for process in processes.withLock({ $0 }) where !process.isRunning && !process.wasStoppedOnPurpose {
                throw GantryError(.commandFailed, "\(process.name) exited while starting; its log \(process.logPath) ends with:\n\(process.logTail())")
            }
            guard ContinuousClock.now < deadline else {
                throw GantryError(.timeout, "\(count) worker(s) did not heartbeat within \(timeout); see the logs in \(directory.path)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    // MARK: In-process services

    /// Runs `workers` workers (each with a child-process pool when `pool` is set) and, if
    /// `coordinator`, a coordinator inside this process until ``stop()``.
    func startInProcess(workers: Int, concurrency: Int, coordinator: Bool, poolSize: Int? = nil) throws {
        var services: [any Service] = []
        for _ in 0..<workers {
            var configuration = try WorkerConfiguration(settings: settings)
            configuration.concurrency = concurrency
            var pool: ChildProcessPool?
            if let poolSize {
                var poolConfiguration = try PoolConfiguration(settings: settings)
                poolConfiguration.size = poolSize
                let made = try ChildProcessPool(configuration: poolConfiguration, logger: logger)
                services.append(made)
                pool = made
            }
            services.append(try Worker(
                configuration: configuration, registry: BenchTasks.registry, store: store, transport: runtime.transport,
                dispatcher: runtime.dispatcher, pool: pool, logger: logger
            ))
        }
        if coordinator {
            services.append(Coordinator(configuration: try CoordinatorConfiguration(settings: settings), store: store, dispatcher: runtime.dispatcher, logger: logger))
        }
        let group = ServiceGroup(services: services, logger: logger)
        let task = Task { try await group.run() }
        inProcess.withLock { $0 = (group, task) }
    }

    // MARK: Jobs

    /// A single-task run of `task`, as `gantry run TASK` makes it (one stage named `job`).
    static func singleTaskPlan(_ task: String, args: JSONValue = .null, kind: StageKind? = nil, retry: RetryPolicy = .default, timeout: Duration? = nil) throws -> PipelinePlan {
        let definition = try BenchTasks.registry.require(task)
        let stage = StageSpec(name: "job", task: task, kind: kind ?? definition.kind, args: args, retry: retry, timeout: timeout)
        return try PipelinePlan(PipelineSpec(name: "run-\(task)", stages: [stage]), knownTasks: BenchTasks.registry.names)
    }

    /// Submits a run and waits until it ends; returns its state.
    func runToEnd(_ plan: PipelinePlan, input: [UInt8] = [], timeout: Duration = .seconds(60)) async throws -> RunState {
        let created = try await runtime.dispatcher.submit(plan, input: input)
        return try await waitForEnd(created.runID, timeout: timeout)
    }

    /// Waits for the run-level event that ends `run` in its event stream.
    func waitForEnd(_ run: RunID, timeout: Duration) async throws -> RunState {
        let deadline = ContinuousClock.now + timeout
        var last = "0"
        while ContinuousClock.now < deadline {
            for event in try await store.waitForEvents(run, after: last, timeout: .seconds(1)) {
                last = event.id
                if event.kind == "run", let state = event.fields["s"].flatMap(RunState.init(rawValue:)), state.isFinal {
                    return state
                }
            }
        }
        throw GantryError(.timeout, "run \(run) did not end within \(timeout); see the logs in \(directory.path)")
    }

    // MARK: Teardown

    /// Stops every process (SIGTERM: workers drain) and in-process service, then closes the
    /// connections.
    func stop() async {
        let started = processes.withLock { $0 }
        await withTaskGroup(of: Void.self) { group in
            for process in started where process.isRunning {
                group.addTask { await process.terminate(grace: .seconds(25)) }
            }
        }
        if let services = inProcess.withLock({ state -> (group: ServiceGroup, task: Task<Void, any Error>)? in defer { state = nil }; return state }) {
            await services.group.triggerGracefulShutdown()
            _ = await services.task.result
        }
    }

    /// Deletes the run's Redis keys and RabbitMQ queues, closes the connections, and removes
    /// the run's directory unless `keepFiles` (a failed run's logs are kept).
    func cleanUp(keepFiles: Bool = false) async {
        if !keepFiles { try? FileManager.default.removeItem(at: directory) }
        _ = try? await store.removeNamespace()
        if broker == "rabbitmq", let url = try? settings.string("broker.rabbitmq_url"), let prefix = try? settings.string("broker.queue_prefix"),
           let amqp = try? AMQPConfiguration(url: url), let client = try? await AMQPClient.connect(amqp) {
            for queue in (try? settings.strings("worker.queues")) ?? ["default"] {
                _ = try? await client.deleteQueue(prefix + queue)
                _ = try? await client.deleteQueue(prefix + queue + ".dlq")
            }
            await client.close()
        }
        await runtime.transport.close()
    }
}

extension ChildProcess {
    /// Set for processes a scenario killed or stopped itself, so they are not reported as
    /// having died on their own.
    var wasStoppedOnPurpose: Bool { !ProcessRegistry.shared.contains(self) }
}
