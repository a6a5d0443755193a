import ArgumentParser
import Foundation
import GantryCore
import GantryRuntime
import GantryWorker
import Logging
import Synchronization

/// CPU-stage throughput through the child-process pool, as a ratio of the core count times the
/// single-core rate of the same task measured in the same run.
struct CPUBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpu",
        abstract: "sha256 (many rounds) tasks/s through the process pool, and end to end through a worker, vs cores × the single-core rate.",
        discussion: """
            The single-core rate is the sha256 task run back to back on one thread of \
            gantry-bench. The pool rate is the same task through a ChildProcessPool of \
            --pool-size children (gantry-bench re-spawned), twice as many callers as children. \
            Single-core, pool and all-cores phases alternate --repeats times and the best of each \
            is kept, which filters out other load on a shared machine. The all-cores phase runs the \
            task on as many threads of gantry-bench as there are cores, without a pool: the rate \
            this machine gives with every core busy, which bounds what any pool can reach. The end-to-end rate is single-task \
            `kind: cpu` runs submitted to one worker (its pool does the work), from the first \
            submission to the last result in Redis. Target: ratio ≥ 0.97.
            """
    )

    @OptionGroup var cluster: ClusterOptions

    @Option(help: "sha256 rounds per task (0: calibrate so that one task takes --task-ms).")
    var rounds = 0

    @Option(help: "Target duration of one task when calibrating, in milliseconds.")
    var taskMs = 25.0

    @Option(help: "Seconds each phase runs for (sets the task counts).")
    var seconds = 3.0

    @Option(help: "Alternations of the single-core and pool phases.")
    var repeats = 2

    func run() async throws {
        let sha = try BenchTasks.registry.require("sha256")
        let input = Array("gantry cpu benchmark".utf8)
        let context = TaskContext(runID: RunID.make(), node: NodeID(stage: "job"))
        let rounds = self.rounds > 0 ? self.rounds : try await calibrate(sha, input: input)
        let arguments: JSONValue = .object(["rounds": .int(Int64(rounds))])
        let taskContext = TaskContext(runID: context.runID, node: context.node, args: arguments)
        let cores = Machine.cores
        let poolSize = cluster.resolvedPoolSize
        let singleTasks = max(4, Int(seconds * 1000 / taskMs))
        let poolTasks = max(poolSize * 4, Int(seconds * 1000 / taskMs) * poolSize)

        // Single-core and pool phases, alternated.
        var poolConfiguration = PoolConfiguration(size: poolSize)
        poolConfiguration.executablePath = Executable.path("gantry-bench")
        var poolLogger = Logger(label: "gantry.bench.pool")
        poolLogger.logLevel = .warning
        let pool = try ChildProcessPool(configuration: poolConfiguration, logger: poolLogger)
        let poolService = Task { try await pool.run() }
        var bestSingle = 0.0
        var bestPool = 0.0
        var bestThreads = 0.0
        do {
            _ = try await pool.run(task: "sha256", input: input, context: taskContext, timeout: .seconds(60))
            for _ in 0..<max(1, repeats) {
                let single = try await timed {
                    for _ in 0..<singleTasks { _ = try await sha.function(input, taskContext) }
                }
                bestSingle = max(bestSingle, Double(singleTasks) / single.seconds)
                let pooled = try await timed {
                    let next = SharedCounter()
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for _ in 0..<(poolSize * 2) {
                            group.addTask {
                                while next.next() < poolTasks {
                                    _ = try await pool.run(task: "sha256", input: input, context: taskContext, timeout: .seconds(60))
                                }
                            }
                        }
                        try await group.waitForAll()
                    }
                }
                bestPool = max(bestPool, Double(poolTasks) / pooled.seconds)
                // The same task on every core at once inside this process, without a pool: what
                // this machine gives when all its cores run the task, the ceiling of the pool.
                let threaded = try await timed {
                    let next = SharedCounter()
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for _ in 0..<cores {
                            group.addTask {
                                while next.next() < poolTasks { _ = try await sha.function(input, taskContext) }
                            }
                        }
                        try await group.waitForAll()
                    }
                }
                bestThreads = max(bestThreads, Double(poolTasks) / threaded.seconds)
            }
        } catch {
            await pool.shutdown()
            _ = await poolService.result
            throw error
        }
        await pool.shutdown()
        _ = await poolService.result

        // End to end through one worker and its pool.
        let bench = try await cluster.startCluster(workers: 1)
        let endToEnd: ThroughputFigures
        do {
            let plan = try BenchCluster.singleTaskPlan("sha256", args: arguments, kind: .cpu)
            try await ThroughputRun.warmUp(cluster: bench, plan: plan, count: poolSize * 2)
            endToEnd = try await ThroughputRun.measure(cluster: bench, tasks: poolTasks, submitters: 16, plan: plan, input: input)
        } catch {
            await bench.stop()
            await bench.cleanUp(keepFiles: true)
            throw error
        }
        await bench.stop()
        await bench.cleanUp()

        let ideal = Double(cores) * bestSingle
        var report = BenchReport(scenario: "cpu")
        report.conditions = report.conditions.merging(cluster.conditions(workers: 1, n: poolTasks, payloadBytes: input.count)) { $1 }
        report.conditions["task"] = .string("sha256")
        report.conditions["rounds"] = .int(Int64(rounds))
        report.conditions["single_tasks"] = .int(Int64(singleTasks))
        report.conditions["repeats"] = .int(Int64(repeats))
        report.figure("task_ms", 1000 / bestSingle)
        report.figure("single_core_per_s", bestSingle)
        report.figure("ideal_per_s", ideal)
        report.figure("pool_per_s", bestPool)
        report.figure("pool_ratio", bestPool / ideal, headline: true)
        report.figure("all_cores_in_process_per_s", bestThreads)
        report.figure("all_cores_in_process_ratio", bestThreads / ideal)
        report.figure("pool_over_all_cores_in_process", bestPool / bestThreads)
        report.figure("end_to_end_per_s", endToEnd.completionPerSecond)
        report.figure("end_to_end_ratio", endToEnd.completionPerSecond / ideal, headline: true)
        report.figure("failed", endToEnd.failed)
        report.figure("load_average", Machine.loadAverage)
        report.target("pool_ratio", atLeast: 0.97)
        report.target("end_to_end_ratio", atLeast: 0.97)
        report.print(String(
            format: "cpu: sha256 × %d rounds (%.1f ms/task) single core %.1f/s × %d cores = %.1f/s ideal | %d in-process threads at once: %.1f/s, ratio %.3f | pool of %d: %.1f/s, ratio %.3f (%@) | end to end through 1 %@ worker over %@: %.1f/s, ratio %.3f (%@)",
            rounds, 1000 / bestSingle, bestSingle, cores, ideal, cores, bestThreads, bestThreads / ideal,
            poolSize, bestPool, bestPool / ideal, report.verdict("pool_ratio"),
            cluster.workerMode.rawValue, cluster.broker, endToEnd.completionPerSecond, endToEnd.completionPerSecond / ideal, report.verdict("end_to_end_ratio")
        ))
    }

    /// Rounds that make one task take about ``taskMs`` on this machine.
    private func calibrate(_ sha: TaskDefinition, input: [UInt8]) async throws -> Int {
        var probe = 2000
        while true {
            let context = TaskContext(runID: RunID.make(), node: NodeID(stage: "job"), args: .object(["rounds": .int(Int64(probe))]))
            let elapsed = try await timed { _ = try await sha.function(input, context) }.seconds
            if elapsed >= 0.005 || probe >= 5_000_000 {
                return max(1, min(10_000_000, Int(Double(probe) * (taskMs / 1000) / elapsed)))
            }
            probe *= 4
        }
    }
}
