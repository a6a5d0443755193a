import ArgumentParser

/// `gantry-bench`: benchmarks that print their figures with their conditions, one JSON line
/// per scenario followed by a line for people.
@main
struct GantryBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gantry-bench",
        abstract: "Gantry benchmarks against the local stack.",
        subcommands: [StoreBenchmark.self, KafkaTransportBenchmark.self, RabbitMQTransportBenchmark.self, DAGBenchmark.self]
    )
}
