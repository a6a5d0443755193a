import CRdKafka
import GantryCore
import Logging
import Synchronization

/// An idempotent Kafka producer.
///
/// Every send waits for the broker's acknowledgement (the delivery report) and returns
/// where the record was stored. The producer is idempotent (`enable.idempotence=true`,
/// which implies `acks=all`): librdkafka's own retries never write a record twice or out
/// of order within a partition.
///
/// A dedicated thread polls librdkafka's event queue for delivery reports and resumes the
/// waiting senders, so no librdkafka call ever blocks a Swift task. Call ``close(timeout:)``
/// when done; dropping the last reference without closing stops the polling thread and
/// discards records not yet delivered.
///
/// ```swift
/// let producer = try KafkaProducer(configuration: KafkaConfiguration())
/// let report = try await producer.send(topic: "tasks", key: Array("run-1".utf8), value: payload)
/// try await producer.close()
/// ```
public final class KafkaProducer: Sendable {
    private let core: KafkaProducerCore

    /// Creates the producer and starts its polling thread. Nothing is sent to the brokers
    /// until the first record.
    ///
    /// - Throws: ``GantryError`` with code `configuration` when a property is unknown or
    ///   invalid, or sets a key Gantry controls (`enable.idempotence`).
    public init(configuration: KafkaConfiguration, logger: Logger = Logger(label: "gantry.kafka.producer")) throws {
        let conf = try configuration.makeRDKafkaConf(
            // A task waits for its publish: batch for at most 1 ms rather than librdkafka's 5.
            defaults: ["linger.ms": "1"],
            enforced: ["enable.idempotence": "true", "log.queue": "true"]
        )
        let client = try RDKafkaClient(
            type: RD_KAFKA_PRODUCER,
            conf: conf,
            events: Int32(RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR | RD_KAFKA_EVENT_LOG),
            consumer: false
        )
        let core = KafkaProducerCore(client: client, logger: logger)
        KafkaThread.start(name: "gantry-kprod") { core.pollLoop() }
        self.core = core
    }

    deinit {
        // The polling thread owns the handle from here; it destroys it once it has stopped.
        core.requestStop()
    }

    /// Sends one record and returns once the broker has acknowledged it.
    ///
    /// - Parameters:
    ///   - topic: the topic to write to.
    ///   - key: the record key; records with the same key keep their order in one partition.
    ///   - value: the record value.
    ///   - headers: record headers.
    /// - Returns: the partition and offset the broker stored the record at.
    /// - Throws: ``GantryError``: `payloadTooLarge` over `message.max.bytes`, `timeout`
    ///   when the broker did not acknowledge within `message.timeout.ms`, `closed` after
    ///   ``close(timeout:)``, `cancelled` when the calling task was cancelled while waiting
    ///   (the record may still be delivered).
    @discardableResult
    public func send(
        topic: String, key: [UInt8]? = nil, value: [UInt8], headers: [KafkaHeader] = []
    ) async throws -> KafkaDeliveryReport {
        try await send(KafkaOutgoingMessage(topic: topic, key: key, value: value, headers: headers))
    }

    /// Sends one record and returns once the broker has acknowledged it.
    ///
    /// See ``send(topic:key:value:headers:)``.
    @discardableResult
    public func send(_ message: KafkaOutgoingMessage) async throws -> KafkaDeliveryReport {
        try await core.send([message])[0]
    }

    /// Enqueues all `messages` at once, then waits for every delivery report.
    ///
    /// Enqueueing everything before waiting lets librdkafka batch the records into few
    /// requests, which is much faster than awaiting each ``send(_:)`` in turn.
    ///
    /// - Returns: the delivery reports, in the order of `messages`.
    /// - Throws: the first failure, after every report has arrived. When it throws, some of
    ///   the records may have been stored; sending the whole batch again is safe for
    ///   at-least-once consumers.
    public func sendAll(_ messages: [KafkaOutgoingMessage]) async throws -> [KafkaDeliveryReport] {
        try await core.send(messages)
    }

    /// Like ``sendAll(_:)``, but returns nothing: for callers that only need to know every
    /// record was delivered, which spares keeping a report per record.
    func deliverAll(_ messages: [KafkaOutgoingMessage]) async throws {
        _ = try await core.send(messages, reports: false)
    }

    /// Waits until every record sent so far has its delivery report.
    ///
    /// - Throws: ``GantryError`` with code `timeout` if records are still outstanding after
    ///   `timeout`; they stay queued and may still be delivered.
    public func flush(timeout: Duration) async throws {
        try await core.flush(timeout: timeout)
    }

    /// Stops accepting records, waits up to `timeout` for outstanding deliveries, then
    /// releases the librdkafka handle. Calling it again does nothing.
    ///
    /// - Throws: ``GantryError`` with code `timeout` when records were still undelivered at
    ///   the deadline; those records are discarded and their senders get a `closed` error.
    public func close(timeout: Duration = .seconds(30)) async throws {
        core.beginClosing()
        var flushError: (any Error)?
        do {
            try await core.flush(timeout: timeout)
        } catch {
            flushError = error
        }
        await core.stop()
        if let flushError { throw flushError }
    }
}
