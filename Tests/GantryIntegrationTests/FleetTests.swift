import Foundation
import GantryCore
import GantryRedis
import GantryStore
import Testing

/// `ops/fleet` with a name, namespace, queue prefix and consumer group of its own, on the local
/// stack, using the binaries this test bundle was built with.
private struct Fleet {
    let name: String
    let broker: String
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized
    let products: URL

    init(broker: String) {
        self.broker = broker
        name = "test-\(broker)-\(UUID().uuidString.prefix(8).lowercased())"
        let first = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        // The test bundle sits one level deeper on some toolchains.
        products = FileManager.default.isExecutableFile(atPath: first.appendingPathComponent("gantry-worker").path) ? first : first.deletingLastPathComponent()
    }

    var directory: URL { root.appendingPathComponent(".gantry/fleet/\(name)") }

    var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["GANTRY_STORE_NAMESPACE"] = name
        environment["GANTRY_BROKER_QUEUE_PREFIX"] = name + "."
        environment["GANTRY_BROKER_KAFKA_GROUP"] = name
        environment["GANTRY_BROKER"] = broker
        environment["GANTRY_POOL_SIZE"] = "1"
        environment["GANTRY_BIN"] = products.path
        environment.removeValue(forKey: "GANTRY_CONFIG")
        return environment
    }

    /// Runs `executable` with `arguments` in the repository; returns its status and output.
    @discardableResult
    func run(_ executable: String, _ arguments: [String], timeout: Duration = .seconds(180)) async throws -> (status: Int32, output: String) {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-fleet-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: log) }
        let process = try ChildProcess.spawn(executable, arguments, environment: environment, directory: root.path, output: log)
        return try await process.wait(timeout: timeout)
    }

    func fleet(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        try await run(root.appendingPathComponent("ops/fleet").path, arguments + ["--name", name])
    }

    /// Every process's `host:port`, by process name.
    func addresses() throws -> [String: String] {
        var found: [String: String] = [:]
        for file in try FileManager.default.contentsOfDirectory(atPath: directory.path) where file.hasSuffix(".addr") {
            let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
            found[String(file.dropLast(5))] = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return found
    }
}

@Suite(.serialized) struct FleetTests {
    /// Four workers and two coordinators as separate processes run a mixed CPU and I/O pipeline;
    /// every process's `/metrics` parses, and together they count exactly the run's tasks.
    @Test(arguments: ["rabbitmq", "kafka"])
    func fourWorkersAndTwoCoordinatorsRunAMixedPipeline(broker: String) async throws {
        let fleet = Fleet(broker: broker)
        let up = try await fleet.fleet(["up", "--workers", "4", "--broker", broker])
        do {
            try #require(up.status == 0, "ops/fleet up failed:\n\(up.output)")
            #expect(up.output.contains("(leader)"))
            try await runMixedPipeline(on: fleet)
        } catch {
            _ = try? await fleet.fleet(["down"])
            throw error
        }
        let down = try await fleet.fleet(["down"])
        #expect(down.status == 0, "\(down.output)")
        // Every process is gone: down leaves no pid files and nothing answers.
        #expect(try FileManager.default.contentsOfDirectory(atPath: fleet.directory.path).filter { $0.hasSuffix(".pid") }.isEmpty)
        try? FileManager.default.removeItem(at: fleet.directory)
    }

    private func runMixedPipeline(on fleet: Fleet) async throws {
        let broker = fleet.broker

        let files = FileManager.default.temporaryDirectory.appendingPathComponent(fleet.name)
        try FileManager.default.createDirectory(at: files, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: files) }
        let pipeline = files.appendingPathComponent("mixed.yaml")
        try """
            name: fleet-mixed
            defaults: { retry: { max_attempts: 3, initial_backoff: 100ms } }
            stages:
              - { name: chunks, task: split, kind: cpu, args: { lines: 2 } }
              - { name: hash, task: sha256, kind: cpu, after: [chunks], map: chunks, args: { rounds: 500 } }
              - { name: pause, task: sleep, kind: io, after: [chunks], map: chunks, args: { duration: 20ms } }
              - { name: words, task: wordcount, kind: cpu }
              - { name: report, task: report, after: [hash, pause, words] }
            """.write(to: pipeline, atomically: true, encoding: .utf8)
        let input = files.appendingPathComponent("input.txt")
        try (1...24).map { "line \($0) of the fleet test input" }.joined(separator: "\n").write(to: input, atomically: true, encoding: .utf8)
        let submitted = try await fleet.run(fleet.products.appendingPathComponent("gantry").path, ["submit", pipeline.path, "--input", "@\(input.path)", "--json"])
        try #require(submitted.status == 0, "gantry submit failed:\n\(submitted.output)")
        let runText = try #require(try JSONValue(parsing: submitted.output)["run"]?.stringValue)
        let run = try RunID(validating: runText)

        var redis = try RedisConfiguration(url: RedisTestEnvironment.url)
        redis.poolSize = 2
        let store = RedisStateStore(client: try RedisClient(configuration: redis), configuration: StoreConfiguration(namespace: fleet.name))
        try await redisWaitUntil("run \(run) to finish on the \(broker) fleet", timeout: .seconds(120)) {
            try await store.runState(run)?.isFinal == true
        }
        let status = try await store.status(run)
        #expect(status.state == .succeeded, "\(status.stages.map { "\($0.node) \($0.state) \($0.error ?? "")" })")
        // One task per stage, one per element for mapped stages: 1 + 12 + 12 + 1 + 1.
        let tasks = status.stages.map { $0.elements ?? 1 }.reduce(0, +)
        #expect(tasks == 27)

        let addresses = try fleet.addresses()
        #expect(addresses.keys.sorted() == ["coordinator-1", "coordinator-2", "worker-1", "worker-2", "worker-3", "worker-4"])
        var metrics: [String: [PrometheusSample]] = [:]
        func scrape() async throws {
            for (process, address) in addresses {
                let reply = try await httpGet("http://\(address)/metrics")
                #expect(reply.status == 200)
                metrics[process] = try PrometheusText.parse(reply.body)
            }
        }
        func workersTotal(_ name: String, _ labels: [String: String] = [:]) -> Double {
            metrics.filter { $0.key.hasPrefix("worker-") }.values.map { $0.total(name, labels) }.reduce(0, +)
        }
        // The run ends inside the last commit; that worker counts it a moment later.
        try await redisWaitUntil("the workers' metrics to count every task") {
            try await scrape()
            return workersTotal("gantry_tasks_succeeded_total") >= Double(tasks)
        }
        #expect(workersTotal("gantry_tasks_succeeded_total") == Double(tasks))
        #expect(workersTotal("gantry_tasks_succeeded_total", ["task": "sha256"]) == 12)
        #expect(workersTotal("gantry_tasks_succeeded_total", ["task": "sleep"]) == 12)
        #expect(workersTotal("gantry_tasks_succeeded_total", ["task": "split"]) == 1)
        #expect(workersTotal("gantry_tasks_succeeded_total", ["task": "report"]) == 1)
        #expect(workersTotal("gantry_tasks_failed_total") == 0)
        #expect(workersTotal("gantry_tasks_dead_lettered_total") == 0)
        #expect(workersTotal("gantry_tasks_received_total") >= Double(tasks))
        #expect(workersTotal("gantry_task_duration_seconds_count") >= Double(tasks))
        #expect(workersTotal("gantry_task_queue_wait_seconds_count") == workersTotal("gantry_task_duration_seconds_count"))
        #expect(workersTotal("gantry_stale_commits_refused_total") == Double(status.staleCommitsRefused))
        for (process, samples) in metrics {
            let kind = process.hasPrefix("worker-") ? "worker" : "coordinator"
            #expect(samples.contains { $0.name == "gantry_process_info" && $0.labels["kind"] == kind }, "\(process)")
            if kind == "worker" {
                #expect(samples.total("gantry_pool_children_alive") == 1, "\(process)")
                #expect(samples.total("gantry_tasks_in_flight") == 0, "\(process)")
            }
        }
        let leaders = metrics.filter { $0.key.hasPrefix("coordinator-") }.values.map { $0.total("gantry_coordinator_leader") }
        #expect(leaders.sorted() == [0, 1])

        for address in addresses.values {
            #expect(try await httpGet("http://\(address)/healthz").status == 200)
            #expect(try await httpGet("http://\(address)/readyz").status == 200)
        }
        // Workers report where their metrics are in their heartbeat (`gantry workers`, the
        // dashboard). A heartbeat is refreshed periodically, so on a loaded machine one may be
        // between refreshes: wait for all four, with a deadline.
        let workerAddresses = Set(addresses.filter { $0.key.hasPrefix("worker-") }.values)
        var heartbeats: Set<String> = []
        try? await redisWaitUntil("every worker's heartbeat", timeout: .seconds(15)) {
            heartbeats = Set(try await store.workers().compactMap { $0.fields["metrics"] })
            return heartbeats == workerAddresses
        }
        #expect(heartbeats == workerAddresses)
    }
}
