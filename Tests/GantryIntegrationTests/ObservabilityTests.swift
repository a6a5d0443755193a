import Foundation
import GantryCore
import GantryCoordinator
import GantryDashboard
import GantryObservability
import GantryRedis
import GantryRuntime
import GantryStore
import GantryTasks
import GantryWorker
import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// A store and an in-memory transport on the shared Redis under a private namespace, with a
/// worker, a coordinator and an observability server (plus the dashboard) in this process.
struct ObservedCluster {
    let store: RedisStateStore
    let transport: InMemoryTransport
    let dispatcher: TaskDispatcher
    let namespace = "gantry-test-obs-\(UUID().uuidString.prefix(8))"

    init() throws {
        var redis = try RedisConfiguration(url: RedisTestEnvironment.url)
        redis.poolSize = 8
        store = RedisStateStore(client: try RedisClient(configuration: redis), configuration: StoreConfiguration(namespace: namespace))
        transport = InMemoryTransport()
        dispatcher = TaskDispatcher(store: store, transport: transport)
    }

    func worker(queues: [String], registry: TaskRegistry = BuiltinTasks.registry) throws -> Worker {
        let configuration = WorkerConfiguration(
            queues: queues, concurrency: 8, lease: .seconds(2), renewInterval: .milliseconds(300), heartbeatInterval: .milliseconds(200), drainTimeout: .seconds(5)
        )
        return try Worker(configuration: configuration, registry: registry, store: store, transport: transport, dispatcher: dispatcher)
    }

    func coordinator() -> Coordinator {
        Coordinator(configuration: CoordinatorConfiguration(leaderLease: .seconds(2), sweepInterval: .milliseconds(50)), store: store, dispatcher: dispatcher)
    }

    /// A server on a free loopback port; with the dashboard unless `dashboard` is false.
    func server(readinessQueue: String, dashboard: Bool = true, extraRoutes: (Router<BasicRequestContext>) -> Void = { _ in }) throws -> ObservabilityServer {
        let board = Dashboard(store: store, transport: transport, leaderLease: LeaderLease(store: store, holder: "test"), pollInterval: .milliseconds(100))
        var logger = Logger(label: "test.observability")
        logger.logLevel = .warning
        return try ObservabilityServer(
            configuration: ObservabilityConfiguration(listen: ListenAddress(host: "127.0.0.1", port: 0)),
            readiness: Readiness.probe([Readiness.redis(store), Readiness.broker(transport, queue: readinessQueue)]),
            logger: logger
        ) { router in
            extraRoutes(router)
            if dashboard { board.register(on: router) }
        }
    }

    func submit(_ yaml: String, input: String = "", registry: TaskRegistry = BuiltinTasks.registry) async throws -> RunID {
        let plan = try PipelinePlan(PipelineSpec.parse(yaml: yaml, knownTasks: registry.names))
        return try await dispatcher.submit(plan, input: Array(input.utf8)).runID
    }

    func waitForEnd(_ run: RunID, timeout: Duration = .seconds(30)) async throws -> RunState {
        try await waitForRunEnd(run, in: store, timeout: timeout)
    }
}

/// The tasks of a pipeline's test: a task that fails once and then succeeds, and one that always fails.
private func flakyRegistry() -> TaskRegistry {
    var registry = BuiltinTasks.registry
    registry.register("flaky-once", kind: .io) { input, context in
        if context.attempt < 2 { throw GantryError(.timeout, "the first attempt times out", isRetriable: true) }
        return input
    }
    registry.register("always-broken", kind: .io) { _, _ in throw GantryError(.taskFailed, "input is corrupt") }
    return registry
}

@Suite struct ObservabilityTests {
    @Test func healthReadinessAndMetricsDescribeTheWorkThisProcessDid() async throws {
        GantryMetrics.bootstrap()
        let cluster = try ObservedCluster()
        // A queue of its own: metrics are per process, and other tests' workers share this one.
        let queue = "obs-\(UUID().uuidString.prefix(8).lowercased())"
        let registry = flakyRegistry()
        let server = try cluster.server(readinessQueue: queue, dashboard: false)
        let worker = try cluster.worker(queues: [queue], registry: registry)
        let run = try await cluster.submit("""
            name: observed
            defaults: { queue: \(queue), retry: { max_attempts: 3, initial_backoff: 20ms, jitter: 0 } }
            stages:
              - { name: lines, task: split, kind: cpu, args: { lines: 1 } }
              - { name: hash, task: sha256, kind: cpu, after: [lines], map: lines }
              - { name: flaky, task: flaky-once, after: [lines] }
              - { name: broken, task: always-broken, after: [lines], retry: 1, on_failure: continue }
              - { name: report, task: report, after: [hash, flaky] }
            """, input: "a\nb\nc\nd\n", registry: registry)
        let (state, address, health, ready, metrics) = try await withWorkerServices([server, worker, cluster.coordinator()]) {
            let state = try await cluster.waitForEnd(run)
            let address = try await server.waitUntilListening()
            return (state, address, try await httpGet("http://\(address)/healthz"), try await httpGet("http://\(address)/readyz"), try await httpGet("http://\(address)/metrics"))
        }
        #expect(state.isFinal)
        #expect(address.port > 0)
        #expect(health.status == 200 && health.body == "ok\n")
        #expect(ready.status == 200)
        let readiness = try JSONValue(parsing: ready.body)
        #expect(readiness["ready"] == .bool(true))
        #expect(readiness["checks"]?["redis"]?["ok"] == .bool(true))
        #expect(readiness["checks"]?["broker"]?["ok"] == .bool(true))

        #expect(metrics.status == 200)
        let samples = try PrometheusText.parse(metrics.body)
        func count(_ name: String, _ task: String) -> Double { samples.total(name, ["task": task, "queue": queue]) }
        // lines 1, hash 4 elements, flaky (second attempt), report: 7 results; broken failed for good.
        #expect(samples.total("gantry_tasks_succeeded_total", ["queue": queue]) == 7)
        #expect(count("gantry_tasks_succeeded_total", "sha256") == 4)
        #expect(count("gantry_tasks_failed_total", "flaky-once") == 1)
        #expect(count("gantry_tasks_retried_total", "flaky-once") == 1)
        #expect(count("gantry_tasks_succeeded_total", "flaky-once") == 1)
        #expect(count("gantry_tasks_failed_total", "always-broken") == 1)
        #expect(count("gantry_tasks_dead_lettered_total", "always-broken") == 1)
        #expect(count("gantry_tasks_retried_total", "always-broken") == 0)
        #expect(samples.total("gantry_tasks_received_total", ["queue": queue]) == 9)
        #expect(count("gantry_task_duration_seconds_count", "sha256") == 4)
        #expect(count("gantry_task_queue_wait_seconds_count", "report") == 1)
        // Histogram buckets are cumulative and end at +Inf with the count.
        let buckets = samples.filter { $0.name == "gantry_task_duration_seconds_bucket" && $0.labels["task"] == "sha256" && $0.labels["queue"] == queue }
        #expect(buckets.first { $0.labels["le"] == "+Inf" }?.value == 4)
        #expect(samples.total("gantry_tasks_in_flight", ["queue": queue]) == 0)
        #expect(samples.contains { $0.name == "gantry_coordinator_leader" })
    }

    @Test func readinessFailsWhenRedisIsUnreachable() async throws {
        var redis = try RedisConfiguration(url: "redis://127.0.0.1:\(try TCPProbe.freeLoopbackPort())")
        redis.poolSize = 1
        let store = RedisStateStore(client: try RedisClient(configuration: redis))
        let probe = Readiness.probe([Readiness.redis(store), Readiness.broker(InMemoryTransport(), queue: "q")], timeout: .seconds(5))
        let report = await probe()
        #expect(!report.isReady)
        #expect(report.checks.map(\.name) == ["redis", "broker"])
        #expect(report.checks[0].ok == false)
        #expect(report.checks[1].ok == true)
    }

    @Test func aPortInUseIsAClearErrorNamingTheSetting() async throws {
        let cluster = try ObservedCluster()
        let first = try cluster.server(readinessQueue: "default", dashboard: false)
        try await withWorkerServices([first]) {
            let taken = try await first.waitUntilListening()
            var settings = GantrySettings()
            settings.set("observability.coordinator_listen", .string(taken.description), source: "--test")
            let second = try ObservabilityServer(
                configuration: try ObservabilityConfiguration(settings: settings, process: .coordinator),
                readiness: { ReadinessReport(checks: []) }, logger: Logger(label: "test")
            )
            let error = await #expect(throws: GantryError.self) { try await second.run() }
            #expect(error?.message.contains("cannot listen on \(taken)") == true)
            #expect(error?.message.contains("observability.coordinator_listen") == true)

            // The built-in default address gives way: a standby coordinator on the same machine
            // listens on a free port instead.
            let standby = try ObservabilityServer(
                configuration: ObservabilityConfiguration(listen: taken, fallbackToAnyPort: true),
                readiness: { ReadinessReport(checks: []) }, logger: Logger(label: "test")
            )
            try await withWorkerServices([standby]) {
                let address = try await standby.waitUntilListening()
                #expect(address.port != taken.port && address.port > 0)
                #expect(try await httpGet("http://\(address)/healthz").status == 200)
            }
        }
    }
}

/// Keeps every log record, for tests that check what was logged.
final class CapturedLogs: Sendable {
    struct Record: Sendable {
        var message: String
        var metadata: Logger.Metadata
    }

    private let records = Mutex<[Record]>([])

    var all: [Record] { records.withLock { $0 } }

    func logger(_ label: String) -> Logger {
        Logger(label: label) { _ in Handler(logs: self) }
    }

    private struct Handler: LogHandler {
        let logs: CapturedLogs
        var logLevel: Logger.Level = .debug
        var metadata: Logger.Metadata = [:]

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
            logs.records.withLock { $0.append(Record(message: "\(event.message)", metadata: merged)) }
        }
    }
}

@Suite struct TaskLogTests {
    /// Trace context travels in the envelope, and each line a worker logs about a task names the
    /// run, stage, node, attempt, worker and trace.
    @Test func taskLinesCarryRunStageAttemptWorkerAndTrace() async throws {
        let cluster = try ObservedCluster()
        let queue = "logs-\(UUID().uuidString.prefix(8).lowercased())"
        var registry = BuiltinTasks.registry
        registry.register("flaky-once", kind: .io) { input, context in
            if context.attempt < 2 { throw GantryError(.timeout, "the first attempt times out", isRetriable: true) }
            return input
        }
        let run = try await cluster.submit("""
            name: logged
            stages:
              - { name: first, task: flaky-once, queue: \(queue), retry: { max_attempts: 2, initial_backoff: 20ms, jitter: 0 } }
            """, registry: registry)
        // A published envelope carries its run's trace (read here from a transport of its own).
        let spare = InMemoryTransport()
        let spareRun = try await TaskDispatcher(store: cluster.store, transport: spare).submit(
            PipelinePlan(PipelineSpec.parse(yaml: "name: spare\nstages:\n  - { name: only, task: echo }\n", knownTasks: registry.names)), input: []
        ).runID
        let stream = try await spare.consume(queues: ["default"], credit: 1)
        var iterator = stream.makeAsyncIterator()
        let envelope = try TaskEnvelope(decoding: try #require(try await iterator.next()).body)
        let published = try #require(TraceContext(traceParent: envelope.traceParent))
        #expect(published.traceID == TraceContext.traceID(of: spareRun))
        #expect(published == TraceContext(run: spareRun, node: NodeID(stage: "only"), attempt: 1))
        await spare.close()
        let context = TraceContext(run: run, node: NodeID(stage: "first"), attempt: 1)

        let logs = CapturedLogs()
        let configuration = WorkerConfiguration(queues: [queue], concurrency: 2, lease: .seconds(2), renewInterval: .milliseconds(300), workerID: "logging-worker")
        let worker = try Worker(
            configuration: configuration, registry: registry, store: cluster.store, transport: cluster.transport, dispatcher: cluster.dispatcher,
            logger: logs.logger("gantry.worker")
        )
        let state = try await withWorkerServices([worker, cluster.coordinator()]) { try await cluster.waitForEnd(run) }
        #expect(state == .succeeded)
        let taskLines = logs.all.filter { $0.metadata["run"] != nil }
        let retry = try #require(taskLines.first { $0.message.contains("will retry") })
        #expect(retry.metadata["run"] == .string(run.rawValue))
        #expect(retry.metadata["stage"] == .string("first"))
        #expect(retry.metadata["node"] == .string("first"))
        #expect(retry.metadata["attempt"]?.description == "1")
        #expect(retry.metadata["worker"] == .string("logging-worker"))
        #expect(retry.metadata["trace"] == .string(context.traceID))
        let finished = try #require(taskLines.first { $0.message.contains("run finished") })
        #expect(finished.metadata["attempt"]?.description == "2")
        #expect(finished.metadata["trace"] == .string(context.traceID))
    }
}
