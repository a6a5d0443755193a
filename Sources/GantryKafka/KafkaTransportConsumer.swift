import GantryCore
import Logging
import Synchronization

/// One ``KafkaTransport/consume(queues:credit:)``: a consumer-group member whose records are
/// handed out concurrently, at most `credit` unsettled at once, and whose commits advance to
/// the highest contiguous finished offset of each partition.
///
/// Three parts, all on the cooperative pool and none blocking it:
/// - the *pump* task reads the wire consumer's events as soon as they come, so rebalances are
///   served at once even while every worker is busy; records go to the state machine's ready
///   queue and count as held by the wire consumer, which pauses fetching when too many wait;
/// - the stream's `next()` takes the next ready record when credit is free, or waits;
/// - the *committer* task commits finished offsets at most every `commitInterval`.
///
/// The stream ending by ``DeliveryStream/stopIntake()`` drains the consumer: nothing more is
/// handed out, and once every delivery handed out is settled it stops. Abandoning the stream
/// (the iterating task cancelled, the stream dropped while not draining) or closing the
/// transport stops it at once. Stopping commits what is finished, leaves the group and ends
/// the consumer's threads; deliveries handed out and not settled go to the partitions' next
/// owners.
final class KafkaTransportConsumer: Sendable {
    let id: UInt64
    let topics: [String]
    private let wire: KafkaConsumer
    private let queueOfTopic: [String: String]
    private let registry: KafkaTransportRegistry
    private let commitInterval: Duration
    private let prefetch: Int
    private let logger: Logger
    private let state: Mutex<StateMachine>
    private let commitRequests: AsyncStream<Void>
    private let commitRequester: AsyncStream<Void>.Continuation
    private let tasks = Mutex<(pump: Task<Void, Never>?, committer: Task<Void, Never>?)>((nil, nil))

    private init(
        id: UInt64, queues: [String: String], credit: Int, wire: KafkaConsumer, registry: KafkaTransportRegistry,
        commitInterval: Duration, prefetch: Int, logger: Logger
    ) {
        self.id = id
        self.queueOfTopic = queues
        self.topics = queues.keys.sorted()
        self.wire = wire
        self.registry = registry
        self.commitInterval = commitInterval
        self.prefetch = prefetch
        self.logger = logger
        self.state = Mutex(StateMachine(consumerID: id, credit: credit))
        // One pending request is enough: the committer takes everything finished when it runs.
        (commitRequests, commitRequester) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Creates the group member, subscribes it to the topics of `queues` and starts its tasks.
    ///
    /// - Parameter queues: topic → queue name, for ``Delivery/queue``.
    static func start(
        queues: [String: String], credit: Int, configuration: KafkaTransportConfiguration,
        registry: KafkaTransportRegistry, logger: Logger
    ) async throws -> KafkaTransportConsumer {
        let wire = try KafkaConsumer(
            configuration: configuration.kafka(adding: configuration.consumerProperties),
            consumer: KafkaConsumerConfiguration(
                groupID: configuration.groupID,
                autoOffsetReset: configuration.autoOffsetReset,
                maxBatchSize: 500,
                bufferCapacity: configuration.prefetch,
                revocationGracePeriod: configuration.revocationGracePeriod
            ),
            logger: logger
        )
        do {
            try await wire.subscribe(topics: queues.keys.sorted())
        } catch {
            await wire.close()
            throw error
        }
        let consumer = KafkaTransportConsumer(
            id: registry.makeConsumerID(), queues: queues, credit: credit, wire: wire, registry: registry,
            commitInterval: configuration.commitInterval, prefetch: configuration.prefetch, logger: logger)
        consumer.startTasks()
        return consumer
    }

    private func startTasks() {
        // Created under the lock that `finishStopping` reads them with, so a pump that fails at
        // once cannot stop the consumer before its own handle is stored.
        tasks.withLock { tasks in
            tasks.pump = Task { await self.pump() }
            tasks.committer = Task { await self.commitLoop() }
        }
    }

    /// The application's stream. Cancelling the task that iterates it, or dropping it while
    /// not draining, stops the consumer.
    func makeStream() -> DeliveryStream {
        let handle = StreamHandle(consumer: self)
        // Pull-based: a record is handed out only when the application asks for one, so credit
        // and revocations apply up to the last moment.
        return DeliveryStream(AsyncThrowingStream(unfolding: { try await handle.next() })) { [self] in
            self.stopIntake()
        }
    }

    /// Whether it is leaving its group (and will soon have left it).
    var isStopping: Bool {
        state.withLock { $0.lifecycle == .stopping }
    }

    // MARK: Handing out

    /// The next delivery: at once when one is ready and credit is free, else when one is.
    func next() async throws -> Delivery? {
        if Task.isCancelled {
            requestStop()
            return nil
        }
        switch state.withLock({ $0.take() }) {
        case .delivery(let delivery):
            wire.holdRecords(-1)
            return delivery
        case .end(let failure):
            if let failure { throw failure }
            return nil
        case .empty:
            break
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Delivery?, any Error>) in
                switch state.withLock({ $0.wait(continuation) }) {
                case .delivery(let delivery):
                    wire.holdRecords(-1)
                    continuation.resume(returning: delivery)
                case .end(let failure):
                    if let failure { continuation.resume(throwing: failure) } else { continuation.resume(returning: nil) }
                case .empty:
                    break
                }
            }
        } onCancel: {
            // Stopping ends the waiting task (or, if it is not parked yet, makes it return nil
            // at once).
            requestStop()
        }
    }

    /// Ends the stream but keeps what was handed out settle-able; the consumer stops once all
    /// of it is settled.
    func stopIntake() {
        guard let (taker, dropped, drained) = state.withLock({ $0.drain() }) else { return }
        taker?.resume(returning: nil)
        // Counting a whole prefetch as held makes the wire consumer pause fetching: nothing
        // fetched from now on would be handed out.
        wire.holdRecords(prefetch - dropped)
        if drained { requestStop() }
    }

    /// The stream was dropped: stops the consumer unless it is draining, in which case the
    /// last settlement stops it.
    fileprivate func abandon() {
        if state.withLock({ $0.lifecycle == .running }) { requestStop() }
    }

    // MARK: Settling

    /// Settles a delivery this consumer handed out.
    ///
    /// - Throws: ``GantryError`` with code `invalidArgument` when it was settled already.
    ///   Settling after a revocation or after the consumer stopped does nothing: the record
    ///   goes (or went) to the partition's next owner.
    func settle(_ token: DeliveryToken) throws {
        let offset = Int64(bitPattern: token.sequence)
        switch state.withLock({ $0.finish(serial: Self.serial(token), offset: offset) }) {
        case .settled(let handOut, let requestCommit, let drained):
            if requestCommit { commitRequester.yield() }
            hand(handOut)
            if drained { requestStop() }
        case .released(let handOut, let drained):
            hand(handOut)
            if drained { requestStop() }
        case .stopped:
            break
        case .notHeld:
            throw GantryError(.invalidArgument, "the Kafka delivery of partition \(token.partition) offset \(offset) was already settled; settle each delivery once")
        }
    }

    /// Whether the delivery is unsettled and its partition still assigned here.
    func holds(_ token: DeliveryToken) -> Bool {
        state.withLock { $0.holds(serial: Self.serial(token), offset: Int64(bitPattern: token.sequence)) }
    }

    private static func serial(_ token: DeliveryToken) -> UInt32 {
        UInt32(truncatingIfNeeded: token.consumer)
    }

    private func hand(_ handOut: HandOut?) {
        guard let handOut else { return }
        wire.holdRecords(-1)
        handOut.continuation.resume(returning: handOut.delivery)
    }

    // MARK: The pump

    private func pump() async {
        do {
            for try await event in wire.events {
                switch event {
                case .records(let records):
                    receive(records)
                case .partitionsAssigned(let partitions):
                    state.withLock { $0.assign(partitions) }
                case .partitionsRevoked(let revocation):
                    await revoke(revocation)
                }
            }
            // The wire consumer only ends on its own after a fatal error it reported already.
            requestStop(failure: GantryError(.closed, "the Kafka consumer of \(topics.joined(separator: ", ")) closed"))
        } catch {
            let failure = error as? GantryError ?? GantryError(.connectionFailed, "the Kafka consumer of \(topics.joined(separator: ", ")) failed", underlying: error)
            logger.error("\(failure)")
            requestStop(failure: failure)
        }
    }

    private func receive(_ records: [KafkaRecord]) {
        var ready = records.map { record in
            Ready(delivery: delivery(from: record), partition: record.topicPartition, offset: record.offset)
        }
        registry.markRedelivered(&ready)
        let (accepted, handOut) = state.withLock { $0.receive(ready) }
        wire.holdRecords(accepted)
        hand(handOut)
    }

    private func revoke(_ revocation: KafkaPartitionRevocation) async {
        let handback = state.withLock { $0.revoke(revocation.partitions, lost: revocation.isLost) }
        wire.holdRecords(-handback.dropped)
        registry.rememberUnsettled(handback.unsettled)
        if !handback.commits.isEmpty {
            do {
                try await wire.commit(handback.commits)
            } catch {
                logger.warning("could not commit Kafka offsets of revoked partitions; their finished records will be delivered again: \(error)")
            }
        }
        revocation.finish()
    }

    private func delivery(from record: KafkaRecord) -> Delivery {
        var headers: [String: String] = [:]
        var redelivered = false
        for header in record.headers {
            if header.key == KafkaTransport.redeliveredHeader {
                redelivered = true
                continue
            }
            // Kafka allows a name twice; the last one wins, as in an AMQP table.
            headers[header.key] = header.value.map { String(decoding: $0, as: UTF8.self) } ?? ""
        }
        return Delivery(
            body: record.value, queue: queueOfTopic[record.topic] ?? record.topic,
            key: record.key.map { String(decoding: $0, as: UTF8.self) }, headers: headers, redelivered: redelivered,
            token: DeliveryToken(consumer: 0, sequence: 0))
    }

    // MARK: Commits

    private func commitLoop() async {
        for await _ in commitRequests {
            // Waiting first lets the acks of one interval share a commit.
            if commitInterval > .zero { try? await Task.sleep(for: commitInterval) }
            if Task.isCancelled { return }
            await commitFinished()
        }
    }

    private func commitFinished() async {
        let entries = state.withLock { $0.takeCommits() }
        guard !entries.isEmpty else { return }
        do {
            try await wire.commit(entries.map(\.offset))
        } catch {
            state.withLock { $0.commitFailed(entries) }
            logger.warning("could not commit Kafka offsets \(entries.map(\.offset)); retrying with the next ones: \(error)")
        }
    }

    // MARK: Stopping

    /// Ends the stream and starts leaving the group; returns at once. Calling it again does
    /// nothing.
    func requestStop(failure: GantryError? = nil) {
        guard let handback = state.withLock({ $0.stop(failure: failure) }) else { return }
        if let taker = handback.taker {
            if let failure = handback.failure { taker.resume(throwing: failure) } else { taker.resume(returning: nil) }
        }
        wire.holdRecords(-handback.dropped)
        registry.rememberUnsettled(handback.unsettled)
        let commits = handback.commits
        Task { await self.finishStopping(commits: commits) }
    }

    /// Stops the consumer and returns once it has left its group.
    func stop() async {
        requestStop()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            if !state.withLock({ $0.waitUntilStopped(continuation) }) { continuation.resume() }
        }
    }

    private func finishStopping(commits: [KafkaCommitOffset]) async {
        commitRequester.finish()
        let (pump, committer) = tasks.withLock { $0 }
        // The committer ends after its current commit, so the last commit below is the final one.
        committer?.cancel()
        await committer?.value
        if !commits.isEmpty {
            do {
                try await wire.commit(commits)
            } catch {
                logger.warning("could not commit Kafka offsets \(commits) while stopping; their finished records will be delivered again: \(error)")
            }
        }
        // Ends the wire's events, and with them the pump.
        await wire.close()
        await pump?.value
        registry.remove(self)
        let waiters = state.withLock { $0.markStopped() }
        for waiter in waiters { waiter.resume() }
    }
}

/// Held by the application's stream and nothing else: when the stream and its iterators are
/// gone, so is this, and the consumer stops instead of holding its partitions and threads
/// forever.
private final class StreamHandle: Sendable {
    let consumer: KafkaTransportConsumer

    init(consumer: KafkaTransportConsumer) {
        self.consumer = consumer
    }

    func next() async throws -> Delivery? {
        try await consumer.next()
    }

    deinit {
        consumer.abandon()
    }
}
