import ArgumentParser
import Foundation
import GantryCore
import GantryObservability
import GantryRuntime
import GantryTasks
import GantryWorker
import Logging
import ServiceLifecycle

/// The standard Gantry worker executable, as a library: `gantry-worker` is
/// `await WorkerApp.main()`, and a worker with tasks of your own is the same call with your
/// registry.
///
/// ```swift
/// import GantryCore
/// import GantryWorkerApp
///
/// @main
/// enum MyWorker {
///     static func main() async {
///         var tasks = TaskRegistry()
///         tasks.register("shout", kind: .io, summary: "upper-cases its input") { input, _ in
///             Array(String(decoding: input, as: UTF8.self).uppercased().utf8)
///         }
///         await WorkerApp.main(tasks: tasks)
///     }
/// }
/// ```
///
/// The executable takes the same flags and settings as `gantry-worker` and runs the same
/// services: the child-process pool, the `http` task's client and the ``Worker``, under one
/// `ServiceGroup` that drains on SIGTERM or SIGINT and exits 0. Pool children are this same
/// executable started with a hidden argument, so your tasks run in them as well; `main` must
/// therefore be the first thing your program does (build the registry, then call it), before
/// it starts threads or connections of its own.
public enum WorkerApp {
    /// Runs the worker executable with the built-in tasks (unless `includeBuiltins` is false) and
    /// `tasks` (which replace built-ins of the same name), until it is told to stop; then exits.
    public static func main(tasks: TaskRegistry = TaskRegistry(), includeBuiltins: Bool = true) async -> Never {
        if ChildProcessMain.isRequested() { runChild(tasks: tasks, includeBuiltins: includeBuiltins) }
        let command = WorkerCommand.parseOrExit()
        do {
            try await run(command, tasks: tasks, includeBuiltins: includeBuiltins)
        } catch {
            WorkerCommand.exit(withError: error)
        }
        exit(0)
    }

    /// The registry a worker runs: the built-in tasks set up by `configuration` (their `http`
    /// client is `http`), then `tasks`.
    public static func registry(tasks: TaskRegistry, includeBuiltins: Bool = true, configuration: BuiltinTaskConfiguration, http: HTTPTaskClient) -> TaskRegistry {
        var registry = includeBuiltins ? BuiltinTasks.registry(configuration: configuration, http: http) : TaskRegistry()
        registry.merge(tasks)
        return registry
    }

    /// A pool child: the same registry as the parent (the parent passes its `--config` after the
    /// hidden argument; the environment is inherited), served over stdin and stdout.
    private static func runChild(tasks: TaskRegistry, includeBuiltins: Bool) -> Never {
        let arguments = CommandLine.arguments
        let configFile = arguments.firstIndex(of: "--config").flatMap { $0 + 1 < arguments.count ? arguments[$0 + 1] : nil }
        var configuration: BuiltinTaskConfiguration
        do {
            configuration = try BuiltinTaskConfiguration(settings: GantrySettings.forProcess(explicitFile: configFile))
        } catch {
            FileHandle.standardError.write(Data("gantry pool child: \(error)\n".utf8))
            exit(78)
        }
        // The pool stops a child's whole process group; commands `exec` starts stay in it.
        configuration.execOwnProcessGroup = false
        // A child ends by exiting, so it uses the process-wide client, which needs no shutdown.
        ChildProcessMain.run(registry: registry(tasks: tasks, includeBuiltins: includeBuiltins, configuration: configuration, http: .shared))
    }

    private static func run(_ command: WorkerCommand, tasks: TaskRegistry, includeBuiltins: Bool) async throws {
        var settings = try GantrySettings.forProcess(explicitFile: command.config)
        if let queues = command.queues { settings.set("worker.queues", .string(queues), source: "--queues") }
        if let concurrency = command.concurrency { settings.set("worker.concurrency", .int(Int64(concurrency)), source: "--concurrency") }
        if let broker = command.broker { settings.set("broker.kind", .string(broker), source: "--broker") }
        JSONLogHandler.bootstrap(level: try GantryRuntime.logLevel(settings))
        let logger = Logger(label: "gantry.worker")

        let taskConfiguration = try BuiltinTaskConfiguration(settings: settings)
        var workerConfiguration = try WorkerConfiguration(settings: settings)
        workerConfiguration.signingKeys = try GantryRuntime.verificationKeys(settings)
        var poolConfiguration = try PoolConfiguration(settings: settings)
        if let file = command.config { poolConfiguration.arguments += ["--config", file] }

        let runtime = try await GantryRuntime.connect(settings: settings, logger: logger)
        // /healthz, /readyz, /metrics on observability.worker_listen; its address goes in the heartbeat.
        let observability = try ObservabilityServer.forProcess(
            .worker, id: workerConfiguration.workerID, settings: settings, store: runtime.store, transport: runtime.transport,
            readinessQueue: workerConfiguration.queues.first ?? "default", logger: logger
        )
        workerConfiguration.statusFields = { observability?.advertisedAddress.map { ["metrics": $0] } ?? [:] }
        let http = HTTPTaskClient()
        let pool = try ChildProcessPool(configuration: poolConfiguration, logger: Logger(label: "gantry.pool"))
        let worker = try Worker(
            configuration: workerConfiguration, registry: registry(tasks: tasks, includeBuiltins: includeBuiltins, configuration: taskConfiguration, http: http),
            store: runtime.store, transport: runtime.transport, dispatcher: runtime.dispatcher, pool: pool, logger: logger
        )
        if !taskConfiguration.execAllow.isEmpty {
            logger.info("exec may run: \(taskConfiguration.execAllow.joined(separator: ", "))")
        }
        // Shutdown runs in reverse: the worker drains first, then the http client closes, then
        // the children stop.
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: (observability.map { [ServiceGroupConfiguration.ServiceConfiguration(service: $0)] } ?? [])
                + [.init(service: pool), .init(service: http), .init(service: worker)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            cancellationSignals: [],
            logger: logger
        ))
        try await group.run()
        await runtime.transport.close()
    }
}

/// The worker's command line.
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: URL(fileURLWithPath: CommandLine.arguments.first ?? "gantry-worker").lastPathComponent,
        abstract: "Run Gantry tasks from the broker until SIGTERM or SIGINT, then drain and exit 0."
    )

    @Option(help: "Configuration file (default: $GANTRY_CONFIG, else config/gantry.yaml when present).")
    var config: String?

    @Option(help: "Queues to consume, comma-separated (overrides worker.queues).")
    var queues: String?

    @Option(help: "Tasks in flight at once (overrides worker.concurrency).")
    var concurrency: Int?

    @Option(help: "rabbitmq, kafka or memory (overrides broker.kind).")
    var broker: String?
}
