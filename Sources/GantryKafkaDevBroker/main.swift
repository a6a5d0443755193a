#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import ArgumentParser
import GantryKafka
import Logging

/// `gantry-kafka-dev`: a Kafka broker for development and tests, built on librdkafka's mock
/// cluster, on a fixed loopback port.
///
/// Prints `bootstrap: 127.0.0.1:PORT` on stdout once clients can connect (`ops/stack`
/// waits for that word), then serves until SIGTERM or SIGINT and exits 0. All data lives in
/// memory and is gone when it exits.
struct KafkaDevBroker: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gantry-kafka-dev",
        abstract: "Run an in-memory Kafka broker (librdkafka's mock cluster) on a loopback port.",
        discussion: """
            Topics are created on first use with --partitions partitions. Each partition keeps \
            at most 100,000 message sets or 5 MB and drops the oldest beyond that. Stop it with \
            SIGTERM or Ctrl-C.
            """
    )

    @Option(help: "The loopback port clients bootstrap from.")
    var port: Int = 9092

    @Option(help: "Partitions of every topic created, up front or on first use.")
    var partitions: Int = 8

    @Option(help: "Comma-separated topics to create at start, e.g. tasks,results.")
    var topics: String = ""

    @Option(help: "Number of mock brokers.")
    var brokers: Int = 1

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1-65535") }
        guard partitions >= 1 else { throw ValidationError("--partitions must be at least 1") }
        guard (1...64).contains(brokers) else { throw ValidationError("--brokers must be 1-64") }
    }

    func run() throws {
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        let logger = Logger(label: "gantry.kafka.dev")

        // Blocked before any thread exists (librdkafka and the relay start several), so every
        // thread inherits the mask and the signals wait for sigwait below instead of killing
        // the process wherever they land. No code runs in a signal handler.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGTERM)
        sigaddset(&signals, SIGINT)
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let cluster = try KafkaMockCluster(brokers: brokers, port: port, defaultPartitions: partitions, logger: logger)
        let names = topics.split(separator: ",").map { $0.trimmingCharacters() }.filter { !$0.isEmpty }
        for name in names {
            try cluster.createTopic(name)
        }

        say("gantry-kafka-dev: bootstrap: \(cluster.bootstrapServers) (brokers: \(brokers), partitions per new topic: \(partitions)\(names.isEmpty ? "" : ", topics: \(names.joined(separator: ","))"))")

        var received: Int32 = 0
        while sigwait(&signals, &received) != 0 {}
        say("gantry-kafka-dev: received \(received == SIGTERM ? "SIGTERM" : "SIGINT"), shutting down")
        cluster.shutdown()
        say("gantry-kafka-dev: stopped")
    }
}

/// Prints a line and flushes it at once: stdout is a file or pipe under ops/stack, and
/// without the flush the "bootstrap" line would sit in the buffer while the script waits.
private func say(_ line: String) {
    print(line)
    fflush(nil)
}

extension Substring {
    fileprivate func trimmingCharacters() -> String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

KafkaDevBroker.main()
