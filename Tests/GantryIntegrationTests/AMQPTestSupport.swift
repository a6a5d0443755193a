import Foundation
import GantryAMQP
import GantryCore
import Testing

/// Shared plumbing of the AMQP integration tests: the broker from `GANTRY_AMQP_URL`
/// (default: the one `ops/stack up rabbitmq` starts), unique names, deadlines.
enum AMQPTestSupport {
    static func configuration(name: String = "gantry-tests") throws -> AMQPConfiguration {
        var configuration = try AMQPConfiguration.fromEnvironment()
        configuration.connectionName = name
        return configuration
    }

    static func connect(name: String = "gantry-tests") async throws -> AMQPClient {
        try await AMQPClient.connect(configuration(name: name))
    }

    /// A queue (or exchange) name no other test, run or engineer uses.
    static func uniqueName(_ purpose: String) -> String {
        "gantry-test-\(purpose)-\(UUID().uuidString.lowercased())"
    }

    /// Runs `body` with a fresh client, then closes it and deletes `queues` — on success and
    /// on failure, through a separate client because the test's own may have failed.
    static func withClient<T: Sendable>(
        deleting queues: [String],
        _ body: (AMQPClient) async throws -> T
    ) async throws -> T {
        let client = try await connect()
        let result: Result<T, any Error>
        do {
            result = .success(try await body(client))
        } catch {
            result = .failure(error)
        }
        await client.close()
        await deleteQueues(queues)
        return try result.get()
    }

    static func deleteQueues(_ queues: [String]) async {
        guard !queues.isEmpty, let janitor = try? await connect(name: "gantry-tests-cleanup") else { return }
        for queue in queues {
            _ = try? await janitor.deleteQueue(queue)
        }
        await janitor.close()
    }

    /// The result of `operation`, or a `.timeout` error once `seconds` have passed.
    static func withDeadline<T: Sendable>(
        _ seconds: Double = 10,
        _ what: String,
        _ operation: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await operation() }
            group.addTask {
                try await Task.sleep(for: .seconds(seconds))
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else {
                throw GantryError(.timeout, "\(what) did not happen within \(seconds)s")
            }
            return value
        }
    }

    /// The consumer's next delivery, failing the test if none arrives within the deadline.
    static func nextDelivery(_ consumer: AMQPConsumer, _ what: String = "a delivery", seconds: Double = 10) async throws -> AMQPDelivery {
        let delivery = try await withDeadline(seconds, what) { try await consumer.next() }
        return try #require(delivery, "the consumer ended while waiting for \(what)")
    }

    /// Polls `condition` until it holds, failing with `.timeout` after `seconds`.
    static func eventually(_ what: String, seconds: Double = 10, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now.advanced(by: .seconds(seconds))
        while try await !condition() {
            guard ContinuousClock.now < deadline else {
                throw GantryError(.timeout, "\(what): still not true after \(seconds)s")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Runs `rabbitmqctl` against the `ops/stack` node; nil when that is not possible here
    /// (another broker through GANTRY_AMQP_URL, or no RabbitMQ install).
    static func rabbitmqctl(_ arguments: [String]) -> String? {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let common = root.appendingPathComponent("ops/lib/common.sh").path
        guard FileManager.default.fileExists(atPath: common),
              FileManager.default.isExecutableFile(atPath: "/usr/lib/rabbitmq/bin/rabbitmqctl") else { return nil }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        let quoted = arguments.map { "'\($0.replacingOccurrences(of: "'", with: "'\\''"))'" }.joined(separator: " ")
        process.arguments = ["-c", "source '\(common)' && \"$RABBITMQ_BIN/rabbitmqctl\" -q \(quoted)"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return nil }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// ``rabbitmqctl(_:)`` on its own thread: it blocks for a second or two while Erlang boots.
    static func rabbitmqctlAsync(_ arguments: [String]) async -> String? {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(returning: rabbitmqctl(arguments))
            }
        }
    }

    /// Whether the tests can reach the `ops/stack` node with rabbitmqctl.
    static let canUseRabbitmqctl: Bool = rabbitmqctl(["status"]) != nil
}
