import ArgumentParser
import Foundation
import Logging
import GantryRuntime
import GantryWorker

/// `gantry-bench`: benchmarks that print their figures with their conditions, one JSON line
/// per scenario followed by a line for people, and the fault-injection scenarios.
@main
struct GantryBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gantry-bench",
        abstract: "Gantry benchmarks and fault-injection scenarios against the local stack.",
        subcommands: [
            StoreBenchmark.self, KafkaTransportBenchmark.self, RabbitMQTransportBenchmark.self, DAGBenchmark.self,
            ThroughputBenchmark.self, LatencyBenchmark.self, CPUBenchmark.self, MemoryBenchmark.self,
            ChaosCommand.self, TableCommand.self, ChaosWorkerCommand.self,
        ]
    )

    /// gantry-bench is also a worker executable (``ChaosWorkerCommand``, and the in-process
    /// workers of the scenarios): a pool child is this binary started with the hidden argument,
    /// served before arguments are parsed or any thread exists.
    static func main() async {
        if ChildProcessMain.isRequested() {
            BenchTasks.enterChildMemoryLimit()
            ChildProcessMain.run(registry: BenchTasks.registry)
        }
        // gantry-bench's own logs (reconnects while a scenario kills a server, pool notices) go
        // to stderr from error up, or from GANTRY_BENCH_LOG_LEVEL; chaos-worker logs as a worker.
        if CommandLine.arguments.dropFirst().first != ChaosWorkerCommand.configuration.commandName {
            let level = benchLogLevel
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        }
        await main(nil)
    }
}

/// The level of gantry-bench's own logs: `GANTRY_BENCH_LOG_LEVEL`, default `error`.
let benchLogLevel = ProcessInfo.processInfo.environment["GANTRY_BENCH_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .error
