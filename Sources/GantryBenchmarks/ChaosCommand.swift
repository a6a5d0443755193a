import ArgumentParser
import Foundation
import GantryCore
import GantryRuntime
import GantryStore
import Synchronization

/// The fault-injection scenarios.
enum ChaosScenario: String, ExpressibleByArgument, CaseIterable, Sendable {
    /// Random `kill -9` of workers (restarted at once), and one worker paused past its leases.
    case killWorkers = "kill-workers"
    /// `kill -9` of the leader coordinator (and of a worker, whose leases the new leader must re-queue).
    case killCoordinator = "kill-coordinator"
    /// A private RabbitMQ node killed and started again.
    case restartRabbitMQ = "restart-rabbitmq"
    /// A private Redis (AOF on) killed and started again.
    case restartRedis = "restart-redis"
    /// Pool children killed by the kernel's OOM killer: tasks that allocate past a memory limit.
    case oom
    /// Malformed and oversized messages published straight into the broker.
    case flood
}

/// `gantry-bench chaos SCENARIO`: runs real `gantry-worker` and `gantry-coordinator` processes,
/// submits jobs, injects one kind of fault, and checks that every submitted job ended with
/// exactly one committed result or in the dead-letter queue with a reason, and that no run is
/// stuck. Prints one JSON line and one line for people; exits 1 when the check fails.
struct ChaosCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chaos",
        abstract: "Fault-injection scenarios with a check that nothing is lost or committed twice.",
        discussion: """
            Scenarios: \(ChaosScenario.allCases.map(\.rawValue).joined(separator: ", ")).
            Everything runs in a namespace, queue prefix and Kafka group of its own; the Redis and \
            RabbitMQ restarts use private servers on free ports under <state-directory>/chaos/, \
            never the shared stack. Leases are short (3 s) so that recovery fits in the time \
            limit. The check reads every job's run from Redis: completed (one result, one commit \
            event), dead-lettered (with its reason in the store's dead-letter stream), stuck \
            (still running at the end) or lost (anything else).
            """
    )

    @Argument(help: "The scenario.")
    var scenario: ChaosScenario

    @Option(help: "rabbitmq or kafka.")
    var broker = "rabbitmq"

    @Option(help: "Jobs submitted (default: 10000 for kill-workers, 3000 otherwise).")
    var tasks: Int?

    @Option(help: "Worker processes (default: 3 for kill-workers, 1 for oom, 2 otherwise).")
    var workers: Int?

    @Option(help: "How long each valid job sleeps, in milliseconds.")
    var taskMs = 5

    @Option(help: "Tasks in flight per worker.")
    var concurrency = 64

    @Option(help: "Seconds the whole scenario may take before the check runs anyway.")
    var timeLimit = 300.0

    @Option(help: "kill-workers: seconds between kills, randomised ±50 % (default: 0.7 over RabbitMQ, 2 over Kafka, where each kill is a consumer-group rebalance).")
    var killInterval: Double?

    @Option(help: "kill-workers: the most workers killed; then the cluster is left to recover and finish.")
    var kills = 12

    @Option(help: "kill-workers: workers paused (SIGSTOP) past their leases, then resumed: their late commits must be refused.")
    var pauses = 1

    @Option(help: "flood: malformed messages injected.")
    var malformed = 300

    @Option(help: "flood: oversized messages injected (envelopes over worker.max_payload_bytes).")
    var oversized = 40

    @Option(help: "oom: jobs that allocate past the memory limit.")
    var allocations = 4

    @Option(help: "oom: memory limit of the pool children, in MiB.")
    var memoryLimitMb = 256

    @Flag(help: "restart-rabbitmq: stop the node cleanly instead of kill -9 of its VM.")
    var graceful = false

    @Option(help: "Directory for the run's files (under <dir>/chaos/).")
    var stateDirectory = ProcessInfo.processInfo.environment["GANTRY_STATE"] ?? ".gantry"

    @Flag(help: "Keep the run's files, Redis keys and queues even when the check passes.")
    var keep = false

    var jobCount: Int { tasks ?? (scenario == .killWorkers ? 10_000 : 3000) }
    var workerCount: Int { workers ?? (scenario == .killWorkers ? 3 : scenario == .oom ? 1 : 2) }
    var killPeriod: Double { killInterval ?? (broker == "kafka" ? 2 : 0.7) }

    func validate() throws {
        guard ["rabbitmq", "kafka"].contains(broker) else { throw ValidationError("--broker must be rabbitmq or kafka") }
        if scenario == .restartRabbitMQ && broker != "rabbitmq" {
            throw ValidationError("restart-rabbitmq restarts a RabbitMQ node: use --broker rabbitmq")
        }
        guard jobCount >= 1, workerCount >= 1 else { throw ValidationError("--tasks and --workers must be at least 1") }
        if scenario == .oom && allocations >= jobCount { throw ValidationError("--allocations must be fewer than --tasks") }
    }

    func run() async throws {
        let tag = String(UUID().uuidString.prefix(8)).lowercased()
        let directory = URL(fileURLWithPath: stateDirectory).appendingPathComponent("chaos").appendingPathComponent("\(scenario.rawValue)-\(broker)-\(tag)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        ProcessRegistry.shared.installSignalHandlers()

        var overrides: [String: JSONValue] = [
            "worker.concurrency": .int(Int64(concurrency)),
            "worker.lease": "3s", "worker.renew_interval": "1s", "worker.drain_timeout": "5s",
            "coordinator.leader_lease": "2s", "coordinator.sweep_interval": "100ms",
            "store.queue_visibility": "5s",
            // Random kills may hit the same task several times; it must still complete, not turn poison.
            "store.max_lost_leases": .int(scenario == .killWorkers ? 20 : 5),
            // A dead Kafka consumer's partitions move after 6 s instead of librdkafka's 45 s.
            "broker.kafka_properties": .object(["session.timeout.ms": "6000", "heartbeat.interval.ms": "500"]),
            "pool.size": .int(Int64(scenario == .oom ? 2 : 1)),
        ]
        var servers = PrivateServerSet()
        do {
            if scenario == .restartRedis {
                // AOF with appendfsync everysec, as `ops/stack` runs the shared server.
                let redis = try PrivateRedis(directory: directory.appendingPathComponent("redis").path, launcher: .tracked)
                try await redis.start()
                servers.redis = redis
                overrides["redis.url"] = .string(redis.url)
            }
            if scenario == .restartRabbitMQ {
                let rabbit = try PrivateRabbitMQ(
                    directory: directory.appendingPathComponent("rabbitmq").path,
                    options: PrivateRabbitMQ.Options(nodePrefix: "gantry-chaos-\(tag)", probeName: "gantry-chaos-probe"), launcher: .tracked
                )
                try await rabbit.start()
                servers.rabbitMQ = rabbit
                overrides["broker.rabbitmq_url"] = .string(rabbit.url)
            }
            if scenario == .flood { overrides["worker.max_payload_bytes"] = .int(64 << 10) }
            if scenario == .oom { overrides["pool.rss_limit_bytes"] = .int(Int64(memoryLimitMb) << 20) }
        } catch {
            await servers.shutDown(keepFiles: true)
            throw error
        }

        let cluster: BenchCluster
        do {
            cluster = try await BenchCluster.make(broker: broker, kind: "chaos", stateDirectory: stateDirectory, overrides: overrides, tag: tag, directory: directory)
        } catch {
            await servers.shutDown(keepFiles: true)
            throw error
        }
        let run = ChaosRun(command: self, cluster: cluster, servers: servers, directory: directory)
        let outcome: ChaosOutcome
        do {
            outcome = try await run.execute()
        } catch {
            await cluster.stop()
            await run.cleanUpFaults()
            // Keys and queues go (they are on shared servers); the logs stay for a post-mortem.
            await cluster.cleanUp(keepFiles: true)
            await servers.shutDown(keepFiles: true)
            FileHandle.standardError.write(Data("gantry-bench chaos: the logs are in \(directory.path)\n".utf8))
            throw error
        }
        await cluster.stop()
        await run.cleanUpFaults()
        let passed = outcome.passed
        if passed && !keep {
            await cluster.cleanUp()
            await servers.shutDown(keepFiles: false)
            try? FileManager.default.removeItem(at: directory)
        } else {
            await cluster.runtime.transport.close()
            await servers.shutDown(keepFiles: true)
        }
        outcome.report.print(outcome.human + (passed ? "" : " | files, keys and logs kept in \(directory.path) (namespace \(try cluster.settings.string("store.namespace")))"))
        if !passed { throw ExitCode(1) }
    }
}

/// The private servers of a run, if any.
struct PrivateServerSet: Sendable {
    var redis: PrivateRedis?
    var rabbitMQ: PrivateRabbitMQ?

    func shutDown(keepFiles: Bool) async {
        await redis?.shutDown(keepFiles: keepFiles)
        await rabbitMQ?.shutDown(keepFiles: keepFiles)
    }
}

/// What a scenario's check found, ready to print.
struct ChaosOutcome {
    var report: BenchReport
    var human: String
    var passed: Bool
}

/// The counts of the check.
struct ChaosTally {
    var submitted = 0
    var notSubmitted = 0
    var completed = 0
    var duplicatesRefused = 0
    var duplicatesCommitted = 0
    var deadLettered = 0
    var stuck = 0
    var lost = 0
    var deadLetterReasons: [String] = []
}
