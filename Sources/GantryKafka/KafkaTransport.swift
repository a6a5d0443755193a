import GantryCore
import Logging

/// Gantry's ``TaskTransport`` on Kafka.
///
/// Each queue is a topic, `<prefix><queue>` (``KafkaTransportConfiguration/topicPrefix``,
/// default `gantry.`), and its dead letters go to `<topic>.dlq`. Messages are keyed by
/// ``OutgoingMessage/key`` (the run id), so one run's tasks share a partition; headers
/// travel as Kafka headers; ``OutgoingMessage/priority`` is ignored, since a Kafka partition
/// is a log with one order.
///
/// **Publishing** uses one idempotent producer: ``publish(_:to:)`` enqueues the whole batch
/// and returns after every delivery report, so a return means the brokers stored it all.
///
/// **Consuming** joins the consumer group ``KafkaTransportConfiguration/groupID``. The
/// records of a partition are handed out concurrently, up to `credit` unsettled across all
/// partitions, so a slow task never holds back the ones behind it. Offsets are committed by
/// hand: per partition, the offset of the first record not settled yet, in batches every
/// ``KafkaTransportConfiguration/commitInterval`` and when partitions are revoked or the
/// consumer stops. A crash therefore never skips an unsettled record; it may redeliver
/// settled records that came after an unsettled one.
///
/// Kafka can settle a record only by moving its partition's committed offset, so:
/// - ``nack(_:requeue:)`` with `requeue` publishes the record again to the end of its topic
///   (same key, so the same partition) with the header `x-gantry-redelivered: 1`, which makes
///   its next ``Delivery/redelivered`` true, and then settles the original. Its order relative
///   to later records of the partition is lost. Without `requeue` the record is settled and
///   dropped;
/// - ``deadLetter(_:reason:)`` publishes it to `<topic>.dlq` with the reason in the
///   `x-gantry-reason` header, and then settles it;
/// - a record handed out by a consumer that stopped, or whose partition was revoked, is
///   delivered again from the committed offset to the partition's next owner; settling it
///   afterwards does nothing (a nack does not republish it, a dead-letter does not publish
///   it: the next owner decides). ``Delivery/redelivered`` is true for such a record only
///   when it comes back to a consumer of the same transport (Kafka keeps no delivery count)
///   or when it was republished by a nack.
///
/// A consumer's stream ends by ``DeliveryStream/stopIntake()`` (a worker draining: what was
/// handed out may still be settled, and the consumer leaves its group once all of it is),
/// or at once when the task iterating it is cancelled, when the stream is dropped without
/// draining, or when the transport is closed; a stopping consumer commits what is settled
/// and leaves its group.
public final class KafkaTransport: TaskTransport {
    public let name = "kafka"
    /// The configuration the transport was created with.
    public let configuration: KafkaTransportConfiguration

    /// The header that marks a record republished by ``nack(_:requeue:)``; it is not shown in
    /// ``Delivery/headers``.
    public static let redeliveredHeader = "x-gantry-redelivered"

    private let producer: KafkaProducer
    private let admin: KafkaTransportAdmin
    private let registry = KafkaTransportRegistry()
    private let logger: Logger

    /// Creates the transport and its producer; consumers are created by
    /// ``consume(queues:credit:)``. Nothing connects before the first call.
    ///
    /// - Throws: ``GantryError`` with code `configuration` for an invalid setting or
    ///   librdkafka property.
    public init(configuration: KafkaTransportConfiguration = KafkaTransportConfiguration(), logger: Logger = Logger(label: "gantry.kafka.transport")) throws {
        try configuration.validate()
        // Checked now rather than at the first consume().
        try configuration.consumerKafkaConfiguration.validate()
        self.configuration = configuration
        self.logger = logger
        self.producer = try KafkaProducer(configuration: configuration.kafka(adding: configuration.producerProperties), logger: logger)
        self.admin = KafkaTransportAdmin(configuration: configuration.kafka, groupID: configuration.groupID, logger: logger)
    }

    deinit {
        for consumer in registry.close() { consumer.requestStop() }
    }

    /// The topic that carries `queue`.
    ///
    /// - Throws: ``GantryError`` with code `invalidArgument` when the name is not a valid
    ///   Kafka topic name (1 to 249 of `a-z A-Z 0-9 . _ -`, leaving room for `.dlq`).
    public func topic(for queue: String) throws -> String {
        let topic = configuration.topic(for: queue)
        guard KafkaWire.isValidTopicName(topic + ".dlq") else {
            throw GantryError(.invalidArgument, "queue '\(queue)' would be Kafka topic '\(topic)', which is not a valid topic name: use at most 245 characters of a-z A-Z 0-9 . _ -")
        }
        return topic
    }

    // MARK: TaskTransport

    /// Makes sure the topics of `queues` and their `.dlq` topics exist.
    ///
    /// The dev broker creates a topic when asked about it. A real broker must allow automatic
    /// topic creation (`auto.create.topics.enable=true`, with its `num.partitions`), or the
    /// topics must be created beforehand; otherwise this throws `notFound` naming the topic.
    public func declare(queues: [String]) async throws {
        try checkOpen()
        let topics = try queues.flatMap { [try topic(for: $0), try topic(for: deadLetterQueue(of: $0))] }
        try await admin.ensureTopics(topics, timeout: configuration.requestTimeout)
    }

    public func publish(_ messages: [OutgoingMessage], to queue: String) async throws {
        try checkOpen()
        let topic = try topic(for: queue)
        guard !messages.isEmpty else { return }
        let records = messages.map { message in
            KafkaOutgoingMessage(topic: topic, key: message.key.map { Array($0.utf8) }, value: message.body, headers: Self.kafkaHeaders(message.headers))
        }
        try await producer.deliverAll(records)
    }

    /// Joins the consumer group for the topics of `queues`.
    ///
    /// Returns once subscribed; the group assigns partitions a little later (the dev broker
    /// waits 3 s before a new group's first assignment). A consumer of this transport that is
    /// still leaving the group is waited for first, so that the new member does not make the
    /// group wait for the old one.
    public func consume(queues: [String], credit: Int) async throws -> DeliveryStream {
        guard credit >= 1 else { throw GantryError(.invalidArgument, "consumer credit must be at least 1, got \(credit)") }
        guard !queues.isEmpty else { throw GantryError(.invalidArgument, "consume needs at least one queue") }
        try checkOpen()
        var queueOfTopic: [String: String] = [:]
        for queue in queues { queueOfTopic[try topic(for: queue)] = queue }
        for consumer in registry.consumers where consumer.isStopping {
            await consumer.stop()
        }
        let consumer = try await KafkaTransportConsumer.start(
            queues: queueOfTopic, credit: credit, configuration: configuration, registry: registry, logger: logger)
        guard registry.add(consumer) else {
            await consumer.stop()
            throw GantryError(.closed, "the Kafka transport was closed while consuming \(queues) started")
        }
        return consumer.makeStream()
    }

    public func ack(_ delivery: Delivery) async throws {
        try registry.consumer(forToken: delivery.token.consumer)?.settle(delivery.token)
    }

    public func nack(_ delivery: Delivery, requeue: Bool) async throws {
        guard let consumer = registry.consumer(forToken: delivery.token.consumer) else { return }
        if requeue && consumer.holds(delivery.token) {
            var headers = Self.kafkaHeaders(delivery.headers)
            headers.append(KafkaHeader(key: Self.redeliveredHeader, value: "1"))
            try await producer.send(KafkaOutgoingMessage(
                topic: try topic(for: delivery.queue), key: delivery.key.map { Array($0.utf8) }, value: delivery.body, headers: headers))
        }
        try consumer.settle(delivery.token)
    }

    public func deadLetter(_ delivery: Delivery, reason: String) async throws {
        guard let consumer = registry.consumer(forToken: delivery.token.consumer) else { return }
        if consumer.holds(delivery.token) {
            var headers = delivery.headers
            headers[deadLetterReasonHeader] = reason
            try await producer.send(KafkaOutgoingMessage(
                topic: try topic(for: deadLetterQueue(of: delivery.queue)), key: delivery.key.map { Array($0.utf8) },
                value: delivery.body, headers: Self.kafkaHeaders(headers)))
        }
        try consumer.settle(delivery.token)
    }

    /// The consumer group's lag on the queue's topic: records not yet committed by the group,
    /// which counts records waiting and records handed out but not settled, or settled less
    /// than ``KafkaTransportConfiguration/commitInterval`` ago. A few round trips per
    /// partition; 0 for a topic that does not exist.
    public func depth(of queue: String) async throws -> Int? {
        try checkOpen()
        return try await admin.lag(topic: try topic(for: queue), fromEarliest: configuration.autoOffsetReset == .earliest, timeout: configuration.requestTimeout)
    }

    /// Stops every consumer (each commits what is settled and leaves its group; their
    /// streams end), then waits up to ``KafkaTransportConfiguration/closeTimeout`` for
    /// records being published and closes the producer. Calling it again does nothing.
    public func close() async {
        let consumers = registry.close()
        await withTaskGroup(of: Void.self) { group in
            for consumer in consumers {
                group.addTask { await consumer.stop() }
            }
        }
        do {
            try await producer.close(timeout: configuration.closeTimeout)
        } catch {
            logger.warning("closing the Kafka transport's producer: \(error)")
        }
        await admin.close()
    }

    // MARK: Helpers

    private func checkOpen() throws {
        guard !registry.isClosed else { throw GantryError(.closed, "the Kafka transport is closed; create a new one") }
    }

    /// Headers in name order, so the same message always makes the same record.
    private static func kafkaHeaders(_ headers: [String: String]) -> [KafkaHeader] {
        headers.sorted { $0.key < $1.key }.map { KafkaHeader(key: $0.key, value: $0.value) }
    }
}
