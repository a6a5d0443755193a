import Foundation
import GantryCore
import GantryKafka
import Synchronization

/// Where the Kafka tests find the dev broker (`ops/stack up kafka`, or
/// `gantry-kafka-dev --port 9092`), and UUID-named topics and groups so tests never collide.
enum KafkaTestEnvironment {
    /// `GANTRY_KAFKA_BROKERS`, or the local stack's dev broker.
    static var brokers: String {
        ProcessInfo.processInfo.environment["GANTRY_KAFKA_BROKERS"] ?? "127.0.0.1:9092"
    }

    static var configuration: KafkaConfiguration {
        KafkaConfiguration(bootstrapServers: brokers.split(separator: ",").map(String.init), clientID: "gantry-tests")
    }

    /// A producer that gives up on a record after 20 s, so that a missing broker fails a
    /// test quickly instead of after librdkafka's default five minutes.
    static func producer() throws -> KafkaProducer {
        var configuration = configuration
        configuration.properties["message.timeout.ms"] = "20000"
        return try KafkaProducer(configuration: configuration)
    }

    /// A topic no other test uses.
    static func topic(_ purpose: String) -> String {
        "gantry-test-\(purpose)-\(UUID().uuidString.lowercased())"
    }

    /// A consumer group no other test uses.
    static func group(_ purpose: String) -> String {
        "gantry-test-\(purpose)-\(UUID().uuidString.lowercased())"
    }

    static func consumer(group: String, topics: [String]) async throws -> KafkaConsumer {
        var configuration = configuration
        // A short session: a consumer a test failed to close gives its partitions back soon,
        // and the mock waits (session - 1 s) for members to rejoin when one is added.
        configuration.properties["session.timeout.ms"] = "6000"
        configuration.properties["heartbeat.interval.ms"] = "500"
        let consumer = try KafkaConsumer(
            configuration: configuration,
            consumer: KafkaConsumerConfiguration(groupID: group, revocationGracePeriod: .seconds(5))
        )
        try await consumer.subscribe(topics: topics)
        return consumer
    }
}

/// What a consumer saw while a test waited on it.
struct KafkaObserved {
    var records: [KafkaRecord] = []
    var assigned: [KafkaTopicPartition] = []
    var revoked: [KafkaTopicPartition] = []
}

/// Reads events from `consumer` until `done` holds for what was seen, failing after
/// `timeout`. Revocations are finished at once.
func kafkaReceive(
    _ consumer: KafkaConsumer,
    _ what: String,
    timeout: Duration = .seconds(30),
    until done: @escaping @Sendable (KafkaObserved) -> Bool
) async throws -> KafkaObserved {
    try await withThrowingTaskGroup(of: KafkaObserved?.self) { group in
        group.addTask {
            var observed = KafkaObserved()
            if done(observed) { return observed }
            for try await event in consumer.events {
                switch event {
                case .records(let records): observed.records += records
                case .partitionsAssigned(let partitions): observed.assigned += partitions
                case .partitionsRevoked(let revocation):
                    observed.revoked += revocation.partitions
                    revocation.finish()
                }
                if done(observed) { return observed }
            }
            throw GantryError(.closed, "the consumer closed while waiting for \(what); saw \(observed.records.count) records")
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let observed = first else {
            throw GantryError(.timeout, "timed out after \(timeout) waiting for \(what) from the Kafka broker at \(KafkaTestEnvironment.brokers); is it running (ops/stack up kafka)?")
        }
        return observed
    }
}

/// What a finished `kcat` printed.
struct KcatResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `/usr/bin/kcat` with `arguments`, feeding it `input`, and kills it after `timeout`.
///
/// Output goes to files rather than pipes, so nothing can block on a full pipe and the
/// output is complete once the process ended.
func runKcat(_ arguments: [String], input: String? = nil, timeout: Duration = .seconds(30)) async throws -> KcatResult {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-kcat-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let outURL = directory.appendingPathComponent("stdout")
    let errURL = directory.appendingPathComponent("stderr")
    let inURL = directory.appendingPathComponent("stdin")
    try Data().write(to: outURL)
    try Data().write(to: errURL)
    try Data((input ?? "").utf8).write(to: inURL)

    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/kcat")
    process.arguments = arguments
    process.standardOutput = try FileHandle(forWritingTo: outURL)
    process.standardError = try FileHandle(forWritingTo: errURL)
    process.standardInput = try FileHandle(forReadingFrom: inURL)

    let watch = KcatWatch()
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
        process.terminationHandler = { _ in
            watch.state.withLock { $0.exited = true }
            continuation.resume()
        }
        do {
            try process.run()
        } catch {
            process.terminationHandler = nil
            continuation.resume(throwing: GantryError(.commandFailed, "could not start kcat: \(error)"))
            return
        }
        let pid = process.processIdentifier
        let watchdog = Task {
            guard (try? await Task.sleep(for: timeout)) != nil else { return }
            // Checked under the lock the exit is recorded with, so a pid that was reused
            // after kcat ended is never signalled.
            watch.state.withLock { state in
                guard !state.exited else { return }
                state.timedOut = true
                kill(pid, SIGKILL)
            }
        }
        watch.state.withLock { $0.watchdog = watchdog }
    }
    watch.state.withLock { $0.watchdog?.cancel() }
    let stdout = (try? String(contentsOf: outURL, encoding: .utf8)) ?? ""
    let stderr = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
    if watch.state.withLock({ $0.timedOut }) {
        throw GantryError(.timeout, "kcat \(arguments.joined(separator: " ")) did not finish within \(timeout); stderr: \(stderr)")
    }
    return KcatResult(status: process.terminationStatus, stdout: stdout, stderr: stderr)
}

/// Whether a kcat run ended or was killed, and its watchdog.
private final class KcatWatch: Sendable {
    struct State {
        var exited = false
        var timedOut = false
        var watchdog: Task<Void, Never>?
    }

    let state = Mutex(State())
}
