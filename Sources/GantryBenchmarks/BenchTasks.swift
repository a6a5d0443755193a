import ArgumentParser
import Foundation
import GantryCore
import GantryRuntime
import GantryTasks
import GantryWorker
import Logging
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// The tasks of gantry-bench's own worker and pool children: the built-in tasks plus
/// `allocate`, which grows past a memory limit so that the kernel kills its child.
///
/// gantry-bench is a worker executable built on the library the way the README shows users
/// building theirs: its `main` serves pool children first (``GantryBench/main()``), and
/// `gantry-bench chaos-worker` runs a ``Worker`` over this registry.
enum BenchTasks {
    static var registry: TaskRegistry {
        var registry = BuiltinTasks.registry
        registry.register("allocate", kind: .cpu, summary: "allocates and touches args.bytes (default 1 GiB) in 16 MiB steps, then returns the count") { _, context in
            let total = Int(context.args["bytes"]?.intValue ?? 1 << 30)
            guard total > 0 else { throw GantryError(.invalidArgument, "allocate: args.bytes must be positive, got \(total)") }
            var chunks: [[UInt8]] = []
            var held = 0
            while held < total {
                let size = min(16 << 20, total - held)
                // Written byte by byte (repeating:), so every page is resident, not just reserved.
                chunks.append([UInt8](repeating: 0x5A, count: size))
                held += size
            }
            return Array(String(chunks.reduce(0) { $0 + $1.count }).utf8)
        }
        return registry
    }

    /// The environment variable naming a cgroup-v1 memory directory a pool child joins as it
    /// starts, so that the kernel's OOM killer acts on children alone, never on the worker.
    static let childCgroupVariable = "GANTRY_BENCH_CHILD_CGROUP"
    /// The environment variable with an address-space limit (bytes) a pool child sets on itself
    /// where no memory cgroup can be made: allocation past it fails and the child dies.
    static let childAddressLimitVariable = "GANTRY_BENCH_CHILD_RLIMIT_AS"

    /// Applies the memory limit a scenario asked for, in a pool child before it serves tasks.
    static func enterChildMemoryLimit() {
        let environment = ProcessInfo.processInfo.environment
        if let cgroup = environment[childCgroupVariable], !cgroup.isEmpty {
            let procs = open(cgroup + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
            if procs >= 0 {
                let text = Array("\(getpid())\n".utf8)
                _ = text.withUnsafeBytes { write(procs, $0.baseAddress!, $0.count) }
                close(procs)
            }
        }
        if let text = environment[childAddressLimitVariable], let bytes = UInt(text) {
            var limit = rlimit(rlim_cur: rlim_t(bytes), rlim_max: rlim_t(bytes))
            setrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &limit)
        }
    }
}

/// `gantry-bench chaos-worker`: a worker over ``BenchTasks/registry``, otherwise exactly what
/// `gantry-worker` runs (same settings, pool, ServiceGroup and signals). Started by the OOM
/// fault-injection scenario, which needs a task that allocates.
struct ChaosWorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chaos-worker",
        abstract: "A gantry-worker whose registry adds the 'allocate' task (for the OOM fault-injection scenario).",
        shouldDisplay: false
    )

    func run() async throws {
        let settings = try GantrySettings.forProcess(explicitFile: nil)
        JSONLogHandler.bootstrap(level: try GantryRuntime.logLevel(settings))
        let logger = Logger(label: "gantry.worker")
        let runtime = try await GantryRuntime.connect(settings: settings, logger: logger)
        var workerConfiguration = try WorkerConfiguration(settings: settings)
        workerConfiguration.signingKeys = try GantryRuntime.verificationKeys(settings)
        let pool = try ChildProcessPool(configuration: PoolConfiguration(settings: settings), logger: Logger(label: "gantry.pool"))
        let worker = try Worker(
            configuration: workerConfiguration, registry: BenchTasks.registry, store: runtime.store, transport: runtime.transport,
            dispatcher: runtime.dispatcher, pool: pool, logger: logger
        )
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
