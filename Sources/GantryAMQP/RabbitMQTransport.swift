import GantryCore
import Logging
import Synchronization

/// A ``GantryCore/TaskTransport`` on RabbitMQ (AMQP 0-9-1 through librabbitmq).
///
/// **Queues.** Queue `q` is the durable classic queue `<prefix>q` (prefix default `gantry.`)
/// with `x-max-priority` 10 and a dead-letter route to the durable queue `<prefix>q.dlq`.
/// ``declare(queues:)`` creates both idempotently; ``consume(queues:credit:)`` and a publish to
/// a queue that does not exist yet declare them too, so start order does not matter.
///
/// **Publishing.** Messages are persistent and published with publisher confirms and the
/// mandatory flag: ``publish(_:to:)`` returns once the broker has stored every message of the
/// batch, and never loses one to a missing queue. ``GantryCore/OutgoingMessage/priority`` is the
/// AMQP priority; the key travels in the `x-gantry-key` header and comes back as
/// ``GantryCore/Delivery/key``; headers are AMQP string headers.
///
/// **Consuming.** Each ``consume(queues:credit:)`` stream has its own connection with
/// `basic.qos` prefetch = `credit` (per consumer for one queue, for the whole channel when
/// there are several), manual acknowledgements, and ``GantryCore/Delivery/redelivered`` from the
/// broker's flag. Ending the stream's iteration (or cancelling its task) closes the connection,
/// and the broker requeues what the stream had not settled;
/// ``GantryCore/DeliveryStream/stopIntake()`` instead cancels the consumers and keeps the
/// connection until the deliveries handed out are settled.
///
/// **Dead letters.** ``deadLetter(_:reason:)`` publishes a copy, with `x-gantry-reason`, to the
/// `.dlq` queue (confirmed), then acknowledges the original: at least once, so a crash between
/// the two can leave a second copy in the dead-letter queue, never none. RabbitMQ's own dead
/// letters — ``nack(_:requeue:)`` without requeue, expired or overflowing messages — take the
/// queue's dead-letter route atomically; they carry RabbitMQ's `x-death` header, from which a
/// delivery gets an `x-gantry-reason` too.
///
/// **Reconnecting.** A lost connection (broker restart, network, heartbeat) is re-opened with
/// backoff. A publish or declare that failed with it is done again on the new connection: the
/// batch was not confirmed, so it is re-sent whole (at least once: consumers see duplicates,
/// never gaps). Consumer streams reconnect, declare and consume again without ending; the
/// broker redelivers what the dead connection held. Each connection of a consumer is a new
/// generation, carried in ``GantryCore/DeliveryToken/consumer``: settling a delivery of an older
/// generation throws `.closed`, so it can never acknowledge a different message on the new
/// connection. After ``RabbitMQTransportConfiguration/reconnectTimeout`` without a connection,
/// calls throw the last connection error and streams end by throwing it.
///
/// ```swift
/// let transport = try await RabbitMQTransport.connect(try .fromEnvironment())
/// try await transport.declare(queues: ["tasks"])
/// try await transport.publish([OutgoingMessage(body: bytes, key: runID, priority: 5)], to: "tasks")
/// for try await delivery in try await transport.consume(queues: ["tasks"], credit: 8) {
///     try await transport.ack(delivery)
/// }
/// await transport.close()
/// ```
public final class RabbitMQTransport: TaskTransport {
    /// `rabbitmq`.
    public let name = "rabbitmq"
    /// The settings the transport runs with.
    public let configuration: RabbitMQTransportConfiguration

    private struct State {
        var consumers: [UInt32: RabbitMQTransportConsumer] = [:]
        var nextConsumer: UInt32 = 1
        var closed = false
    }

    private let state = Mutex(State())
    private let codec: RabbitMQTransportCodec
    private let logger: Logger
    /// Publishes, declares and queue depths; consumers have connections of their own.
    private let connection: RabbitMQTransportConnection

    /// Creates a transport; it connects on first use.
    ///
    /// - Throws: `GantryError(.configuration)` for settings that cannot work.
    public init(configuration: RabbitMQTransportConfiguration = RabbitMQTransportConfiguration(), logger: Logger = Logger(label: "gantry.rabbitmq")) throws {
        try configuration.validate()
        self.configuration = configuration
        self.codec = RabbitMQTransportCodec(configuration)
        var logger = logger
        logger[metadataKey: "amqp.endpoint"] = "\(configuration.amqp.endpoint)"
        self.logger = logger
        self.connection = RabbitMQTransportConnection(
            configuration: configuration,
            name: "\(configuration.amqp.connectionName)-publisher",
            logger: logger,
            prepare: { client in try await client.confirmSelect() }
        )
    }

    /// Creates a transport and opens its publishing connection, so that a wrong URL, password
    /// or vhost shows now rather than on the first publish.
    ///
    /// - Throws: `.connectionFailed` naming the broker and the reason; a retriable failure
    ///   (broker not up yet) only after trying for ``RabbitMQTransportConfiguration/reconnectTimeout``.
    public static func connect(_ configuration: RabbitMQTransportConfiguration = RabbitMQTransportConfiguration(), logger: Logger = Logger(label: "gantry.rabbitmq")) async throws -> RabbitMQTransport {
        let transport = try RabbitMQTransport(configuration: configuration, logger: logger)
        do {
            _ = try await transport.connection.acquire()
        } catch {
            await transport.close()
            throw error
        }
        return transport
    }

    // MARK: TaskTransport

    public func declare(queues: [String]) async throws {
        try checkOpen()
        try await withConnection("declaring queues \(queues.joined(separator: ", "))") { client in
            for queue in queues {
                try await codec.declare(queue, on: client)
            }
        }
    }

    public func publish(_ messages: [OutgoingMessage], to queue: String) async throws {
        try checkOpen()
        guard !messages.isEmpty else { return }
        let outbound = messages.map { codec.outbound($0, to: queue) }
        do {
            try await publish(outbound, what: "publishing \(messages.count) message(s) to queue '\(queue)'")
        } catch let error as GantryError where error.code == .notFound {
            // Mandatory messages came back unroutable: the queue does not exist (yet, or any
            // more). Declare it as declare(queues:) does and send the batch again.
            logger.info("publishing to a queue that does not exist; declaring it", metadata: ["gantry.queue": "\(queue)"])
            try await declare(queues: [queue])
            try await publish(outbound, what: "publishing \(messages.count) message(s) to queue '\(queue)'")
        }
    }

    public func consume(queues: [String], credit: Int) async throws -> DeliveryStream {
        guard !queues.isEmpty else {
            throw GantryError(.invalidArgument, "consume needs at least one queue")
        }
        guard let prefetch = UInt16(exactly: credit), prefetch >= 1 else {
            throw GantryError(.invalidArgument, "consumer credit must be 1...65535 (RabbitMQ's prefetch limit), got \(credit)")
        }
        let (stream, continuation) = AsyncThrowingStream<Delivery, any Error>.makeStream()
        let consumer = try state.withLock { state throws(GantryError) -> RabbitMQTransportConsumer in
            guard !state.closed else { throw closedError }
            let consumer = RabbitMQTransportConsumer(
                id: state.nextConsumer, queues: Array(queues), credit: prefetch,
                configuration: configuration, logger: logger, continuation: continuation
            )
            state.nextConsumer += 1
            state.consumers[consumer.id] = consumer
            return consumer
        }
        // A reader that goes away (its task cancelled, the stream dropped) abandons the consumer;
        // the stream finishing (stopIntake, close, giving up) needs nothing more.
        continuation.onTermination = { termination in
            if case .cancelled = termination { consumer.stop() }
        }
        let id = consumer.id
        try await consumer.start(onEnd: { [weak self] in
            _ = self?.state.withLock { $0.consumers.removeValue(forKey: id) }
        })
        return DeliveryStream(stream, stopIntake: { consumer.stopIntake() })
    }

    public func ack(_ delivery: Delivery) async throws {
        try await consumer(of: delivery, "basic.ack").settle(delivery.token, "basic.ack") { client, tag in
            try await client.ack(deliveryTag: tag)
        }
    }

    public func nack(_ delivery: Delivery, requeue: Bool) async throws {
        // Without requeue, the queue's dead-letter route takes it to the .dlq atomically.
        try await consumer(of: delivery, "basic.nack").settle(delivery.token, "basic.nack") { client, tag in
            try await client.nack(deliveryTag: tag, requeue: requeue)
        }
    }

    public func deadLetter(_ delivery: Delivery, reason: String) async throws {
        let consumer = try consumer(of: delivery, "dead-lettering")
        // A delivery whose connection is gone is redelivered anyway: do not add a copy for it.
        try consumer.checkLive(delivery.token, "dead-lettering")
        // The copy first and the ack second: a failure in between leaves the original to be
        // delivered again (and maybe dead-lettered twice), never lost.
        let copy = codec.deadLetterCopy(of: delivery, reason: reason)
        let dlq = deadLetterQueue(of: delivery.queue)
        do {
            try await publish([copy], what: "dead-lettering a message to queue '\(dlq)'")
        } catch let error as GantryError where error.code == .notFound {
            try await declare(queues: [dlq])
            try await publish([copy], what: "dead-lettering a message to queue '\(dlq)'")
        }
        try await consumer.settle(delivery.token, "basic.ack after dead-lettering") { client, tag in
            try await client.ack(deliveryTag: tag)
        }
    }

    /// Messages ready in `queue`; deliveries handed out and not yet settled do not count.
    /// 0 for a queue that does not exist.
    public func depth(of queue: String) async throws -> Int? {
        try checkOpen()
        return try await withConnection("reading the depth of queue '\(queue)'") { client in
            do {
                return Int(try await client.queueDepth(codec.brokerName(queue)))
            } catch let error as GantryError where error.code == .notFound {
                return 0
            }
        }
    }

    public func close() async {
        let consumers: [RabbitMQTransportConsumer] = state.withLock { state in
            state.closed = true
            return Array(state.consumers.values)
        }
        await withTaskGroup(of: Void.self) { group in
            for consumer in consumers {
                group.addTask { await consumer.stopAndWait() }
            }
        }
        await connection.close()
    }

    // MARK: Plumbing

    private var closedError: GantryError {
        GantryError(.closed, "the RabbitMQ transport for \(configuration.amqp.endpoint) is closed")
    }

    private func checkOpen() throws {
        if state.withLock({ $0.closed }) { throw closedError }
    }

    private func publish(_ messages: [AMQPOutboundMessage], what: String) async throws {
        try await withConnection(what) { client in
            try await client.publish(messages)
        }
    }

    /// Runs `body` on the publishing connection; when the connection is lost under it, retires
    /// that connection and runs `body` again on a new one, until the reconnect timeout.
    private func withConnection<T: Sendable>(_ operation: String, _ body: (AMQPClient) async throws -> T) async throws -> T {
        let backoff = RabbitMQTransportBackoff(configuration)
        while true {
            let lease = try await connection.acquire()
            do {
                return try await body(lease.client)
            } catch let error as GantryError where error.isConnectionLoss {
                await connection.retire(lease)
                try checkOpen()
                // The connect loop waits between attempts; this bounds the whole operation.
                guard !backoff.expired else { throw error }
                logger.warning("RabbitMQ connection lost; retrying on a new connection", metadata: ["operation": "\(operation)", "error": "\(error)"])
            }
        }
    }

    /// The consumer a delivery came through.
    private func consumer(of delivery: Delivery, _ operation: String) throws -> RabbitMQTransportConsumer {
        let id = RabbitMQTransportConsumer.split(delivery.token).id
        let (consumer, issued): (RabbitMQTransportConsumer?, Bool) = state.withLock { state in
            (state.consumers[id], id != 0 && id < state.nextConsumer)
        }
        if let consumer { return consumer }
        if issued {
            throw GantryError(.closed, "\(operation) of delivery \(delivery.token.sequence) refused: RabbitMQ consumer \(id), which it came through, has stopped and closed its connection; the broker requeued the message and delivers it again", isRetriable: false)
        }
        throw GantryError(.invalidArgument, "\(operation): delivery \(delivery.token.sequence) of queue '\(delivery.queue)' was not delivered by this RabbitMQ transport")
    }
}
