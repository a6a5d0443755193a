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

    private struct HeldKey: Hashable {
        var runID: RunID
        var node: NodeID
    }

    private struct HeldTask {
        var epoch: UInt64
        var task: Task<Void, Never>?
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
        public var inFlight = 0
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
                        await self.handle(delivery)
                        self.tally.withLock { $0.inFlight -= 1 }
                        WorkerMetrics.inFlight(delivery.queue, -1)
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

    private func handle(_ delivery: Delivery) async {
        let envelope: TaskEnvelope
        do {
            envelope = try TaskEnvelope(decoding: delivery.body, maxPayload: configuration.maxPayloadBytes, keys: configuration.signingKeys)
        } catch {
            logger.warning("dead-lettering an undecodable message from \(delivery.queue): \(error)")
            tally.withLock { $0.deadLettered += 1 }
            WorkerMetrics.received(WorkerMetrics.unknownTask, delivery.queue)
            WorkerMetrics.deadLettered(WorkerMetrics.unknownTask, delivery.queue)
            await settle(delivery) { try await self.transport.deadLetter(delivery, reason: "\(error)") }
            return
        }
        var log = logger
        log[metadataKey: "run"] = .string(envelope.runID.rawValue)
        log[metadataKey: "node"] = .string(envelope.node.description)
        log[metadataKey: "stage"] = .string(envelope.node.stage.rawValue)
        log[metadataKey: "attempt"] = .stringConvertible(envelope.attempt)
        log[metadataKey: "trace"] = .string(TraceContext.traceID(traceParent: envelope.traceParent, run: envelope.runID))
        WorkerMetrics.received(envelope.task, delivery.queue)

        let claim: ClaimOutcome
        do {
            claim = try await withStore { try await self.store.claim(envelope.runID, envelope.node, epoch: envelope.epoch, owner: self.configuration.workerID, lease: self.configuration.lease) }
        } catch {
            log.error("cannot claim, handing the task back: \(error)")
            await handBack(delivery)
            return
        }
        guard case .claimed(let epoch, let attempt) = claim else {
            log.debug("dropping message: \(claim)")
            tally.withLock { $0.dropped += 1 }
            WorkerMetrics.dropped(envelope.task, delivery.queue)
            await settle(delivery) { try await self.transport.ack(delivery) }
            return
        }

        WorkerMetrics.queueWait(envelope.task, delivery.queue, enqueuedMilliseconds: envelope.enqueuedMilliseconds)
        let key = HeldKey(runID: envelope.runID, node: envelope.node)
        // The attempt runs in its own task so that renewal can cancel it (lost lease, cancelled run).
        // It is held before it starts, so that it can let go before recording its outcome.
        held.withLock { $0[key] = HeldTask(epoch: epoch, task: nil) }
        let attemptTask = Task {
            await self.runAttempt(envelope, epoch: epoch, attempt: attempt, delivery: delivery, log: log)
        }
        held.withLock { $0[key]?.task = attemptTask }
        await attemptTask.value
        held.withLock { _ = $0.removeValue(forKey: key) }
    }

    private func runAttempt(_ envelope: TaskEnvelope, epoch: UInt64, attempt: UInt32, delivery: Delivery, log: Logger) async {
        let owner = configuration.workerID
        let run = envelope.runID
        let node = envelope.node
        let outcome: Result<[UInt8], any Error>
        let stage: StageSpec
        do {
            let spec = try await withStore { try await self.dispatcher.spec(of: run) }
            guard let found = spec.stage(node.stage) else {
                throw GantryError(.notFound, "run \(run) has no stage '\(node.stage)'")
            }
            stage = found
        } catch {
            log.error("cannot read the run's pipeline, handing the task back: \(error)")
            _ = try? await store.release(run, node, epoch: epoch, owner: owner)
            await handBack(delivery)
            return
        }
        let attemptStarted = ContinuousClock.now
        do {
            let definition = try registry.require(envelope.task)
            // A mapped element arrives with its element as the payload; the list it came from is
            // not read again. Other dependencies' results are read from Redis.
            let isElement = stage.map != nil && node.index != nil
            let needed = isElement ? stage.after.filter { $0 != stage.map } : stage.after
            let upstream = needed.isEmpty ? [:] : try await withStore { try await self.store.upstreamResults(run, stages: needed) }
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
        WorkerMetrics.duration(envelope.task, delivery.queue, since: attemptStarted)

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
                await settle(delivery) { try await self.transport.ack(delivery) }
            } else {
                _ = try? await store.release(run, node, epoch: epoch, owner: owner)
                await handBack(delivery)
            }
            return
        }

        do {
            switch outcome {
            case .success(let result):
                let committed = try await withStore { try await self.store.commit(run, node, epoch: epoch, owner: owner, result: result) }
                if case .committed(let ready, let runState) = committed {
                    WorkerMetrics.succeeded(envelope.task, delivery.queue)
                    try await publish(ready)
                    tally.withLock { $0.succeeded += 1 }
                    if let runState { log.info("run finished: \(runState.rawValue)") }
                } else {
                    log.warning("result refused: this worker no longer held the current epoch")
                    tally.withLock { $0.dropped += 1 }
                    WorkerMetrics.staleCommitRefused(envelope.task, delivery.queue)
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
                    WorkerMetrics.failed(envelope.task, delivery.queue, retried: true)
                case .deadLettered(let ready, let runState):
                    log.warning("task failed for good and was dead-lettered: \(message)")
                    tally.withLock { $0.failed += 1 }
                    WorkerMetrics.failed(envelope.task, delivery.queue, retried: false)
                    try await publish(ready)
                    if let runState { log.info("run finished: \(runState.rawValue)") }
                case .stale:
                    tally.withLock { $0.dropped += 1 }
                    WorkerMetrics.dropped(envelope.task, delivery.queue)
                }
            }
        } catch {
            // The outcome could not be made durable: do not acknowledge; the broker redelivers
            // and the lease's expiry lets the coordinator re-queue if we are gone.
            log.error("cannot record the outcome, handing the task back: \(error)")
            await handBack(delivery)
            return
        }
        await settle(delivery) { try await self.transport.ack(delivery) }
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
                    let task = held.withLock { tasks -> Task<Void, Never>? in
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

    /// Publishes what a commit released (reading specs and inputs from Redis as needed).
    private func publish(_ ready: [ReadyNode]) async throws {
        guard !ready.isEmpty else { return }
        do {
            try await store.client.retrying(until: ContinuousClock.now + configuration.storeRetryDeadline) { try await self.dispatcher.publish(ready) }
        } catch {
            WorkerMetrics.brokerError("publish")
            throw error
        }
    }

    private func handBack(_ delivery: Delivery) async {
        tally.withLock { $0.handedBack += 1 }
        WorkerMetrics.handedBack(delivery.queue)
        await settle(delivery) { try await self.transport.nack(delivery, requeue: true) }
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
