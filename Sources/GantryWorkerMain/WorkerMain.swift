import ArgumentParser
import Foundation
import GantryCore
import GantryRuntime
import GantryTasks
import GantryWorker
import Logging
import ServiceLifecycle

/// `gantry-worker`: consumes tasks from the configured queues and runs them.
@main
struct WorkerMain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gantry-worker",
        abstract: "Run Gantry tasks from the broker until SIGTERM or SIGINT, then drain and exit 0."
    )

    /// The tasks this worker runs, in-process and in its pool children alike.
    static var registry: TaskRegistry { BuiltinTasks.registry }

    /// A pool child is this binary started with the hidden argument: it serves tasks before
    /// arguments are parsed, logging is bootstrapped or any service or broker thread exists.
    static func main() async {
        if ChildProcessMain.isRequested() { ChildProcessMain.run(registry: registry) }
        await main(nil)
    }

    @Option(help: "Configuration file (default: $GANTRY_CONFIG, else config/gantry.yaml when present).")
    var config: String?

    @Option(help: "Queues to consume, comma-separated (overrides worker.queues).")
    var queues: String?

    @Option(help: "Tasks in flight at once (overrides worker.concurrency).")
    var concurrency: Int?

    @Option(help: "rabbitmq, kafka or memory (overrides broker.kind).")
    var broker: String?

    func run() async throws {
        var settings = try GantrySettings.forProcess(explicitFile: config)
        if let queues { settings.set("worker.queues", .string(queues), source: "--queues") }
        if let concurrency { settings.set("worker.concurrency", .int(Int64(concurrency)), source: "--concurrency") }
        if let broker { settings.set("broker.kind", .string(broker), source: "--broker") }
        JSONLogHandler.bootstrap(level: try GantryRuntime.logLevel(settings))
        let logger = Logger(label: "gantry.worker")

        let runtime = try await GantryRuntime.connect(settings: settings, logger: logger)
        var workerConfiguration = try WorkerConfiguration(settings: settings)
        workerConfiguration.signingKeys = try GantryRuntime.verificationKeys(settings)
        let pool = try ChildProcessPool(configuration: PoolConfiguration(settings: settings), logger: Logger(label: "gantry.pool"))
        let worker = try Worker(
            configuration: workerConfiguration, registry: Self.registry, store: runtime.store, transport: runtime.transport,
            dispatcher: runtime.dispatcher, pool: pool, logger: logger
        )
        // Shutdown runs in reverse: the worker drains first, then the children stop.
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: pool), .init(service: worker)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            cancellationSignals: [],
            logger: logger
        ))
        try await group.run()
        await runtime.transport.close()
    }
}
