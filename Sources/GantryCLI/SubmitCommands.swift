import ArgumentParser
import Foundation
import GantryCore
import GantryRuntime
import GantryStore
import GantryTasks
import Logging

/// The runtime for commands that publish: Redis plus the configured broker.
func connectRuntime(_ cluster: ClusterOptions, broker: String?) async throws -> GantryRuntime {
    var settings = try cluster.settings()
    if let broker { settings.set("broker.kind", .string(broker), source: "--broker") }
    // Both servers are checked before the transport exists: a Kafka client would start
    // logging connection failures of its own.
    try await RedisStateStore(settings: settings).checkReachable(settings: settings)
    try await GantryRuntime.checkBrokerReachable(settings: settings)
    return try await GantryRuntime.connect(settings: settings, logger: Logger(label: "gantry.cli"))
}

/// Submits `plan`, prints the run id (or JSON), and with `wait` follows it to the end: exit
/// status 2 when the run does not succeed. Returns the run.
@discardableResult
func submitAndReport(_ plan: PipelinePlan, input: [UInt8], idempotencyKey: String?, wait: Bool, json: Bool, cluster: ClusterOptions, broker: String?, afterSuccess: ((RunID, RedisStateStore) async throws -> Void)? = nil) async throws -> RunID {
    let runtime = try await connectRuntime(cluster, broker: broker)
    let created: CreatedRun
    do {
        created = try await runtime.dispatcher.submit(plan, input: input, idempotencyKey: idempotencyKey)
    } catch {
        await runtime.transport.close()
        throw error
    }
    await runtime.transport.close()
    if json {
        if !wait { try printJSON(["run": created.runID.rawValue, "created": created.created ? "true" : "false"]) }
    } else {
        print(created.created ? "submitted run \(created.runID) (\(plan.spec.name), \(plan.spec.stages.count) stages)" : "run \(created.runID) already exists for this idempotency key")
    }
    guard wait else { return created.runID }
    let state = try await ProgressView.follow(created.runID, store: runtime.store, mode: json ? .quiet : .automatic)
    if json { try printJSON(try statusJSON(try await runtime.store.status(created.runID))) }
    if state == .succeeded, let afterSuccess { try await afterSuccess(created.runID, runtime.store) }
    if state != .succeeded { throw ExitCode(2) }
    return created.runID
}

struct Submit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Submit a pipeline; with --wait, show live progress and exit non-zero if the run fails.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var output: OutputOptions

    @Argument(help: "The pipeline YAML file.")
    var pipeline: String

    @Option(help: "The run input: JSON or text, or @path to read a file.")
    var input: String?

    @Option(help: "Submitting the same key again returns the first run instead of starting another.")
    var idempotencyKey: String?

    @Option(help: "rabbitmq, kafka or memory (overrides broker.kind).")
    var broker: String?

    @Flag(help: "Wait for the run to end, showing progress per stage.")
    var wait = false

    func run() async throws {
        try await reportingErrors {
            let plan = try PipelinePlan(loadPipeline(pipeline))
            try await submitAndReport(plan, input: try readInput(input), idempotencyKey: idempotencyKey, wait: wait, json: output.json, cluster: cluster, broker: broker)
        }
    }
}

struct RunTask: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run a single task as a one-stage job on the cluster.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var output: OutputOptions

    @Argument(help: "The task name (see `gantry tasks`).")
    var task: String

    @Option(help: "The task input: text, or @path to read a file.")
    var input: String?

    @Option(help: "Task arguments as a JSON object.")
    var args: String?

    @Option(help: "The stage kind: cpu or io (default: the task's own).")
    var kind: String?

    @Option(help: "The queue to publish to.")
    var queue = "default"

    @Option(help: "rabbitmq, kafka or memory (overrides broker.kind).")
    var broker: String?

    @Flag(help: "Wait for the result and print it.")
    var wait = false

    func run() async throws {
        try await reportingErrors {
            let definition = try BuiltinTasks.registry.require(task)
            let stageKind = try kind.map { text -> StageKind in
                guard let parsed = StageKind(rawValue: text) else { throw GantryError(.invalidArgument, "--kind must be cpu or io, got '\(text)'") }
                return parsed
            } ?? definition.kind
            let arguments = try args.map { try JSONValue(parsing: $0) } ?? .null
            let stage = StageSpec(name: "job", task: task, kind: stageKind, args: arguments, queue: queue)
            let plan = try PipelinePlan(PipelineSpec(name: "run-\(task)", stages: [stage]), knownTasks: BuiltinTasks.registry.names)
            let json = output.json
            try await submitAndReport(plan, input: try readInput(input), idempotencyKey: nil, wait: wait, json: json, cluster: cluster, broker: broker) { run, store in
                guard !json, let result = try await store.result(run, NodeID(stage: "job")) else { return }
                print(String(decoding: result, as: UTF8.self))
            }
        }
    }
}
