import ArgumentParser
import Foundation
import GantryCore
import GantryCoordinator
import GantryRuntime
import GantryStore
import GantryTasks
import GantryWorker
import Logging
import ServiceLifecycle

/// Scheduling overhead of DAG runs: a 1,000-way fan-out with a join, and a 200-stage chain,
/// run by in-process workers and a coordinator over a real broker and Redis.
struct DAGBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dag",
        abstract: "Per-task overhead of a fan-out + join and per-hop latency of a chain, end to end."
    )

    @Option(help: "rabbitmq, kafka or memory.")
    var broker = "rabbitmq"

    @Option(help: "Elements of the fan-out.")
    var fanout = 1000

    @Option(help: "Stages of the chain.")
    var chain = 200

    @Option(help: "Workers (in this process).")
    var workers = 1

    @Option(help: "Concurrency of each worker.")
    var concurrency = 64

    func run() async throws {
        var settings = try GantrySettings.forProcess(explicitFile: nil)
        settings.set("broker.kind", .string(broker), source: "--broker")
        settings.set("store.namespace", .string("gantry-bench-\(UUID().uuidString.prefix(8))"), source: "benchmark")
        settings.set("broker.queue_prefix", .string("gantry-bench-\(UUID().uuidString.prefix(8))."), source: "benchmark")
        var logger = Logger(label: "gantry.bench")
        logger.logLevel = .warning
        let runtime = try await GantryRuntime.connect(settings: settings, logger: logger)
        var services: [any Service] = []
        for _ in 0..<workers {
            var configuration = try WorkerConfiguration(settings: settings)
            configuration.concurrency = concurrency
            services.append(try Worker(configuration: configuration, registry: BuiltinTasks.registry, store: runtime.store, transport: runtime.transport, dispatcher: runtime.dispatcher, logger: logger))
        }
        services.append(Coordinator(configuration: try CoordinatorConfiguration(settings: settings), store: runtime.store, dispatcher: runtime.dispatcher, logger: logger))
        let group = ServiceGroup(services: services, logger: logger)

        let fanoutSpec = PipelineSpec(name: "fanout", stages: [
            StageSpec(name: "list", task: "echo"),
            StageSpec(name: "each", task: "noop", after: ["list"], map: "list"),
            StageSpec(name: "join", task: "noop", after: ["each"]),
        ])
        let chainSpec = PipelineSpec(name: "chain", stages: (0..<chain).map { index in
            StageSpec(name: StageName(rawValue: "s\(index)")!, task: "noop", after: index == 0 ? [] : [StageName(rawValue: "s\(index - 1)")!])
        })
        let list = JSONValue.array((0..<fanout).map { .int(Int64($0)) }).jsonBytes

        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            // A warm-up run, so consumer-group joins and connections are not measured.
            _ = try await timeRun(PipelinePlan(PipelineSpec(name: "warmup", stages: [StageSpec(name: "a", task: "noop")])), input: [], runtime: runtime)
            let fanoutTime = try await timeRun(try PipelinePlan(fanoutSpec), input: list, runtime: runtime)
            let chainTime = try await timeRun(try PipelinePlan(chainSpec), input: [], runtime: runtime)
            let fanoutTasks = fanout + 2
            let report: [String: JSONValue] = [
                "scenario": "dag", "broker": .string(broker), "workers": .int(Int64(workers)), "concurrency": .int(Int64(concurrency)),
                "fanout_tasks": .int(Int64(fanoutTasks)), "fanout_wall_ms": .double(fanoutTime * 1000),
                "fanout_ms_per_task": .double(fanoutTime * 1000 / Double(fanoutTasks)),
                "chain_stages": .int(Int64(chain)), "chain_wall_ms": .double(chainTime * 1000),
                "chain_ms_per_hop": .double(chainTime * 1000 / Double(chain)),
            ]
            print(JSONValue.object(report).jsonString)
            print(String(format: "dag over %@ with %d worker(s): fan-out %d+2 tasks in %.1f ms = %.3f ms/task (target ≤ 0.1) | chain %d stages in %.1f ms = %.3f ms/hop (target ≤ 0.5)",
                         broker, workers, fanout, fanoutTime * 1000, fanoutTime * 1000 / Double(fanoutTasks), chain, chainTime * 1000, chainTime * 1000 / Double(chain)))
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        await runtime.transport.close()
    }

    /// Submits a run and returns the seconds until the store reports it succeeded.
    private func timeRun(_ plan: PipelinePlan, input: [UInt8], runtime: GantryRuntime) async throws -> Double {
        let clock = ContinuousClock()
        let start = clock.now
        let created = try await runtime.dispatcher.submit(plan, input: input)
        var last = "0"
        while true {
            for event in try await runtime.store.waitForEvents(created.runID, after: last, timeout: .seconds(5)) {
                last = event.id
                if event.kind == "run", let state = event.fields["s"], state != "running" {
                    guard state == "succeeded" else { throw GantryError(.taskFailed, "benchmark run \(created.runID) ended \(state)") }
                    return (clock.now - start).seconds
                }
            }
        }
    }
}
