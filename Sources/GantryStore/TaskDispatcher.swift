import GantryCore
import Synchronization

/// Turns nodes the store has queued into task messages on the broker.
///
/// Whoever receives ready nodes from the store publishes them at once: the submitter the roots,
/// a worker the dependents its commit released, the coordinator what its sweep re-queued. If
/// that publisher dies first, the node's queue deadline brings it back through the
/// coordinator, so a lost publish delays a node but never loses it; a duplicate publish is
/// harmless because claims are fenced by epoch.
public final class TaskDispatcher: Sendable {
    private let store: RedisStateStore
    private let transport: any TaskTransport
    private let signing: SigningKey?
    /// Specs by run, with their stages by name: a run's spec never changes, so one read per run
    /// and process suffices.
    private let specs = Mutex<[RunID: IndexedSpec]>([:])
    private let maxCachedSpecs = 10_000

    /// A key for signing every envelope this dispatcher publishes.
    public struct SigningKey: Sendable {
        public var id: String
        public var secret: [UInt8]
        public init(id: String, secret: [UInt8]) {
            self.id = id
            self.secret = secret
        }
    }

    /// Creates a dispatcher publishing through `transport`.
    public init(store: RedisStateStore, transport: any TaskTransport, signing: SigningKey? = nil) {
        self.store = store
        self.transport = transport
        self.signing = signing
    }

    /// Creates a run of `plan` and publishes its root stages: what `gantry submit` does.
    ///
    /// With an `idempotencyKey`, submitting the same key again returns the first run and
    /// publishes nothing (its roots were published by the first submission, or are brought back
    /// by the coordinator's queue deadline if that submission died before publishing).
    public func submit(_ plan: PipelinePlan, input: [UInt8], idempotencyKey: String? = nil) async throws -> CreatedRun {
        let created = try await store.createRun(plan, input: input, idempotencyKey: idempotencyKey)
        remember(plan.spec, for: created.runID)
        try await publish(created.ready, rootInput: input)
        return created
    }

    /// A spec and its stages by name, so that finding a stage of a long pipeline is one lookup.
    private final class IndexedSpec: Sendable {
        let spec: PipelineSpec
        let stages: [StageName: StageSpec]
        /// The stages that depend on each stage.
        let dependents: [StageName: [StageSpec]]

        init(_ spec: PipelineSpec) {
            self.spec = spec
            self.stages = Dictionary(spec.stages.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
            var dependents: [StageName: [StageSpec]] = [:]
            for stage in spec.stages {
                for upstream in stage.after { dependents[upstream, default: []].append(stage) }
            }
            self.dependents = dependents
        }
    }

    /// Remembers a spec the caller already has (the submitter), sparing a read.
    public func remember(_ spec: PipelineSpec, for run: RunID) {
        _ = remember(IndexedSpec(spec), for: run)
    }

    private func remember(_ indexed: IndexedSpec, for run: RunID) -> IndexedSpec {
        specs.withLock { cache in
            if cache.count >= maxCachedSpecs { cache.removeAll(keepingCapacity: true) }
            cache[run] = indexed
        }
        return indexed
    }

    private func indexedSpec(of run: RunID) async throws -> IndexedSpec {
        if let cached = specs.withLock({ $0[run] }) { return cached }
        return remember(IndexedSpec(try await store.spec(run)), for: run)
    }

    /// The spec of `run`, from the cache or Redis.
    public func spec(of run: RunID) async throws -> PipelineSpec {
        try await indexedSpec(of: run).spec
    }

    /// The stages of `run` that depend on its stage `name` (from the cache or Redis).
    public func dependents(of name: StageName, in run: RunID) async throws -> [StageSpec] {
        try await indexedSpec(of: run).dependents[name] ?? []
    }

    /// The stage `name` of `run`'s spec (from the cache or Redis), or a `notFound` error.
    public func stage(_ name: StageName, of run: RunID) async throws -> StageSpec {
        guard let stage = try await indexedSpec(of: run).stages[name] else {
            throw GantryError(.notFound, "run \(run) has no stage '\(name)'")
        }
        return stage
    }

    /// Publishes `nodes`, grouped by queue, each queue's batch confirmed by the broker.
    ///
    /// Root nodes carry the run input as their payload (`rootInput`, or read from Redis); an
    /// element of a mapped stage carries its element of the upstream list, read and parsed once
    /// per batch rather than once per element; other nodes carry none: the worker reads their
    /// upstream results from Redis.
    public func publish(_ nodes: [ReadyNode], rootInput: [UInt8]? = nil) async throws {
        guard !nodes.isEmpty else { return }
        try await publish(prepared: try await prepare(nodes, rootInput: rootInput))
    }

    /// A ready node turned into the task message that runs it, not yet published.
    public struct PreparedTask: Sendable {
        /// The queue its stage runs on.
        public var queue: String
        /// The stage it runs.
        public var stage: StageSpec
        /// The message, epoch and payload included.
        public var envelope: TaskEnvelope
    }

    /// Builds the envelopes of `nodes` as ``publish(_:rootInput:)`` would send them, reading the
    /// inputs it needs from Redis (once per run or mapped list).
    public func prepare(_ nodes: [ReadyNode], rootInput: [UInt8]? = nil) async throws -> [PreparedTask] {
        var prepared: [PreparedTask] = []
        prepared.reserveCapacity(nodes.count)
        var inputs: [RunID: [UInt8]] = [:]
        var lists: [String: [JSONValue]] = [:]
        let now = currentMilliseconds()
        // The stage timeout is applied by the worker from when the attempt starts, not here:
        // a task may wait in a queue far longer than it may run.
        for ready in nodes {
            let stage = try await stage(ready.node.stage, of: ready.runID)
            var payload: [UInt8] = []
            if let map = stage.map, let index = ready.node.index {
                let key = "\(ready.runID)/\(map)"
                if lists[key] == nil {
                    let results = try await store.upstreamResults(ready.runID, stages: [map])
                    guard let list = try? JSONValue(parsing: results[map] ?? []).arrayValue else {
                        throw GantryError(.invalidArgument, "stage '\(stage.name)' maps over '\(map)', whose result is not a JSON list")
                    }
                    lists[key] = list
                }
                guard let list = lists[key], index < list.count else {
                    throw GantryError(.notFound, "element \(index) of '\(map)' does not exist in run \(ready.runID)")
                }
                payload = StageInput.encodeElement(list[index])
            } else if stage.after.isEmpty {
                if let rootInput {
                    payload = rootInput
                } else if let cached = inputs[ready.runID] {
                    payload = cached
                } else {
                    payload = try await store.input(ready.runID)
                    inputs[ready.runID] = payload
                }
            }
            let envelope = TaskEnvelope(
                runID: ready.runID, node: ready.node, task: stage.task, kind: stage.kind, priority: UInt8(stage.priority),
                attempt: ready.attempt, epoch: ready.epoch, enqueuedMilliseconds: now,
                traceParent: TraceContext(run: ready.runID, node: ready.node, attempt: ready.attempt).traceParent, payload: payload
            )
            prepared.append(PreparedTask(queue: stage.queue, stage: stage, envelope: envelope))
        }
        return prepared
    }

    /// Publishes prepared tasks, grouped by queue, each queue's batch confirmed by the broker.
    public func publish(prepared: [PreparedTask]) async throws {
        var byQueue: [String: [OutgoingMessage]] = [:]
        for task in prepared {
            let envelope = task.envelope
            let body = signing.map { envelope.encoded(signedWith: $0.secret, keyID: $0.id) } ?? envelope.encoded()
            byQueue[task.queue, default: []].append(OutgoingMessage(body: body, key: envelope.runID.rawValue, priority: envelope.priority))
        }
        for (queue, messages) in byQueue {
            try await transport.publish(messages, to: queue)
        }
    }
}
