import ArgumentParser
import Foundation
import GantryCore
import GantryRuntime
import GantryStore
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct Dev: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a complete local cluster (Redis, a broker, a coordinator, workers) as real processes, and a pipeline on it.",
        discussion: """
            Redis and the broker configured (redis.url, broker.*) are used when they answer; \
            otherwise a private redis-server, Kafka dev broker (gantry-kafka-dev) or RabbitMQ node \
            is started on free loopback ports with its data under the state directory. Then one \
            gantry-coordinator and --workers gantry-worker processes start (the executables next \
            to this gantry), every log going to <state>/logs/. With a pipeline, it is submitted \
            and its progress shown. Ctrl-C (or SIGTERM) stops every process that was started, \
            workers first; a second Ctrl-C kills them at once. With --exit the cluster stops as \
            soon as the run ends.
            """
    )

    @OptionGroup var cluster: ClusterOptions

    @Argument(help: "A pipeline YAML file to submit once the cluster is up.")
    var pipeline: String?

    @Option(help: "The run input: text, or @path to read a file.")
    var input: String?

    @Option(help: "kafka or rabbitmq (overrides broker.kind).")
    var broker: String?

    @Option(help: "How many worker processes to start.")
    var workers = 2

    @Flag(name: .customLong("exit"), help: "Stop the cluster and exit when the pipeline's run ends: status 0 if it succeeded, 2 if not.")
    var exitWhenDone = false

    @Flag(help: "When the run ends, print the results of its final stages.")
    var results = false

    @Flag(help: "Start a private Redis and broker even when the configured ones answer.")
    var isolated = false

    @Option(help: "Where logs and server data go (default: $GANTRY_STATE/dev, else .gantry/dev).")
    var stateDir: String?

    func validate() throws {
        guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1 to 64") }
        if exitWhenDone && pipeline == nil { throw ValidationError("--exit needs a pipeline to wait for") }
        if results && pipeline == nil { throw ValidationError("--results needs a pipeline") }
    }

    func run() async throws {
        try await reportingErrors {
            var settings = try cluster.settings()
            if let broker { settings.set("broker.kind", .string(broker), source: "--broker") }
            let kind = try settings.string("broker.kind")
            guard kind == "kafka" || kind == "rabbitmq" else {
                throw GantryError(.configuration, "gantry dev runs several processes, so it needs a broker they can share: use --broker kafka or --broker rabbitmq (broker.kind is '\(kind)', from \(settings.source(of: "broker.kind")))")
            }
            // Everything that can be wrong with the request is checked before anything starts.
            let plan = try pipeline.map { try PipelinePlan(loadPipeline($0)) }
            let payload = try readInput(input)
            let binaries = try DevBinaries.locate(kafka: kind == "kafka")
            let directory = stateDir ?? (ProcessInfo.processInfo.environment["GANTRY_STATE"].map { $0 + "/dev" } ?? ".gantry/dev")
            let absolute = directory.hasPrefix("/") ? directory : FileManager.default.currentDirectoryPath + "/" + directory
            let devCluster = try DevCluster(stateDirectory: absolute)
            let drain = (try? settings.duration("worker.drain_timeout")) ?? .seconds(20)

            let watcher = SignalWatcher([SIGINT, SIGTERM, SIGHUP])
            let stopRequested = Atomic<Bool>(false)
            let session = DevSession(
                settings: settings, kind: kind, plan: plan, input: payload, workers: workers, exitWhenDone: exitWhenDone,
                printResults: results, isolated: isolated, configFile: cluster.config, binaries: binaries, cluster: devCluster
            )
            let work = Task { try await session.run() }
            let signals = Task {
                var count = 0
                for await number in watcher.stream {
                    count += 1
                    if count == 1 {
                        stopRequested.store(true, ordering: .relaxed)
                        say("\n\(SignalWatcher.name(number)): stopping the cluster (send it again to kill everything at once)")
                        work.cancel()
                    } else {
                        say("killing every process of the cluster")
                        devCluster.killAll()
                    }
                }
            }
            let result = await work.result
            let count = devCluster.started.count
            let killed = await devCluster.stop(serviceGrace: drain + .seconds(10), serverGrace: .seconds(30), say: { say("  \($0)") })
            signals.cancel()
            if count > 0 {
                say(killed.isEmpty ? "stopped all \(count) processes" : "stopped all \(count) processes; had to kill: \(killed.joined(separator: ", "))")
            }
            switch result {
            case .success(let state?):
                if state != .succeeded { throw ExitCode(2) }
            case .success(nil):
                return
            case .failure(let error):
                if stopRequested.load(ordering: .relaxed) { return }
                throw error
            }
        }
    }
}

/// Prints a line at once (standard output may be a pipe or a file).
func say(_ line: String) {
    print(line)
    fflush(nil)
}

/// The executables `gantry dev` starts, found next to the running `gantry`.
struct DevBinaries: Sendable {
    var worker: String
    var coordinator: String
    var kafka: String?

    static func locate(kafka: Bool) throws -> DevBinaries {
        let own = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let directory = own.deletingLastPathComponent().path
        func sibling(_ name: String) throws -> String {
            let path = directory + "/" + name
            guard FileManager.default.isExecutableFile(atPath: path) else {
                throw GantryError(.configuration, "cannot find \(name) next to gantry (in \(directory)); build every product with `swift build`")
            }
            return path
        }
        return DevBinaries(worker: try sibling("gantry-worker"), coordinator: try sibling("gantry-coordinator"), kafka: kafka ? try sibling("gantry-kafka-dev") : nil)
    }
}

/// One `gantry dev` session: bring the cluster up, run the pipeline, wait to be stopped.
struct DevSession: Sendable {
    var settings: GantrySettings
    var kind: String
    var plan: PipelinePlan?
    var input: [UInt8]
    var workers: Int
    var exitWhenDone: Bool
    var printResults: Bool
    var isolated: Bool
    var configFile: String?
    var binaries: DevBinaries
    var cluster: DevCluster

    /// Returns the run's final state with `exitWhenDone`; otherwise runs until cancelled.
    func run() async throws -> RunState? {
        let begin = ContinuousClock.now
        var settings = settings
        var lines: [[String]] = []
        let environment = ProcessInfo.processInfo.environment

        // Redis.
        let configuredRedis = try settings.string("redis.url")
        if !isolated, await redisAnswers(settings) {
            lines.append(["redis", configuredRedis, "configured (\(settings.source(of: "redis.url")))"])
        } else {
            if !isolated { say("redis at \(configuredRedis) (from \(settings.source(of: "redis.url"))) does not answer: starting a private redis-server") }
            let executable = try PrivateServer.executable(named: "redis-server", fix: "install it (ops/bootstrap, or apt-get install redis-server), or point redis.url at a running Redis")
            let redis = try PrivateRedis(
                directory: cluster.stateDirectory + "/redis",
                options: PrivateRedis.Options(appendOnly: false, executable: executable, startTimeout: .seconds(20)),
                launcher: cluster.serverLauncher
            )
            try await redis.start()
            settings.set("redis.url", .string(redis.url), source: "gantry dev")
            lines.append(["redis", redis.url, "started: pid \(redis.process?.pid ?? 0), data in \(redis.directory)"])
        }

        // The broker.
        switch kind {
        case "kafka":
            let configured = try settings.strings("broker.kafka_brokers").joined(separator: ",")
            if !isolated, (try? await GantryRuntime.checkBrokerReachable(settings: settings, timeout: .seconds(2))) != nil {
                lines.append(["kafka", configured, "configured (\(settings.source(of: "broker.kafka_brokers")))"])
            } else {
                if !isolated { say("kafka at \(configured) (from \(settings.source(of: "broker.kafka_brokers"))) does not answer: starting a private gantry-kafka-dev") }
                let port = try TCPProbe.freeLoopbackPort()
                let process = try cluster.start("kafka", role: .server, executable: binaries.kafka ?? "", arguments: ["--port", String(port)], environment: environment)
                try await waitUntil("gantry-kafka-dev on 127.0.0.1:\(port)", timeout: .seconds(30), process: process) {
                    let announced = FileManager.default.contents(atPath: process.logPath).map { String(decoding: $0, as: UTF8.self).contains("bootstrap:") } ?? false
                    guard announced else { return false }
                    return await TCPProbe.connect(host: "127.0.0.1", port: port, timeout: .seconds(1)) == nil
                }
                settings.set("broker.kafka_brokers", .string("127.0.0.1:\(port)"), source: "gantry dev")
                lines.append(["kafka", "127.0.0.1:\(port)", "started gantry-kafka-dev: pid \(process.pid), in memory"])
            }
        default:
            let configured = try settings.string("broker.rabbitmq_url")
            if !isolated, (try? await GantryRuntime.checkBrokerReachable(settings: settings, timeout: .seconds(3))) != nil {
                lines.append(["rabbitmq", configured, "configured (\(settings.source(of: "broker.rabbitmq_url")))"])
            } else {
                if !isolated { say("rabbitmq at \(configured) (from \(settings.source(of: "broker.rabbitmq_url"))) does not answer: starting a private RabbitMQ node (this takes a few seconds)") }
                let (url, detail) = try await startRabbitMQ(environment: environment)
                settings.set("broker.rabbitmq_url", .string(url), source: "gantry dev")
                lines.append(["rabbitmq", url, detail])
            }
        }

        // The coordinator and the workers, pointed at what was chosen above.
        var childEnvironment = environment
        childEnvironment["GANTRY_REDIS_URL"] = try settings.string("redis.url")
        childEnvironment["GANTRY_BROKER"] = kind
        childEnvironment["GANTRY_KAFKA_BROKERS"] = try settings.strings("broker.kafka_brokers").joined(separator: ",")
        childEnvironment["GANTRY_AMQP_URL"] = try settings.string("broker.rabbitmq_url")
        var queues = try settings.strings("worker.queues")
        for stage in plan?.spec.stages ?? [] where !queues.contains(stage.queue) { queues.append(stage.queue) }
        childEnvironment["GANTRY_WORKER_QUEUES"] = queues.joined(separator: ",")
        let arguments = configFile.map { ["--config", $0] } ?? []
        // Health, metrics and dashboard servers on free ports, so several sessions (and the
        // stack's own processes) never fight over one; the coordinator writes where it listens.
        var coordinatorEnvironment = childEnvironment
        let addressFile = cluster.stateDirectory + "/coordinator.address"
        try? FileManager.default.removeItem(atPath: addressFile)
        for (key, variable) in [("observability.coordinator_listen", "GANTRY_OBSERVABILITY_COORDINATOR_LISTEN"), ("observability.worker_listen", "GANTRY_OBSERVABILITY_WORKER_LISTEN")]
        where GantrySettings.defaults[key] != nil && (try? settings.string(key)) != "off" {
            if key.hasPrefix("observability.worker") { childEnvironment[variable] = "127.0.0.1:0" } else { coordinatorEnvironment[variable] = "127.0.0.1:0" }
        }
        if GantrySettings.defaults["observability.port_file"] != nil { coordinatorEnvironment["GANTRY_OBSERVABILITY_PORT_FILE"] = addressFile }
        let coordinator = try cluster.start("coordinator", role: .service, executable: binaries.coordinator, arguments: arguments, environment: coordinatorEnvironment)
        lines.append(["coordinator", "pid \(coordinator.pid)", coordinator.logPath])
        var workerProcesses: [ChildProcess] = []
        for index in 1...workers {
            let worker = try cluster.start("worker-\(index)", role: .service, executable: binaries.worker, arguments: arguments, environment: childEnvironment)
            workerProcesses.append(worker)
            lines.append(["worker-\(index)", "pid \(worker.pid)", worker.logPath])
        }

        // Ready when every worker has sent its first heartbeat.
        let store = try RedisStateStore(settings: settings)
        try await store.checkReachable(settings: settings)
        try await waitUntil("\(workers) worker(s) to report", timeout: .seconds(60), process: nil) {
            let ids = (try? await store.workers().map(\.id)) ?? []
            return workerProcesses.allSatisfy { worker in ids.contains { $0.contains(":\(worker.pid):") } }
        }
        try cluster.checkAlive()
        if kind == "kafka" {
            // A Kafka consumer gets its partitions a moment after it starts (the group
            // rebalances as each worker joins); until then published tasks just wait. Best effort:
            // a worker that says nothing in time is not an error.
            let deadline = ContinuousClock.now + .seconds(15)
            while ContinuousClock.now < deadline, !workerProcesses.allSatisfy({ worker in
                FileManager.default.contents(atPath: worker.logPath).map { String(decoding: $0, as: UTF8.self).contains("partitions assigned") } ?? false
            }) {
                try cluster.checkAlive()
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        if GantrySettings.defaults["observability.port_file"] != nil {
            // The coordinator writes its address once its server listens (when it has one);
            // by the time the workers report, it normally has.
            let deadline = ContinuousClock.now + .seconds(1)
            while !FileManager.default.fileExists(atPath: addressFile) && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            if let data = FileManager.default.contents(atPath: addressFile) {
                let address = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                if !address.isEmpty { lines.append(["dashboard", "http://\(address)/", "the coordinator's dashboard, /metrics and /healthz"]) }
            }
        }

        say("gantry dev: cluster up in \((ContinuousClock.now - begin).shortDescription) (\(kind), queues: \(queues.joined(separator: ", ")))")
        say(StatusRenderer.columns(lines, indent: "  "))
        var exports = ["GANTRY_REDIS_URL=\(try settings.string("redis.url"))", "GANTRY_BROKER=\(kind)"]
        exports.append(kind == "kafka" ? "GANTRY_KAFKA_BROKERS=\(try settings.strings("broker.kafka_brokers").joined(separator: ","))" : "GANTRY_AMQP_URL=\(try settings.string("broker.rabbitmq_url"))")
        say("  from another shell: export \(exports.joined(separator: " "))")

        if let plan {
            let runtime = try await GantryRuntime.connect(settings: settings, logger: Logger(label: "gantry.cli"))
            let created: CreatedRun
            do {
                created = try await runtime.dispatcher.submit(plan, input: input)
            } catch {
                await runtime.transport.close()
                throw error
            }
            await runtime.transport.close()
            say("submitted run \(created.runID) (\(plan.spec.name), \(plan.spec.stages.count) stages)")
            let state = try await ProgressView.follow(created.runID, store: runtime.store)
            if printResults { try await printSinkResults(created.runID, plan: plan, store: runtime.store) }
            say("run \(created.runID) \(state.rawValue)")
            if exitWhenDone { return state }
            say("the cluster keeps running; Ctrl-C stops it")
        } else {
            say("ready; Ctrl-C stops the cluster")
        }

        // Until stopped: report any process that ends by itself.
        while true {
            try await Task.sleep(for: .seconds(1))
            for process in cluster.newlyExited() {
                say("\(process.name) (pid \(process.pid)) stopped by itself: \(process.exitDescription ?? "exited"); the end of \(process.logPath):\n\(process.logTail())")
            }
        }
    }

    private func printSinkResults(_ run: RunID, plan: PipelinePlan, store: RedisStateStore) async throws {
        let sinks = plan.topologicalOrder.filter { plan.dependents[$0].isEmpty }.map { plan[$0].name }
        let status = try await store.status(run)
        let succeeded = Set(status.stages.filter { $0.state == .succeeded }.map(\.node.stage))
        let ready = sinks.filter(succeeded.contains)
        guard !ready.isEmpty else { return }
        let results = try await store.upstreamResults(run, stages: ready)
        for stage in ready {
            let bytes = results[stage] ?? []
            say("result of \(stage) (\(bytes.count) bytes):")
            say(String(decoding: bytes.prefix(4000), as: UTF8.self) + (bytes.count > 4000 ? "…" : ""))
        }
    }

    private func redisAnswers(_ settings: GantrySettings) async -> Bool {
        guard let store = try? RedisStateStore(settings: settings) else { return false }
        return (try? await store.checkReachable(settings: settings)) != nil
    }

    /// A private RabbitMQ node, like `ops/stack` runs but on free ports, with its own Erlang
    /// port mapper (so nothing outlives the session) and its files under the state directory.
    private func startRabbitMQ(environment: [String: String]) async throws -> (url: String, detail: String) {
        let script = try PrivateRabbitMQ.serverScript(fix: "install it (ops/bootstrap, or apt-get install rabbitmq-server), or point broker.rabbitmq_url at a running RabbitMQ, or use --broker kafka")
        let rabbit = try PrivateRabbitMQ(
            directory: cluster.stateDirectory + "/rabbitmq",
            options: PrivateRabbitMQ.Options(nodePrefix: "gantry-dev", privatePortMapper: true, environment: environment, executable: script, probeName: "gantry-cli-check"),
            launcher: cluster.serverLauncher
        )
        try await rabbit.start()
        return (rabbit.url, "started node \(rabbit.nodeName): pid \(rabbit.process?.pid ?? 0), data in \(rabbit.directory)")
    }

    /// Polls `condition` every 200 ms until it holds; throws when `timeout` passes, when
    /// `process` (or any process of the cluster) stops, or when the session is cancelled.
    private func waitUntil(_ what: String, timeout: Duration, process: ChildProcess?, _ condition: () async -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            if await condition() { return }
            try cluster.checkAlive()
            guard ContinuousClock.now < deadline else {
                let log = process.map { "; the end of \($0.logPath):\n\($0.logTail())" } ?? "; logs are in \(cluster.logDirectory)"
                throw GantryError(.timeout, "gave up waiting for \(what) after \(timeout.shortDescription)\(log)")
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }
}
