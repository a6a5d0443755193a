import ArgumentParser
import Foundation
import GantryCore
import GantryRuntime
import GantryStore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Options every cluster scenario shares.
struct ClusterOptions: ParsableArguments {
    @Option(help: "rabbitmq or kafka.")
    var broker = "rabbitmq"

    @Option(help: "process: the real gantry-worker and gantry-coordinator executables (siblings of gantry-bench); in-process: a Worker and Coordinator inside gantry-bench.")
    var workerMode = WorkerMode.process

    @Option(help: "Tasks in flight per worker (worker.concurrency, also the broker credit).")
    var concurrency = 256

    @Option(help: "Children of each worker's process pool (0: one per core).")
    var poolSize = 0

    @Option(help: "Directory for the run's settings file and process logs (under <dir>/bench/).")
    var stateDirectory = ProcessInfo.processInfo.environment["GANTRY_STATE"] ?? ".gantry"

    var resolvedPoolSize: Int { poolSize > 0 ? poolSize : Machine.cores }

    /// A cluster with one coordinator and `workers` workers started and heartbeating.
    func startCluster(workers: Int = 1, overrides: [String: JSONValue] = [:]) async throws -> BenchCluster {
        var settings = overrides
        settings["worker.concurrency"] = .int(Int64(concurrency))
        settings["pool.size"] = .int(Int64(resolvedPoolSize))
        let cluster = try await BenchCluster.make(broker: broker, kind: "bench", stateDirectory: stateDirectory, overrides: settings)
        do {
            switch workerMode {
            case .process:
                try cluster.startCoordinator()
                for _ in 0..<workers { try cluster.startWorker() }
            case .inProcess:
                try cluster.startInProcess(workers: workers, concurrency: concurrency, coordinator: true, poolSize: resolvedPoolSize)
            }
            try await cluster.waitForWorkers(workers)
        } catch {
            await cluster.stop()
            await cluster.cleanUp(keepFiles: true)
            throw error
        }
        return cluster
    }

    /// The conditions every report of a cluster scenario carries.
    func conditions(workers: Int, n: Int, payloadBytes: Int = 0) -> [String: JSONValue] {
        [
            "broker": .string(broker), "workers": .int(Int64(workers)), "worker_mode": .string(workerMode.rawValue),
            "concurrency": .int(Int64(concurrency)), "pool_size": .int(Int64(resolvedPoolSize)),
            "payload_bytes": .int(Int64(payloadBytes)), "n": .int(Int64(n)),
        ]
    }
}

/// What one throughput measurement saw.
struct ThroughputFigures {
    var tasks: Int
    var submitSeconds: Double
    var wallSeconds: Double
    var failed: Int
    var submitPerSecond: Double { Double(tasks) / max(submitSeconds, 1e-9) }
    var completionPerSecond: Double { Double(tasks) / max(wallSeconds, 1e-9) }
}

/// Submits single-task runs from `submitters` concurrent callers, as `gantry run` does (the
/// store creates the run, the dispatcher publishes it with a broker confirm), while one
/// blocking reader of the store's run-event stream counts runs as they end.
enum ThroughputRun {
    static func measure(
        cluster: BenchCluster, tasks: Int, submitters: Int, plan: PipelinePlan, input: [UInt8] = [], timeout: Duration = .seconds(600)
    ) async throws -> ThroughputFigures {
        let cursor = try await cluster.store.lastRunEventID()
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + timeout
        let watcher = Task { try await waitForEndings(store: cluster.store, after: cursor, count: tasks, deadline: deadline) }
        do {
            try await submitAll(cluster: cluster, tasks: tasks, submitters: submitters, plan: plan, input: input)
        } catch {
            watcher.cancel()
            throw error
        }
        let submitted = clock.now
        let ended = try await watcher.value
        return ThroughputFigures(tasks: tasks, submitSeconds: (submitted - start).seconds, wallSeconds: (ended.at - start).seconds, failed: ended.failed)
    }

    /// Submits `tasks` runs of `plan` from `submitters` concurrent callers.
    static func submitAll(cluster: BenchCluster, tasks: Int, submitters: Int, plan: PipelinePlan, input: [UInt8] = []) async throws {
        let next = SharedCounter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<max(1, submitters) {
                group.addTask {
                    while next.next() < tasks {
                        _ = try await cluster.runtime.dispatcher.submit(plan, input: input)
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    /// The worker alone on a backlog: `tasks` runs are submitted while the worker process is
    /// stopped (SIGSTOP), then it is resumed and timed until every run ended. Returns runs/s.
    static func drain(cluster: BenchCluster, worker: ChildProcess, tasks: Int, submitters: Int, plan: PipelinePlan) async throws -> (perSecond: Double, failed: Int) {
        let cursor = try await cluster.store.lastRunEventID()
        kill(worker.pid, SIGSTOP)
        do {
            try await submitAll(cluster: cluster, tasks: tasks, submitters: submitters, plan: plan)
        } catch {
            kill(worker.pid, SIGCONT)
            throw error
        }
        let start = ContinuousClock.now
        kill(worker.pid, SIGCONT)
        let ended = try await waitForEndings(store: cluster.store, after: cursor, count: tasks, deadline: start + .seconds(600))
        return (Double(tasks) / max((ended.at - start).seconds, 1e-9), ended.failed)
    }

    /// Reads run endings after `after` until `count` distinct runs ended.
    static func waitForEndings(
        store: RedisStateStore, after: String, count: Int, deadline: ContinuousClock.Instant
    ) async throws -> (at: ContinuousClock.Instant, failed: Int) {
        var cursor = after
        var ended = Set<RunID>()
        var failed = 0
        ended.reserveCapacity(count)
        while ended.count < count {
            guard ContinuousClock.now < deadline else {
                throw GantryError(.timeout, "only \(ended.count) of \(count) runs ended before the deadline")
            }
            try Task.checkCancellation()
            let (next, endings) = try await store.runEndings(after: cursor, timeout: .milliseconds(500))
            cursor = next
            for (run, state) in endings where ended.insert(run).inserted && state != .succeeded { failed += 1 }
        }
        return (ContinuousClock.now, failed)
    }

    /// Runs `count` tasks of `plan` and waits for them: connections, consumer-group joins and
    /// code paths warm before anything is measured.
    static func warmUp(cluster: BenchCluster, plan: PipelinePlan, count: Int) async throws {
        _ = try await measure(cluster: cluster, tasks: count, submitters: min(count, 16), plan: plan, timeout: .seconds(120))
    }
}

/// No-op tasks per second end to end with one worker: submit rate, completion rate (submit →
/// result in Redis), wall time; with the worker's and coordinator's peak memory when they are
/// real processes.
struct ThroughputBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "throughput",
        abstract: "N no-op single-task runs submitted as `gantry run noop` does, drained by one worker: submit/s, completions/s, wall.",
        discussion: """
            Submitters and the worker run at once; completions/s is N over the time from the first \
            submission to the last run ending (the store's run-event stream, read by one blocking \
            reader). With a real worker process, a second phase submits N more while the worker is \
            stopped (SIGSTOP) and times it draining that backlog alone (drain_per_s). Targets with \
            one worker on a 2-core machine: ≥ 13,000/s over RabbitMQ, ≥ 27,000/s over Kafka.
            """
    )

    @OptionGroup var cluster: ClusterOptions

    @Option(help: "Tasks measured (N).")
    var tasks = 20_000

    @Option(help: "Concurrent submitters.")
    var submitters = 64

    @Option(help: "Tasks run before measuring.")
    var warmup = 500

    @Flag(inversion: .prefixedNo, help: "Also submit N tasks while the worker process is stopped, then time the worker draining them alone (process mode).")
    var drain = true

    func run() async throws {
        let bench = try await cluster.startCluster(workers: 1)
        do {
            let plan = try BenchCluster.singleTaskPlan("noop")
            try await ThroughputRun.warmUp(cluster: bench, plan: plan, count: warmup)
            let figures = try await ThroughputRun.measure(cluster: bench, tasks: tasks, submitters: submitters, plan: plan)
            var report = Self.report(figures, options: cluster, submitters: submitters, bench: bench)
            var drainText = ""
            if drain, cluster.workerMode == .process, let worker = bench.runningProcesses.first(where: { $0.name.hasPrefix("worker") }) {
                let drained = try await ThroughputRun.drain(cluster: bench, worker: worker, tasks: tasks, submitters: submitters, plan: plan)
                report.figure("drain_per_s", drained.perSecond, headline: true)
                report.figure("drain_failed", drained.failed)
                drainText = String(format: " | a backlog of %d drained by the worker alone at %.0f/s", tasks, drained.perSecond)
            }
            Self.addPeakMemory(&report, bench: bench)
            let human = Self.human(report, figures) + drainText
            await bench.stop()
            await bench.cleanUp()
            report.print(human)
        } catch {
            await bench.stop()
            await bench.cleanUp(keepFiles: true)
            throw error
        }
    }

    static func target(for broker: String) -> Double { broker == "kafka" ? 27_000 : 13_000 }

    static func report(_ figures: ThroughputFigures, options: ClusterOptions, submitters: Int, bench: BenchCluster) -> BenchReport {
        var report = BenchReport(scenario: "throughput")
        report.conditions = report.conditions.merging(options.conditions(workers: 1, n: figures.tasks)) { $1 }
        report.conditions["submitters"] = .int(Int64(submitters))
        report.conditions["task"] = .string("noop")
        report.figure("completion_per_s", figures.completionPerSecond, headline: true)
        report.figure("submit_per_s", figures.submitPerSecond, headline: true)
        report.figure("wall_s", figures.wallSeconds)
        report.figure("submit_s", figures.submitSeconds)
        report.figure("failed", figures.failed)
        report.figure("load_average", Machine.loadAverage)
        report.target("completion_per_s", atLeast: target(for: options.broker))
        return report
    }

    /// The peak resident memory (`VmHWM`) of the worker and coordinator processes so far.
    static func addPeakMemory(_ report: inout BenchReport, bench: BenchCluster) {
        for process in bench.runningProcesses {
            guard let memory = process.memory else { continue }
            let role = process.name.hasPrefix("worker") ? "worker" : "coordinator"
            report.figure("\(role)_peak_rss_mb", Double(memory.peak) / 1_048_576, headline: true)
        }
    }

    static func human(_ report: BenchReport, _ figures: ThroughputFigures) -> String {
        let memory = ["worker", "coordinator"].compactMap { role in
            report.figures["\(role)_peak_rss_mb"]?.doubleValue.map { String(format: "%@ peak RSS %.1f MB", role, $0) }
        }.joined(separator: ", ")
        return String(
            format: "throughput over %@, 1 %@ worker, concurrency %d: %d no-op tasks submitted at %.0f/s, completed at %.0f/s end to end (%@), wall %.2f s%@%@",
            report.conditions["broker"]?.stringValue ?? "?", report.conditions["worker_mode"]?.stringValue ?? "?",
            Int(report.conditions["concurrency"]?.intValue ?? 0), figures.tasks, figures.submitPerSecond, figures.completionPerSecond,
            report.verdict("completion_per_s"), figures.wallSeconds, figures.failed > 0 ? " | \(figures.failed) FAILED" : "",
            memory.isEmpty ? "" : " | " + memory
        )
    }
}
