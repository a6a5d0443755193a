import CRdKafka
import GantryCore
import Logging
import Synchronization

/// A consumer-group member that delivers batches of records and commits explicit offsets.
///
/// Offsets are never committed automatically (`enable.auto.commit=false`): the application
/// calls ``commit(_:)`` once a record's result is durable, which is what makes delivery
/// at-least-once. A dedicated thread polls librdkafka and feeds ``events``; it pauses
/// fetching when ``KafkaConsumerConfiguration/bufferCapacity`` records wait unread, so
/// memory stays bounded without leaving the group.
///
/// ```swift
/// let consumer = try KafkaConsumer(configuration: .init(), consumer: .init(groupID: "workers"))
/// try await consumer.subscribe(topics: ["tasks"])
/// for try await event in consumer.events {
///     switch event {
///     case .records(let records):
///         for record in records { try await process(record) }
///         try await consumer.commit(records.map(KafkaCommitOffset.init(after:)))
///     case .partitionsAssigned: break
///     case .partitionsRevoked(let revocation): revocation.finish()
///     }
/// }
/// ```
public final class KafkaConsumer: Sendable {
    let core: KafkaConsumerCore

    /// Creates the consumer and starts its polling thread. It joins its group on
    /// ``subscribe(topics:)``.
    ///
    /// - Throws: ``GantryError`` with code `configuration` when a property is unknown or
    ///   invalid, when it sets a key Gantry controls (`enable.auto.commit`,
    ///   `group.id`), or when a size in `consumer` is not positive.
    public convenience init(
        configuration: KafkaConfiguration,
        consumer: KafkaConsumerConfiguration,
        logger: Logger = Logger(label: "gantry.kafka.consumer")
    ) throws {
        try self.init(configuration: configuration, consumer: consumer, logger: logger, sink: nil)
    }

    /// Creates the consumer; with a `sink`, everything it receives goes to it, on the polling
    /// thread and in order, instead of to ``events`` (which then only ends at close), and the
    /// buffer and its capacity are not used: the sink's owner bounds what it keeps with
    /// ``pauseFetching(_:)``.
    ///
    /// The sink must return quickly and must not wait for the consumer (a commit completes on
    /// the polling thread). It is called last with ``SinkEvent/finished(_:)``.
    init(
        configuration: KafkaConfiguration,
        consumer: KafkaConsumerConfiguration,
        logger: Logger,
        sink: (any KafkaConsumerSink)?
    ) throws {
        guard !consumer.groupID.isEmpty else {
            throw GantryError(.configuration, "the Kafka consumer group id is empty; set KafkaConsumerConfiguration.groupID")
        }
        guard consumer.maxBatchSize > 0, consumer.bufferCapacity > 0 else {
            throw GantryError(.configuration, "Kafka consumer maxBatchSize (\(consumer.maxBatchSize)) and bufferCapacity (\(consumer.bufferCapacity)) must be positive")
        }
        let conf = try configuration.makeRDKafkaConf(
            defaults: [
                "auto.offset.reset": consumer.autoOffsetReset.rawValue,
                // An idle partition's fetch is answered after this long; librdkafka's 500 ms
                // would be the latency of every hop of a pipeline.
                "fetch.wait.max.ms": "10",
            ],
            enforced: [
                "group.id": consumer.groupID,
                "enable.auto.commit": "false",
                "log.queue": "true",
            ]
        )
        let client = try RDKafkaClient(
            type: RD_KAFKA_CONSUMER,
            conf: conf,
            events: Int32(RD_KAFKA_EVENT_FETCH | RD_KAFKA_EVENT_REBALANCE | RD_KAFKA_EVENT_OFFSET_COMMIT
                | RD_KAFKA_EVENT_ERROR | RD_KAFKA_EVENT_LOG),
            consumer: true
        )
        let core = KafkaConsumerCore(client: client, configuration: consumer, logger: logger, sink: sink)
        KafkaThread.start(name: "gantry-kcons") { core.pollLoop() }
        self.core = core
    }

    deinit {
        // The polling thread leaves the group and destroys the handle on its own.
        core.requestClose()
    }

    /// Subscribes to `topics`, replacing any earlier subscription. The group assigns
    /// partitions asynchronously; ``KafkaConsumerEvent/partitionsAssigned(_:)`` reports
    /// them. A topic that does not exist yet is picked up once it is created.
    public func subscribe(topics: [String]) async throws {
        guard !topics.isEmpty else {
            throw GantryError(.invalidArgument, "subscribe needs at least one Kafka topic")
        }
        try await core.run { continuation in .subscribe(topics, continuation) }
    }

    /// Everything the consumer receives, in order: record batches and rebalance events.
    ///
    /// Iterate it from one task only. The sequence ends after ``close()`` and throws if the
    /// consumer hit a fatal error. It keeps the consumer alive while iterated.
    public var events: KafkaConsumerEvents {
        KafkaConsumerEvents(consumer: self)
    }

    /// Commits offsets for the group and returns once the broker stored them.
    ///
    /// Each offset is the **next offset to read**: to mark the record at offset `o` done,
    /// commit `o + 1` (``KafkaCommitOffset/init(after:)`` does this). Commit only offsets
    /// below which every record is finished: a partition restarts at its committed offset.
    ///
    /// - Throws: ``GantryError`` with code `commandFailed` naming the partitions the broker
    ///   refused (for example because a rebalance took them away), or `closed`.
    public func commit(_ offsets: [KafkaCommitOffset]) async throws {
        guard !offsets.isEmpty else { return }
        try await core.run { continuation in .commit(offsets, continuation) }
    }

    /// Commits offsets given as tuples; `offset` is the next offset to read (last processed
    /// + 1). See ``commit(_:)``.
    public func commit(offsets: [(topic: String, partition: Int32, offset: Int64)]) async throws {
        try await commit(offsets.map { KafkaCommitOffset(topic: $0.topic, partition: $0.partition, offset: $0.offset) })
    }

    /// The partitions currently assigned to this consumer.
    public var assignment: Set<KafkaTopicPartition> {
        core.state.withLock { $0.assignment }
    }

    /// Pauses (or resumes) fetching on the application's behalf, in addition to the pause the
    /// consumer applies itself while its buffer is full; the consumer stays in its group and
    /// keeps delivering rebalance events.
    ///
    /// For an application that reads ``events`` promptly (so that it sees rebalances at once)
    /// into a queue of its own and bounds that queue. librdkafka drops the records it fetched
    /// ahead when partitions pause and fetches them again on resume, so pause with hysteresis,
    /// not per record.
    func pauseFetching(_ paused: Bool) {
        core.setApplicationPaused(paused)
    }

    /// Whether fetching is paused, by a full buffer or the application (for tests and
    /// diagnostics).
    var isFetchPaused: Bool {
        core.state.withLock { $0.paused }
    }

    /// Leaves the group (revoking partitions without waiting for the application), ends
    /// ``events`` and releases the handle. Records delivered but not committed will be
    /// delivered again to the group. Calling it again does nothing.
    public func close() async {
        await core.close()
    }
}

extension KafkaConsumer {
    /// What a consumer created with a sink hands it, on its polling thread, besides records.
    enum SinkEvent: Sendable {
        /// The next event, as ``KafkaConsumer/events`` would have delivered it (never
        /// ``KafkaConsumerEvent/records(_:)``: a sink takes records one by one through
        /// ``KafkaConsumerSink/fetched(_:topic:)``).
        case event(KafkaConsumerEvent)
        /// The consumer closed (asked to, or after a fatal error, given here); nothing follows.
        case finished(GantryError?)
    }
}

/// Where a consumer created with a sink hands what it receives, on its polling thread and in
/// order: records straight from librdkafka, so that the sink builds its own representation of
/// them without an intermediate ``KafkaRecord`` per record.
protocol KafkaConsumerSink: Sendable {
    /// One fetched record. `message` has no error and is valid only during the call; `topic`
    /// is its topic's name. Records of a partition come in offset order.
    func fetched(_ message: UnsafePointer<rd_kafka_message_t>, topic: String)
    /// The records fetched since the last call form a batch: the end of what one poll brought,
    /// or a rebalance follows.
    func endOfBatch()
    /// Any other event; ``KafkaConsumer/SinkEvent/finished(_:)`` comes last.
    func receive(_ event: KafkaConsumer.SinkEvent)
}
