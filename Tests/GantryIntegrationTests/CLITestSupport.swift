import Foundation
import GantryAMQP
import GantryCore
import GantryRedis
import GantryStore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Runs the built `gantry` binary and the cluster it talks to, for the CLI tests.
enum CLI {
    /// The built `gantry` (next to the test bundle, or one level up on some toolchains).
    static var binary: URL {
        let products = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let direct = products.appendingPathComponent("gantry")
        if FileManager.default.isExecutableFile(atPath: direct.path) { return direct }
        return products.deletingLastPathComponent().appendingPathComponent("gantry")
    }

    /// The repository root (for the example pipelines).
    static var root: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// Runs `gantry arguments` with `environment` added to this process's and returns its exit
    /// status, standard output and standard error.
    ///
    /// The child is waited for on a thread of its own, never on the test's cooperative thread.
    static func run(_ arguments: [String], environment: [String: String] = [:]) async throws -> (status: Int32, out: String, err: String) {
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        // Standard error goes to a file and standard output to a pipe read to its end, so a
        // chatty child never blocks on a full pipe.
        let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-cli-\(UUID().uuidString).err")
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errURL) }
        let out = Pipe()
        process.standardOutput = out
        process.standardError = try FileHandle(forWritingTo: errURL)
        try process.run()
        let outData: Data = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                let data = out.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                continuation.resume(returning: data)
            }
        }
        let errData = (try? Data(contentsOf: errURL)) ?? Data()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }

    /// `gantry arguments` running in the background, its output going to files the test reads
    /// while it runs.
    final class Background: @unchecked Sendable {
        // @unchecked: the Process is only touched from the test's task.
        let process = Process()
        let outURL: URL
        let errURL: URL

        init(_ arguments: [String], environment: [String: String] = [:]) throws {
            let base = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-cli-\(UUID().uuidString)")
            outURL = base.appendingPathExtension("out")
            errURL = base.appendingPathExtension("err")
            _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
            _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
            process.executableURL = CLI.binary
            process.arguments = arguments
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
            process.standardOutput = try FileHandle(forWritingTo: outURL)
            process.standardError = try FileHandle(forWritingTo: errURL)
            try process.run()
        }

        var out: String { (try? String(contentsOf: outURL, encoding: .utf8)) ?? "" }
        var err: String { (try? String(contentsOf: errURL, encoding: .utf8)) ?? "" }

        /// Waits until standard output contains `text`; false after `timeout` or if the process ended first.
        func waitForOutput(_ text: String, timeout: Duration) async -> Bool {
            let deadline = ContinuousClock.now + timeout
            while ContinuousClock.now < deadline {
                if out.contains(text) { return true }
                if !process.isRunning { return out.contains(text) }
                try? await Task.sleep(for: .milliseconds(50))
            }
            return false
        }

        /// Waits for the process to exit; its status, or nil after `timeout` (then it is killed).
        func waitForExit(timeout: Duration) async -> Int32? {
            let deadline = ContinuousClock.now + timeout
            while process.isRunning {
                guard ContinuousClock.now < deadline else {
                    process.terminate()
                    return nil
                }
                try? await Task.sleep(for: .milliseconds(50))
            }
            return process.terminationStatus
        }

        deinit {
            if process.isRunning { process.terminate() }
            try? FileManager.default.removeItem(at: outURL)
            try? FileManager.default.removeItem(at: errURL)
        }
    }

    /// A file with `text` in a new temporary directory.
    static func temporaryFile(_ name: String, _ text: String) throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Parses JSON output, failing the test with the text when it is not JSON.
    static func json(_ text: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) throws -> JSONValue {
        do {
            return try JSONValue(parsing: text)
        } catch {
            Issue.record("not JSON: \(text)", sourceLocation: sourceLocation)
            throw error
        }
    }

    /// Whether anything is left of a process or its process group.
    static func isAlive(_ pid: Int32) -> Bool {
        kill(pid, 0) == 0 || kill(-pid, 0) == 0
    }
}

/// A namespace and a queue of their own on the local stack's Redis and broker, a store to act
/// as a worker would (claim, fail, commit), and the cleanup of both.
struct CLIScene {
    let namespace = "gantry-cli-\(UUID().uuidString.prefix(8).lowercased())"
    let queue = "cli-\(UUID().uuidString.prefix(8).lowercased())"
    let store: RedisStateStore

    /// Runs `body` with a new scene and cleans up after it, whether it threw or not.
    static func with(_ body: (CLIScene) async throws -> Void) async throws {
        let scene = try CLIScene()
        do {
            try await body(scene)
        } catch {
            await scene.cleanUp()
            throw error
        }
        await scene.cleanUp()
    }

    init() throws {
        let url = ProcessInfo.processInfo.environment["GANTRY_REDIS_URL"] ?? "redis://127.0.0.1:6390"
        store = RedisStateStore(client: try RedisClient(configuration: RedisConfiguration(url: url)), configuration: StoreConfiguration(namespace: namespace))
    }

    /// The environment for `gantry`: this namespace, RabbitMQ (or `broker`), no config file.
    func environment(broker: String = "rabbitmq") -> [String: String] {
        ["GANTRY_STORE_NAMESPACE": namespace, "GANTRY_BROKER": broker]
    }

    /// Submits `yaml` (written to a file) with `gantry submit --json` and returns the run.
    func submit(_ yaml: String, input: String = "hello", broker: String = "rabbitmq") async throws -> RunID {
        let path = try CLI.temporaryFile("pipeline.yaml", yaml)
        let submitted = try await CLI.run(["submit", path, "--input", input, "--json"], environment: environment(broker: broker))
        guard submitted.status == 0, let text = try CLI.json(submitted.out)["run"]?.stringValue, let run = RunID(rawValue: text) else {
            throw GantryError(.commandFailed, "gantry submit failed (\(submitted.status)): \(submitted.err)")
        }
        return run
    }

    /// The current epoch of a node, from the store.
    func epoch(_ run: RunID, _ node: String) async throws -> UInt64 {
        let status = try await store.status(run)
        let all = status.stages + status.elements.values.flatMap { $0 }
        return try #require(all.first { $0.node.description == node }).epoch
    }

    /// Claims `node` as `owner`, the way a worker does.
    @discardableResult
    func claim(_ run: RunID, _ node: String, owner: String = "cli-test-worker", lease: Duration = .seconds(60)) async throws -> UInt64 {
        let nodeID = try #require(NodeID(node))
        let epoch = try await epoch(run, node)
        let outcome = try await store.claim(run, nodeID, epoch: epoch, owner: owner, lease: lease)
        guard case .claimed = outcome else { throw GantryError(.commandFailed, "claim of \(node) was \(outcome)") }
        return epoch
    }

    /// Claims `node` and fails it: retried after `backoff` when `retriable`, else dead-lettered.
    func claimAndFail(_ run: RunID, _ node: String, error: String, retriable: Bool, backoff: Duration = .seconds(600)) async throws {
        let epoch = try await claim(run, node)
        _ = try await store.fail(run, try #require(NodeID(node)), epoch: epoch, owner: "cli-test-worker", error: error, retriable: retriable, backoff: backoff)
    }

    /// Claims `node` and commits `result`.
    func claimAndCommit(_ run: RunID, _ node: String, result: String) async throws {
        let epoch = try await claim(run, node)
        _ = try await store.commit(run, try #require(NodeID(node)), epoch: epoch, owner: "cli-test-worker", result: Array(result.utf8))
    }

    /// Removes the namespace's keys and the RabbitMQ queues the test published to.
    ///
    /// The keys are named from the runs' layout rather than found with SCAN: the shared Redis
    /// holds millions of keys of other tests and benchmarks.
    func cleanUp(queues: [String] = []) async {
        var keys = ["runs", "active", "events", "dlq", "workers"].map { "\(namespace):\($0)" }
        for run in (try? await store.recentRuns(limit: 10_000)) ?? [] {
            let prefix = "\(namespace):{\(run.rawValue)}:"
            keys += ["run", "in", "t", "ev"].map { prefix + $0 }
            guard let status = try? await store.status(run) else { continue }
            let nodes = status.stages.map(\.node) + status.elements.values.flatMap { $0.map(\.node) }
            keys += nodes.flatMap { [prefix + "n:\($0)", prefix + "r:\($0)"] }
        }
        _ = try? await store.client.send(["UNLINK"] + keys.map { .string($0) })
        let url = ProcessInfo.processInfo.environment["GANTRY_AMQP_URL"] ?? AMQPConfiguration.defaultURL
        guard let configuration = try? AMQPConfiguration(url: url) else { return }
        for name in ([queue] + queues).flatMap({ ["gantry." + $0, "gantry." + $0 + ".dlq"] }) {
            // A client per queue: deleting a queue that does not exist closes the channel.
            guard let client = try? await AMQPClient.connect(configuration) else { return }
            _ = try? await client.deleteQueue(name)
            await client.close()
        }
    }
}
