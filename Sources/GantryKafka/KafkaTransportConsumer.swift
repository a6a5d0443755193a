import CRdKafka
import GantryCore
import Logging
import Synchronization

/// One ``KafkaTransport/consume(queues:credit:)``: a consumer-group member whose records are
/// handed out concurrently, at most `credit` unsettled at once, and whose commits advance to
/// the highest contiguous finished offset of each partition.
///
/// Three parts, none blocking the cooperative pool:
/// - the wire consumer's polling thread hands every event to ``handle(_:)`` as it comes
///   (the consumer is created with a sink), so rebalances are served at once even while every
///   worker is busy; it makes the deliveries of fetched records itself, straight from
///   librdkafka's messages, and queues them in the state machine's ready queue a batch at a
///   time; fetching pauses while that holds more than the prefetch limit;
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
    private let inbox: EventInbox
    private let registry: KafkaTransportRegistry
    private let commitInterval: Duration
    private let logger: Logger
    private let state: Mutex<StateMachine>
    private let commitRequests: AsyncStream<Void>
    private let commitRequester: AsyncStream<Void>.Continuation
    private let committer = Mutex<Task<Void, Never>?>(nil)

    private init(
        id: UInt64, queues: [String: String], credit: Int, wire: KafkaConsumer, inbox: EventInbox,
        registry: KafkaTransportRegistry, commitInterval: Duration, prefetchBytes: Int, logger: Logger
    ) {
        self.id = id
        self.topics = queues.keys.sorted()
        self.wire = wire
        self.inbox = inbox
        self.registry = registry
        self.commitInterval = commitInterval
        self.logger = logger
        self.state = Mutex(StateMachine(consumerID: id, credit: credit, prefetchBytes: prefetchBytes))
        // One pending request is enough: the committer takes everything finished when it runs.
        (commitRequests, commitRequester) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Creates the group member, subscribes it to the topics of `queues` and starts its
    /// committer.
    ///
    /// - Parameter queues: topic → queue name, for ``Delivery/queue``.
    static func start(
        queues: [String: String], credit: Int, configuration: KafkaTransportConfiguration,
        registry: KafkaTransportRegistry, logger: Logger
    ) async throws -> KafkaTransportConsumer {
        // The wire consumer exists before this consumer does; events reach it through the
        // inbox, which it is attached to before the subscription can produce any.
        let inbox = EventInbox(queues: queues)
        let wire = try KafkaConsumer(
            configuration: configuration.consumerKafkaConfiguration,
            consumer: KafkaConsumerConfiguration(
                groupID: configuration.groupID,
                autoOffsetReset: configuration.autoOffsetReset,
                maxBatchSize: 500,
                revocationGracePeriod: configuration.revocationGracePeriod
            ),
            logger: logger,
            sink: inbox
        )
        let consumer = KafkaTransportConsumer(
            id: registry.makeConsumerID(), queues: queues, credit: credit, wire: wire, inbox: inbox, registry: registry,
            commitInterval: configuration.commitInterval, prefetchBytes: configuration.prefetchBytes, logger: logger)
        inbox.attach(consumer)
        consumer.committer.withLock { $0 = Task { await consumer.commitLoop() } }
        do {
            try await wire.subscribe(topics: consumer.topics)
        } catch {
            await consumer.stop()
            throw error
        }
        return consumer
    }

    /// The application's stream. Cancelling the task that iterates it, or dropping it while
    /// not draining, stops the consumer.
    func makeStream() -> DeliveryStream {
        let handle = StreamHandle(consumer: self)
        // Pull-based: a record is handed out only when the application asks for one, so credit
        // and revocations apply up to the last moment.
        return DeliveryStream(source: handle) { [self] in
            self.stopIntake()
        }
    }

    /// Whether it is leaving its group (and will soon have left it).
    var isStopping: Bool {
        state.withLock { $0.lifecycle == .stopping }
    }

    // MARK: Handing out

    /// What ``nextNow()`` found.
    enum Immediate {
        case delivery(Delivery)
        /// The stream ends.
        case end
        /// Nothing to hand out now: ``waitForNext()``.
        case wait
    }

    /// The next delivery if one is ready and credit is free, without suspending: the stream's
    /// fast path, which spares the async calls of ``waitForNext()`` for every record.
    func nextNow() throws -> Immediate {
        if Task.isCancelled {
            requestStop()
            return .end
        }
        switch state.withLock({ $0.take() }) {
        case .delivery(let delivery, let resumeFetching):
            if resumeFetching { wire.pauseFetching(false) }
            return .delivery(delivery)
        case .end(let failure):
            if let failure { throw failure }
            return .end
        case .empty:
            return .wait
        }
    }

    /// Waits until a delivery is ready and credit is free, or the stream ends.
    func waitForNext() async throws -> Delivery? {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Delivery?, any Error>) in
                switch state.withLock({ $0.wait(continuation) }) {
                case .delivery(let delivery, let resumeFetching):
                    if resumeFetching { wire.pauseFetching(false) }
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
        guard let (taker, drained) = state.withLock({ $0.drain() }) else { return }
        taker?.resume(returning: nil)
        // Nothing fetched from now on would be handed out.
        wire.pauseFetching(true)
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
        if handOut.resumeFetching { wire.pauseFetching(false) }
        handOut.continuation.resume(returning: handOut.delivery)
    }

    // MARK: Events, on the wire consumer's polling thread

    /// Serves one event of the wire consumer. Runs on its polling thread, so it only does
    /// bookkeeping and starts tasks: it never waits.
    fileprivate func handle(_ event: KafkaConsumer.SinkEvent) {
        switch event {
        case .event(.records):
            // A sink gets records through KafkaConsumerSink.fetched, never as an event.
            break
        case .event(.partitionsAssigned(let partitions)):
            state.withLock { $0.assign(partitions) }
        case .event(.partitionsRevoked(let revocation)):
            revoke(revocation)
        case .finished(let failure):
            // After a stop this does nothing; otherwise the wire consumer failed for good.
            if let failure { logger.error("\(failure)") }
            requestStop(failure: failure ?? GantryError(.closed, "the Kafka consumer of \(topics.joined(separator: ", ")) closed"))
        }
    }

    /// Queues a fetched batch: under the lock, the state machine only queues its runs.
    fileprivate func receive(_ runs: inout [FetchedRun]) {
        guard !runs.isEmpty else { return }
        registry.markRedelivered(&runs)
        let (handOut, pauseFetching) = state.withLock { $0.receive(&runs) }
        if pauseFetching { wire.pauseFetching(true) }
        hand(handOut)
    }

    private func revoke(_ revocation: KafkaPartitionRevocation) {
        let handback = state.withLock { $0.revoke(revocation.partitions, lost: revocation.isLost) }
        if handback.resumeFetching { wire.pauseFetching(false) }
        registry.rememberUnsettled(handback.unsettled)
        guard !handback.commits.isEmpty else {
            revocation.finish()
            return
        }
        // The commit completes on the polling thread this runs on: it must not be awaited here.
        Task { [wire, logger] in
            do {
                try await wire.commit(handback.commits)
            } catch {
                logger.warning("could not commit Kafka offsets of revoked partitions; their finished records will be delivered again: \(error)")
            }
            revocation.finish()
        }
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
        let committer = committer.withLock { $0 }
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
        // Returns once the polling thread has left the group, destroyed the handle and told
        // the inbox it finished.
        await wire.close()
        inbox.detach()
        registry.remove(self)
        let waiters = state.withLock { $0.markStopped() }
        for waiter in waiters { waiter.resume() }
    }
}

/// The wire consumer's sink: builds the deliveries of fetched records and routes them and the
/// other events to the transport consumer, which is created after the wire consumer; detached
/// when the consumer stopped, which breaks the reference cycle through the wire consumer's
/// sink.
private final class EventInbox: KafkaConsumerSink {
    private let target = Mutex<KafkaTransportConsumer?>(nil)
    /// The batch being fetched. Only the polling thread touches it, so its lock is never
    /// contended.
    private let batch: Mutex<KafkaTransportConsumer.FetchedBatch>

    init(queues: [String: String]) {
        batch = Mutex(KafkaTransportConsumer.FetchedBatch(queueOfTopic: queues))
    }

    func attach(_ consumer: KafkaTransportConsumer) {
        target.withLock { $0 = consumer }
    }

    func detach() {
        target.withLock { $0 = nil }
    }

    func fetched(_ message: UnsafePointer<rd_kafka_message_t>, topic: String) {
        batch.withLock { $0.add(message, topic: topic) }
    }

    func endOfBatch() {
        var runs = batch.withLock { $0.take() }
        target.withLock { $0 }?.receive(&runs)
    }

    func receive(_ event: KafkaConsumer.SinkEvent) {
        target.withLock { $0 }?.handle(event)
    }
}

/// Held by the application's stream and nothing else: when the stream and its iterators are
/// gone, so is this, and the consumer stops instead of holding its partitions and threads
/// forever.
private final class StreamHandle: DeliverySource {
    let consumer: KafkaTransportConsumer

    init(consumer: KafkaTransportConsumer) {
        self.consumer = consumer
    }

    func next() async throws -> Delivery? {
        switch try consumer.nextNow() {
        case .delivery(let delivery): return delivery
        case .end: return nil
        case .wait: return try await consumer.waitForNext()
        }
    }

    deinit {
        consumer.abandon()
    }
}
