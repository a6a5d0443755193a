import GantryCore
import GantryStore
import Logging
import ServiceLifecycle
import Synchronization

/// Consumes tasks, runs them and commits their results so that no job is lost or committed twice.
///
/// `io` stages run as tasks in this process; `cpu` stages run in the ``ChildProcessPool`` when
/// one is given (in this process otherwise), while this process renews their leases.
///
/// For each delivery: decode the envelope (undecodable → dead-letter), claim the node's lease
/// with the envelope's epoch (anything but a successful claim → acknowledge and drop: the
/// message is a duplicate, stale, or its run is over), assemble the input from upstream
/// results, run the task with the stage's timeout while the lease is renewed, commit the result
/// (or record the failure) through the fenced scripts, publish what became ready, and only then
/// acknowledge the message. If Redis is unreachable the delivery is handed back to the broker,
/// never acknowledged.
///
/// Local continuation (``WorkerConfiguration/localContinuation``): of the stages a commit made
/// ready, those on a queue this worker consumes, with a task registered here, take the free slots
/// and run here at once instead of travelling through the broker — a chain runs hop after hop
/// without a publish, and a fan-out keeps what this worker can run. They are queued in Redis
/// first, like any ready node, so the fenced claim, the lease and the coordinator's queue
/// deadline protect them exactly as they protect a published one.
public final class Worker: Service, Sendable {
    private let configuration: WorkerConfiguration
    private let registry: TaskRegistry
    private let store: RedisStateStore
    private let transport: any TaskTransport
    private let dispatcher: TaskDispatcher
    private let pool: ChildProcessPool?
    private let limiter: TaskLimiter
    private let logger: Logger
    private let held = Mutex<[HeldKey: HeldTask]>([:])
    private let tally = Mutex(WorkerCounters())
    private let draining = Atomic<Bool>(false)
    private let consumedQueues: Set<String>

    private struct HeldKey: Hashable {
        var runID: RunID
        var node: NodeID
    }

    private struct HeldTask {
        var epoch: UInt64
        var task: Task<[Continuation], Never>?
        var cancelled = false
    }

    /// Running totals, for heartbeats, metrics and tests.
    public struct WorkerCounters: Sendable, Equatable {
        public var received = 0
        public var succeeded = 0
        public var failed = 0
        public var retried = 0
        public var deadLettered = 0
        public var dropped = 0
        public var handedBack = 0
        /// Stages run here straight after the commit that made them ready (no broker hop).
        public var continuedLocally = 0
        public var inFlight = 0
    }

    /// Where an attempt came from: a broker delivery, settled once the outcome is recorded; or a
    /// stage this worker's own commit made ready (local continuation), which no message carries.
    private enum Origin: Sendable {
        case delivery(Delivery)
        case local(TaskDispatcher.PreparedTask)

        var queue: String {
            switch self {
            case .delivery(let delivery): delivery.queue
            case .local(let task): task.queue
            }
        }
    }

    /// A stage to run here next, in a slot already reserved for it, with the upstream results
    /// this worker already holds (the result it just committed).
    private struct Continuation: Sendable {
        var task: TaskDispatcher.PreparedTask
        var known: [StageName: [UInt8]]
        /// Leased to this worker by the commit that made it ready: no claim needed.
        var leased: Bool
    }

    /// Creates a worker running tasks from `registry`.
    public init(
        configuration: WorkerConfiguration, registry: TaskRegistry, store: RedisStateStore, transport: any TaskTransport,
        dispatcher: TaskDispatcher? = nil, pool: ChildProcessPool? = nil, logger: Logger = Logger(label: "gantry.worker")
    ) throws {
        if let problem = configuration.problems.first { throw GantryError(.configuration, problem) }
        self.configuration = configuration
        self.registry = registry
        self.store = store
        self.transport = transport
        self.dispatcher = dispatcher ?? TaskDispatcher(store: store, transport: transport)
        self.pool = pool
        self.limiter = TaskLimiter(limits: configuration.taskLimits)
        self.consumedQueues = Set(configuration.queues)
        var logger = logger
        logger[metadataKey: "worker"] = .string(configuration.workerID)
        self.logger = logger
    }

    /// What the worker has done so far.
    public var counters: WorkerCounters { tally.withLock { $0 } }

    /// Runs until graceful shutdown (stop intake, drain within ``WorkerConfiguration/drainTimeout``,
    /// hand back what is left) or cancellation.
    public func run() async throws {
        try await transport.declare(queues: configuration.queues)
        let deliveries = try await transport.consume(queues: configuration.queues, credit: configuration.concurrency)
        logger.info("worker started", metadata: ["queues": .string(configuration.queues.joined(separator: ",")), "concurrency": .stringConvertible(configuration.concurrency)])
        try await withThrowingTaskGroup(of: Void.self) { background in
            background.addTask { try await self.renewLoop() }
            background.addTask { try await self.heartbeatLoop() }
            try await withGracefulShutdownHandler {
                try await self.intake(deliveries)
            } onGracefulShutdown: {
                self.draining.store(true, ordering: .relaxed)
                deliveries.stopIntake()
            }
            background.cancelAll()
        }
        try? await store.removeWorker(configuration.workerID)
        logger.info("worker stopped", metadata: ["counters": .string("\(counters)")])
    }

    /// Handles deliveries until the stream ends, then waits for in-flight tasks: up to the drain
    /// timeout, after which they are cancelled and handed back.
    private func intake(_ deliveries: DeliveryStream) async throws {
        await withDiscardingTaskGroup { group in
            do {
                for try await delivery in deliveries {
                    tally.withLock { $0.received += 1; $0.inFlight += 1 }
                    WorkerMetrics.inFlight(delivery.queue, 1)
                    group.addTask {
                        let next = await self.handle(delivery)
                        self.releaseSlot(delivery.queue)
                        await self.runLocally(next)
                    }
                }
            } catch {
                WorkerMetrics.brokerError("consume")
                logger.error("consuming stopped: \(error)")
            }
            // Intake is over. Let in-flight work finish, up to the drain timeout.
            let deadline = ContinuousClock.now + configuration.drainTimeout
            while tally.withLock({ $0.inFlight }) > 0, ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(20))
            }
            let remaining = held.withLock { $0.values.compactMap(\.task) }
            if !remaining.isEmpty {
                logger.warning("drain timeout: handing back \(remaining.count) tasks")
                for task in remaining { task.cancel() }
            }
        }
    }

    // MARK: One delivery

    /// Handles one delivery; returns the stages to continue with here.
    private func handle(_ delivery: Delivery) async -> [Continuation] {
        let envelope: TaskEnvelope
        do {
            envelope = try TaskEnvelope(decoding: delivery.body, maxPayload: configuration.maxPayloadBytes, keys: configuration.signingKeys)
        } catch {
            logger.warning("dead-lettering an undecodable message from \(delivery.queue): \(error)")
            tally.withLock { $0.deadLettered += 1 }
            WorkerMetrics.received(WorkerMetrics.unknownTask, delivery.queue)
            WorkerMetrics.deadLettered(WorkerMetrics.unknownTask, delivery.queue)
            await settle(delivery) { try await self.transport.deadLetter(delivery, reason: "\(error)") }
            return []
        }
        return await attempt(envelope, origin: .delivery(delivery), known: [:], leased: false)
    }

    /// Runs continuations, each in the slot reserved for it: a chain goes on in this task, the
    /// nodes of a fan-out run side by side.
    private func runLocally(_ first: [Continuation]) async {
        var pending = first
        while !pending.isEmpty {
            if pending.count == 1 {
                let item = pending[0]
                WorkerMetrics.inFlight(item.task.queue, 1)
                pending = await attempt(item.task.envelope, origin: .local(item.task), known: item.known, leased: item.leased)
                releaseSlot(item.task.queue)
            } else {
                let batch = pending
                pending = []
                await withDiscardingTaskGroup { group in
                    for item in batch { group.addTask { await self.runLocally([item]) } }
                }
            }
        }
    }

    /// Claims and runs one task, records its outcome and settles its origin; returns the stages
    /// to continue with here.
    private func attempt(_ envelope: TaskEnvelope, origin: Origin, known: [StageName: [UInt8]], leased: Bool) async -> [Continuation] {
        // Built only when something is logged: most attempts log nothing.
        let log = AttemptLog(base: logger, envelope: envelope)
        WorkerMetrics.received(envelope.task, origin.queue)

        let claim: ClaimOutcome
        do {
            claim = leased ? .claimed(epoch: envelope.epoch, attempt: envelope.attempt) : try await withStore { try await self.store.claim(envelope.runID, envelope.node, epoch: envelope.epoch, owner: self.configuration.workerID, lease: self.configuration.lease) }
        } catch {
            log.error("cannot claim, handing the task back: \(error)")
            await handBack(origin)
            return []
        }
        guard case .claimed(let epoch, let attempt) = claim else {
            log.debug("dropping message: \(claim)")
            tally.withLock { $0.dropped += 1 }
            WorkerMetrics.dropped(envelope.task, origin.queue)
            await acknowledge(origin)
            return []
        }

        WorkerMetrics.queueWait(envelope.task, origin.queue, enqueuedMilliseconds: envelope.enqueuedMilliseconds)
        let key = HeldKey(runID: envelope.runID, node: envelope.node)
        // The attempt runs in its own task so that renewal can cancel it (lost lease, cancelled run).
        // It is held before it starts, so that it can let go before recording its outcome.
        held.withLock { $0[key] = HeldTask(epoch: epoch, task: nil) }
        let attemptTask = Task {
            await self.runAttempt(envelope, epoch: epoch, attempt: attempt, origin: origin, known: known, log: log)
        }
        held.withLock { $0[key]?.task = attemptTask }
        let next = await attemptTask.value
        held.withLock { _ = $0.removeValue(forKey: key) }
        return next
    }

    private func runAttempt(
        _ envelope: TaskEnvelope, epoch: UInt64, attempt: UInt32, origin: Origin, known: [StageName: [UInt8]], log: AttemptLog
    ) async -> [Continuation] {
        let owner = configuration.workerID
        let run = envelope.runID
        let node = envelope.node
        let outcome: Result<[UInt8], any Error>
        let stage: StageSpec
        do {
            stage = try await withStore { try await self.dispatcher.stage(node.stage, of: run) }
        } catch {
            log.error("cannot read the run's pipeline, handing the task back: \(error)")
            _ = try? await store.release(run, node, epoch: epoch, owner: owner)
            await handBack(origin)
            return []
        }
        let attemptStarted = ContinuousClock.now
        do {
            let definition = try registry.require(envelope.task)
            // A mapped element arrives with its element as the payload; the list it came from is
            // not read again. Other dependencies' results are read from Redis, unless this worker
            // has just committed them (a local continuation).
            let isElement = stage.map != nil && node.index != nil
            let needed = isElement ? stage.after.filter { $0 != stage.map } : stage.after
            let upstream: [StageName: [UInt8]]
            if needed.isEmpty {
                upstream = [:]
            } else if needed.allSatisfy({ known[$0] != nil }) {
                upstream = known.filter { needed.contains($0.key) }
            } else {
                upstream = try await withStore { try await self.store.upstreamResults(run, stages: needed) }
            }
            let input = isElement ? envelope.payload : try StageInput.assemble(stage: stage, index: nil, runInput: envelope.payload, upstream: upstream)
            let context = TaskContext(runID: run, node: node, attempt: attempt, args: stage.args, upstream: upstream, deadlineMilliseconds: envelope.deadlineMilliseconds)
            // worker.task_limits: wait for a slot of this task type (lease renewed meanwhile).
            let result = try await limiter.withSlot(for: definition.name) {
                if stage.kind == .cpu, let pool {
                    // The pool enforces the timeout itself (SIGTERM → SIGKILL) while this process keeps
                    // renewing the lease; a lost lease cancels this task, which stops the child.
                    return try await pool.run(task: definition.name, input: input, context: context, timeout: stage.timeout)
                }
                return try await withTimeout(stage.timeout) { try await definition.function(input, context) }
            }
            // Refused by the store's commit, an oversized result would be handed back forever.
            guard result.count <= store.configuration.maxResultBytes else {
                throw GantryError(.payloadTooLarge, "task '\(definition.name)' returned \(result.count) bytes, over store.max_result_bytes (\(store.configuration.maxResultBytes)); raise it or return a reference to the data")
            }
            outcome = .success(result)
        } catch {
            outcome = .failure(error)
        }
        WorkerMetrics.duration(envelope.task, origin.queue, since: attemptStarted)

        // From here on the outcome is recorded, and renewal stops watching the attempt: a commit
        // after a lost lease is refused by its epoch anyway, and a renewal that finds the node
        // already succeeded must not cut short the publishing of what the commit made ready.
        let stopped = held.withLock { tasks in
            let key = HeldKey(runID: run, node: node)
            if tasks[key]?.cancelled == true { return true }
            tasks.removeValue(forKey: key)
            return false
        }
        if Task.isCancelled || stopped {
            // Renewal found the lease lost or the run cancelled, or shutdown's drain timed out.
            // Whatever this attempt produced must not be committed by us now.
            if held.withLock({ $0[HeldKey(runID: run, node: node)]?.cancelled }) == true {
                log.info("attempt stopped: lease lost or run cancelled")
                tally.withLock { $0.dropped += 1 }
                await acknowledge(origin)
            } else {
                // This task may be cancelled (drain timeout): release and hand back from a task
                // that is not, or both would give up before reaching Redis and the broker.
                await Task {
                    _ = try? await self.store.release(run, node, epoch: epoch, owner: owner)
                    await self.handBack(origin)
                }.value
            }
            return []
        }

        var continuations: [Continuation] = []
        do {
            switch outcome {
            case .success(let result):
                let take = await leaseToTake(after: stage, of: run)
                let committed: CommitOutcome
                do {
                    committed = try await withStore {
                        try await self.store.commit(run, node, epoch: epoch, owner: owner, result: result, take: take?.lease)
                    }
                } catch {
                    returnSlots(take?.reserved ?? 0)
                    throw error
                }
                var leasedCount = 0
                if case .committed(let ready, _) = committed { leasedCount = ready.count { $0.leased } }
                returnSlots((take?.reserved ?? 0) - leasedCount)
                if case .committed(let ready, let runState) = committed {
                    WorkerMetrics.succeeded(envelope.task, origin.queue)
                    // A plain stage's result is what its dependents read as its result; a mapped
                    // element's is not (they read the gathered list).
                    let known = node.index == nil && stage.map == nil ? [stage.name: result] : [:]
                    continuations = try await dispatchReady(ready, known: known)
                    tally.withLock { $0.succeeded += 1 }
                    if let runState { log.info("run finished: \(runState.rawValue)") }
                } else {
                    log.warning("result refused: this worker no longer held the current epoch")
                    tally.withLock { $0.dropped += 1 }
                    WorkerMetrics.staleCommitRefused(envelope.task, origin.queue)
                }
            case .failure(let error):
                let gantryError = error as? GantryError
                let retriable = gantryError?.isRetriable ?? false
                let message = gantryError.map { $0.message } ?? "\(error)"
                let backoff = stage.retry.backoff(afterAttempt: Int(attempt))
                let failed = try await withStore {
                    try await self.store.fail(run, node, epoch: epoch, owner: owner, error: message, retriable: retriable, backoff: backoff)
                }
                switch failed {
                case .retryAt:
                    log.info("attempt failed, will retry in \(backoff.shortDescription): \(message)")
                    tally.withLock { $0.retried += 1 }
                    WorkerMetrics.failed(envelope.task, origin.queue, retried: true)
                case .deadLettered(let ready, let runState):
                    log.warning("task failed for good and was dead-lettered: \(message)")
                    tally.withLock { $0.failed += 1 }
                    WorkerMetrics.failed(envelope.task, origin.queue, retried: false)
                    continuations = try await dispatchReady(ready, known: [:])
                    if let runState { log.info("run finished: \(runState.rawValue)") }
                case .stale:
                    tally.withLock { $0.dropped += 1 }
                    WorkerMetrics.dropped(envelope.task, origin.queue)
                }
            }
        } catch {
            // The outcome could not be made durable: do not acknowledge; the broker redelivers
            // and the lease's expiry lets the coordinator re-queue if we are gone.
            log.error("cannot record the outcome, handing the task back: \(error)")
            await handBack(origin)
            return []
        }
        await acknowledge(origin)
        return continuations
    }

    // MARK: Background loops

    /// Renews every held lease in one round trip per interval; a lease reported lost or
    /// cancelled stops its attempt.
    private func renewLoop() async throws {
        while !Task.isCancelled {
            try await Task.sleep(for: configuration.renewInterval)
            let leases = held.withLock { $0.map { LeaseRef(runID: $0.key.runID, node: $0.key.node, epoch: $0.value.epoch) } }
            guard !leases.isEmpty else { continue }
            do {
                let outcomes = try await store.renew(leases, owner: configuration.workerID, lease: configuration.lease)
                WorkerMetrics.leasesRenewed(outcomes.count { $0 == .renewed })
                for (lease, outcome) in zip(leases, outcomes) where outcome != .renewed {
                    WorkerMetrics.leaseExpired()
                    let task = held.withLock { tasks -> Task<[Continuation], Never>? in
                        tasks[HeldKey(runID: lease.runID, node: lease.node)]?.cancelled = true
                        return tasks[HeldKey(runID: lease.runID, node: lease.node)]?.task
                    }
                    logger.info("stopping \(lease.runID)/\(lease.node): lease \(outcome.rawValue)", metadata: [
                        "run": .string(lease.runID.rawValue), "node": .string(lease.node.description), "stage": .string(lease.node.stage.rawValue),
                        "trace": .string(TraceContext.traceID(of: lease.runID)),
                    ])
                    task?.cancel()
                }
            } catch {
                WorkerMetrics.redisError("renew")
                logger.warning("lease renewal failed (will retry): \(error)")
            }
        }
    }

    private func heartbeatLoop() async throws {
        // The tasks this worker can run, so tools can check pipelines against live workers.
        let taskNames = registry.names.sorted().joined(separator: ",")
        while !Task.isCancelled {
            let snapshot = counters
            try? await store.heartbeat(worker: configuration.workerID, fields: [
                "queues": configuration.queues.joined(separator: ","),
                "capacity": String(configuration.concurrency),
                "in_flight": String(snapshot.inFlight),
                "succeeded": String(snapshot.succeeded),
                "failed": String(snapshot.failed),
                "tasks": taskNames,
            ].merging(configuration.statusFields()) { own, _ in own }, ttl: configuration.heartbeatInterval * 3)
            try await Task.sleep(for: configuration.heartbeatInterval)
        }
    }

    // MARK: Helpers

    /// Retries a store operation while Redis is unreachable, up to the configured deadline.
    private func withStore<T>(_ operation: () async throws -> T) async throws -> T {
        do {
            return try await store.client.retrying(until: ContinuousClock.now + configuration.storeRetryDeadline, operation)
        } catch {
            WorkerMetrics.redisError("store")
            throw error
        }
    }

    /// Sends on what a commit released: the stages this worker can run take its free slots and
    /// are returned to run here; the rest are published (reading specs and inputs from Redis as
    /// needed).
    private func dispatchReady(_ ready: [ReadyNode], known: [StageName: [UInt8]]) async throws -> [Continuation] {
        guard !ready.isEmpty else { return [] }
        let retryUntil = ContinuousClock.now + configuration.storeRetryDeadline
        let prepared: [TaskDispatcher.PreparedTask]
        do {
            prepared = try await store.client.retrying(until: retryUntil) { try await self.dispatcher.prepare(ready) }
        } catch {
            // Leased nodes not run now go back to Redis's care: their leases expire and the
            // coordinator re-queues them.
            WorkerMetrics.brokerError("publish")
            returnSlots(ready.count { $0.leased })
            throw error
        }
        // Leased by the commit itself (their slots are taken): they run here.
        let leased = zip(ready, prepared).filter { $0.0.leased }.map(\.1)
        let unleased = zip(ready, prepared).filter { !$0.0.leased }.map(\.1)
        var local: [TaskDispatcher.PreparedTask] = []
        var remote: [TaskDispatcher.PreparedTask] = []
        if configuration.localContinuation {
            let runnable = unleased.filter { runsHere(queue: $0.queue, task: $0.envelope.task) }
            let slots = reserveSlots(runnable.count)
            local = Array(runnable.prefix(slots))
            remote = Array(runnable.dropFirst(slots)) + unleased.filter { !runsHere(queue: $0.queue, task: $0.envelope.task) }
        } else {
            remote = unleased
        }
        do {
            if !remote.isEmpty {
                try await store.client.retrying(until: retryUntil) { try await self.dispatcher.publish(prepared: remote) }
            }
        } catch {
            WorkerMetrics.brokerError("publish")
            returnSlots(local.count + leased.count)
            throw error
        }
        if !local.isEmpty || !leased.isEmpty { tally.withLock { $0.continuedLocally += local.count + leased.count } }
        return leased.map { Continuation(task: $0, known: known, leased: true) } + local.map { Continuation(task: $0, known: known, leased: false) }
    }

    /// Before a commit: reserves slots for the stages that depend on `stage` and can run here, so
    /// that the commit leases them to this worker in the same script (one for each such stage,
    /// or as many as are free when one of them fans out). Nil when none can.
    private func leaseToTake(after stage: StageSpec, of run: RunID) async -> (lease: RedisStateStore.ReadyLease, reserved: Int)? {
        guard configuration.localContinuation, let dependents = try? await dispatcher.dependents(of: stage.name, in: run) else { return nil }
        let runnable = dependents.filter { runsHere(queue: $0.queue, task: $0.task) }
        guard !runnable.isEmpty else { return nil }
        let wanted = runnable.contains { $0.map != nil } ? configuration.concurrency : runnable.count
        let reserved = reserveSlots(wanted)
        guard reserved > 0 else { return nil }
        return (RedisStateStore.ReadyLease(limit: reserved, stages: runnable.map(\.name), lease: configuration.lease), reserved)
    }

    /// Whether a stage on `queue` running `task` can be continued here: this worker consumes the
    /// queue and has the task.
    private func runsHere(queue: String, task: String) -> Bool {
        consumedQueues.contains(queue) && registry[task] != nil
    }

    /// Takes up to `count` free slots while in-flight tasks are below
    /// ``WorkerConfiguration/concurrency`` and the worker is not draining; returns how many.
    private func reserveSlots(_ count: Int) -> Int {
        guard count > 0, !draining.load(ordering: .relaxed) else { return 0 }
        return tally.withLock { counters in
            let taken = min(count, max(0, configuration.concurrency - counters.inFlight))
            counters.inFlight += taken
            return taken
        }
    }

    /// Gives back reserved slots that no task took.
    private func returnSlots(_ count: Int) {
        guard count > 0 else { return }
        tally.withLock { $0.inFlight -= count }
    }

    private func releaseSlot(_ queue: String) {
        tally.withLock { $0.inFlight -= 1 }
        WorkerMetrics.inFlight(queue, -1)
    }

    /// The outcome is recorded: acknowledge the message (a local continuation has none).
    private func acknowledge(_ origin: Origin) async {
        guard case .delivery(let delivery) = origin else { return }
        await settle(delivery) { try await self.transport.ack(delivery) }
    }

    /// Gives a task back unrun: a delivery goes back to the broker; a local continuation, which no
    /// message carries, is published. Should that fail too, the node is still queued in Redis and
    /// the coordinator publishes it when its queue deadline passes.
    private func handBack(_ origin: Origin) async {
        tally.withLock { $0.handedBack += 1 }
        WorkerMetrics.handedBack(origin.queue)
        switch origin {
        case .delivery(let delivery):
            await settle(delivery) { try await self.transport.nack(delivery, requeue: true) }
        case .local(let task):
            do {
                try await dispatcher.publish(prepared: [task])
            } catch {
                WorkerMetrics.brokerError("publish")
                logger.warning("could not publish \(task.envelope.runID)/\(task.envelope.node) after giving it back; the coordinator publishes it after the queue visibility period: \(error)")
            }
        }
    }

    private func settle(_ delivery: Delivery, _ action: () async throws -> Void) async {
        do {
            try await action()
        } catch {
            // The broker will redeliver an unsettled message; the fenced store makes that harmless.
            WorkerMetrics.brokerError("settle")
            logger.warning("could not settle a delivery from \(delivery.queue): \(error)")
        }
    }
}

/// A task attempt's logger, with the run, node, stage, attempt and trace id as metadata; made
/// when first used, so that an attempt that logs nothing pays nothing for it.
private struct AttemptLog {
    let base: Logger
    let envelope: TaskEnvelope

    private var logger: Logger {
        var log = base
        log[metadataKey: "run"] = .string(envelope.runID.rawValue)
        log[metadataKey: "node"] = .string(envelope.node.description)
        log[metadataKey: "stage"] = .string(envelope.node.stage.rawValue)
        log[metadataKey: "attempt"] = .stringConvertible(envelope.attempt)
        log[metadataKey: "trace"] = .string(TraceContext.traceID(traceParent: envelope.traceParent, run: envelope.runID))
        return log
    }

    func debug(_ message: @autoclosure () -> Logger.Message) {
        guard base.logLevel <= .debug else { return }
        logger.debug(message())
    }

    func info(_ message: @autoclosure () -> Logger.Message) {
        guard base.logLevel <= .info else { return }
        logger.info(message())
    }

    func warning(_ message: @autoclosure () -> Logger.Message) {
        logger.warning(message())
    }

    func error(_ message: @autoclosure () -> Logger.Message) {
        logger.error(message())
    }
}
