import ArgumentParser
import Foundation
import GantryCore
import GantryStore

/// Scheduling overhead of DAG runs: a 1,000-way fan-out with a join, and a 200-stage chain,
/// run by workers and a coordinator over a real broker and Redis.
struct DAGBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dag",
        abstract: "Per-task overhead of a fan-out + join and per-hop latency of a chain, end to end.",
        discussion: "Each pipeline runs --rounds times (alternating, after one warm-up run); the figures are the median run, with the fastest and slowest. Targets: ≤ 0.1 ms per task for the fan-out + join, ≤ 0.5 ms per hop for the chain."
    )

    @OptionGroup var cluster: ClusterOptions

    @Option(help: "Elements of the fan-out.")
    var fanout = 1000

    @Option(help: "Stages of the chain.")
    var chain = 200

    @Option(help: "Workers.")
    var workers = 1

    @Option(help: "Runs of each pipeline; the figures are the median run, with the fastest and slowest beside it.")
    var rounds = 5

    func run() async throws {
        let bench = try await cluster.startCluster(workers: workers)
        do {
            let fanoutSpec = PipelineSpec(name: "fanout", stages: [
                StageSpec(name: "list", task: "echo"),
                StageSpec(name: "each", task: "noop", after: ["list"], map: "list"),
                StageSpec(name: "join", task: "noop", after: ["each"]),
            ])
            let chainSpec = PipelineSpec(name: "chain", stages: (0..<chain).map { index in
                StageSpec(name: StageName(rawValue: "s\(index)")!, task: "noop", after: index == 0 ? [] : [StageName(rawValue: "s\(index - 1)")!])
            })
            let list = JSONValue.array((0..<fanout).map { .int(Int64($0)) }).jsonBytes

            // A warm-up run, so consumer-group joins and connections are not measured.
            _ = try await timeRun(PipelinePlan(PipelineSpec(name: "warmup", stages: [StageSpec(name: "a", task: "noop")])), input: [], bench: bench)
            guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
            let fanoutPlan = try PipelinePlan(fanoutSpec)
            let chainPlan = try PipelinePlan(chainSpec)
            var fanoutTimes: [Double] = []
            var chainTimes: [Double] = []
            // Alternated, so a slow spell of the shared machine does not fall on one kind only.
            for _ in 0..<rounds {
                fanoutTimes.append(try await timeRun(fanoutPlan, input: list, bench: bench))
                chainTimes.append(try await timeRun(chainPlan, input: [], bench: bench))
            }
            fanoutTimes.sort()
            chainTimes.sort()
            let fanoutTime = fanoutTimes[fanoutTimes.count / 2]
            let chainTime = chainTimes[chainTimes.count / 2]
            await bench.stop()
            await bench.cleanUp()

            let fanoutTasks = fanout + 2
            var report = BenchReport(scenario: "dag")
            report.conditions = report.conditions.merging(cluster.conditions(workers: workers, n: fanoutTasks + chain, payloadBytes: list.count)) { $1 }
            report.conditions["fanout_tasks"] = .int(Int64(fanoutTasks))
            report.conditions["chain_stages"] = .int(Int64(chain))
            report.conditions["rounds"] = .int(Int64(rounds))
            report.figure("fanout_wall_ms", fanoutTime * 1000)
            report.figure("fanout_ms_per_task", fanoutTime * 1000 / Double(fanoutTasks), headline: true)
            report.figure("chain_wall_ms", chainTime * 1000)
            report.figure("fanout_ms_per_task_min", fanoutTimes.first! * 1000 / Double(fanoutTasks))
            report.figure("fanout_ms_per_task_max", fanoutTimes.last! * 1000 / Double(fanoutTasks))
            report.figure("chain_ms_per_hop", chainTime * 1000 / Double(chain), headline: true)
            report.figure("chain_ms_per_hop_min", chainTimes.first! * 1000 / Double(chain))
            report.figure("chain_ms_per_hop_max", chainTimes.last! * 1000 / Double(chain))
            report.figure("load_average", Machine.loadAverage)
            report.target("fanout_ms_per_task", atMost: 0.1)
            report.target("chain_ms_per_hop", atMost: 0.5)
            report.print(String(
                format: "dag over %@ with %d %@ worker(s), median of %d runs: fan-out %d+2 tasks in %.1f ms = %.3f ms/task (%@; runs %.3f–%.3f) | chain %d stages in %.1f ms = %.3f ms/hop (%@; runs %.3f–%.3f)",
                cluster.broker, workers, cluster.workerMode.rawValue, rounds, fanout, fanoutTime * 1000, fanoutTime * 1000 / Double(fanoutTasks),
                report.verdict("fanout_ms_per_task"), fanoutTimes.first! * 1000 / Double(fanoutTasks), fanoutTimes.last! * 1000 / Double(fanoutTasks),
                chain, chainTime * 1000, chainTime * 1000 / Double(chain), report.verdict("chain_ms_per_hop"),
                chainTimes.first! * 1000 / Double(chain), chainTimes.last! * 1000 / Double(chain)
            ))
        } catch {
            await bench.stop()
            await bench.cleanUp(keepFiles: true)
            throw error
        }
    }

    /// Submits a run and returns the seconds until the store reports it succeeded.
    private func timeRun(_ plan: PipelinePlan, input: [UInt8], bench: BenchCluster) async throws -> Double {
        let clock = ContinuousClock()
        let start = clock.now
        let created = try await bench.runtime.dispatcher.submit(plan, input: input)
        let state = try await bench.waitForEnd(created.runID, timeout: .seconds(300))
        guard state == .succeeded else { throw GantryError(.taskFailed, "benchmark run \(created.runID) ended \(state)") }
        return (clock.now - start).seconds
    }
}
