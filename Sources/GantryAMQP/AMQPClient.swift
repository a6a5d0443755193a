import GantryCore
import Logging

/// An async client for one RabbitMQ connection.
///
/// Every method queues its work for the connection's dedicated thread — the only thread
/// that touches librabbitmq — and suspends until that thread answers, so no blocking C call
/// ever runs on Swift's cooperative pool. Cancelling a waiting task makes its call throw
/// `GantryError(.cancelled)`; work the thread had not started yet is then skipped.
///
/// A client never reconnects. Once its connection or channel fails (broker restart, network
/// loss, a channel error), every call throws the failure — a `GantryError(.connectionFailed)`
/// with `isRetriable == true` — and consumers end by throwing it. Replace the client with a
/// new one from ``connect(_:logger:)``; backoff between attempts is the caller's policy.
///
/// The client owns the connection: keep it alive while its consumers are in use, because
/// releasing the last reference closes the connection (as ``close()`` does, without waiting).
///
/// ```swift
/// let client = try await AMQPClient.connect(try .fromEnvironment())
/// try await client.declareQueue("tasks", arguments: [AMQPQueueArgument.maxPriority: 9])
/// try await client.confirmSelect()
/// try await client.publish(routingKey: "tasks", body: bytes, properties: .init(persistent: true))
/// for try await delivery in try await client.consume(queue: "tasks") {
///     try await client.ack(deliveryTag: delivery.deliveryTag)
/// }
/// await client.close()
/// ```
public final class AMQPClient: Sendable {
    /// The configuration this client connected with.
    public let configuration: AMQPConfiguration

    private let mailbox: AMQPMailbox

    private init(configuration: AMQPConfiguration, mailbox: AMQPMailbox) {
        self.configuration = configuration
        self.mailbox = mailbox
    }

    deinit {
        // Dropped without close(): the thread still closes politely, then ends on its own.
        mailbox.requestClose()
        mailbox.detachThread()
    }

    /// Connects, logs in and opens the client's channels.
    ///
    /// - Throws: `GantryError(.connectionFailed)` naming the broker and the reason: retriable
    ///   when the broker is unreachable or dropped us, not retriable when it refused the login
    ///   or the vhost. `.configuration` for unreadable TLS files.
    public static func connect(_ configuration: AMQPConfiguration, logger: Logger = Logger(label: "gantry.amqp")) async throws -> AMQPClient {
        let mailbox = try AMQPMailbox(endpoint: configuration.endpoint)
        let startup = PendingReply<Void>()
        let thread = try startThread {
            AMQPConnection.threadMain(configuration: configuration, logger: logger, mailbox: mailbox, startup: startup)
        }
        mailbox.setThread(thread)
        do {
            try await startup.value("connecting to RabbitMQ at \(configuration.endpoint)")
        } catch let error as GantryError where error.code == .cancelled {
            // Do not wait out a slow connect: the thread notices, closes and ends by itself.
            mailbox.requestClose()
            mailbox.detachThread()
            throw error
        } catch {
            await mailbox.waitForThreadExit()
            mailbox.joinExitedThread()
            throw error
        }
        return AMQPClient(configuration: configuration, mailbox: mailbox)
    }

    /// Whether the client still accepts calls (not closed, not failed).
    public var isOpen: Bool { mailbox.isOpen }

    /// The error the connection failed with, or nil while it works or after a clean close.
    public var failure: GantryError? { mailbox.failure }

    /// Closes the channels and the connection, ends every consumer, and joins the thread.
    ///
    /// Calls queued before `close()` still run; later calls throw `GantryError(.closed)`.
    /// Publishes still waiting for a confirm fail with a retriable `.closed` error. Unsettled
    /// deliveries go back to their queues (the broker requeues them when the channel closes).
    /// Idempotent, and safe after a failure.
    public func close() async {
        mailbox.requestClose()
        await mailbox.waitForThreadExit()
        mailbox.joinExitedThread()
    }

    // MARK: - Queues and exchanges

    /// Declares a queue, or checks that an existing one has the same settings (idempotent).
    ///
    /// - Parameters:
    ///   - name: the queue name; empty asks the broker to pick one (see the returned name).
    ///   - durable: survives a broker restart.
    ///   - exclusive: used by this connection only, deleted when it closes.
    ///   - autoDelete: deleted when its last consumer goes away.
    ///   - arguments: `x-` arguments, see ``AMQPQueueArgument`` (dead-lettering, priorities,
    ///     queue type).
    /// - Throws: `.commandFailed` with RabbitMQ's `406 PRECONDITION_FAILED` text when the queue
    ///   exists with different settings; the client stays usable.
    @discardableResult
    public func declareQueue(
        _ name: String,
        durable: Bool = true,
        exclusive: Bool = false,
        autoDelete: Bool = false,
        arguments: [String: AMQPFieldValue] = [:]
    ) async throws -> AMQPQueueStatus {
        try await perform("queue.declare of queue '\(name)'") { connection throws(GantryError) in
            try connection.declareQueue(name, passive: false, durable: durable, exclusive: exclusive, autoDelete: autoDelete, arguments: arguments)
        }
    }

    /// A queue's ready-message and consumer counts (a passive declare).
    ///
    /// - Throws: `GantryError(.notFound)` when the queue does not exist; the client stays usable.
    public func queueStatus(_ name: String) async throws -> AMQPQueueStatus {
        try await perform("queue.declare (passive) of queue '\(name)'") { connection throws(GantryError) in
            try connection.declareQueue(name, passive: true, durable: false, exclusive: false, autoDelete: false, arguments: [:])
        }
    }

    /// The number of messages ready in a queue (unacknowledged deliveries not counted).
    ///
    /// - Throws: `GantryError(.notFound)` when the queue does not exist.
    public func queueDepth(_ name: String) async throws -> UInt32 {
        try await queueStatus(name).messageCount
    }

    /// Deletes a queue and returns how many messages it held.
    @discardableResult
    public func deleteQueue(_ name: String, ifUnused: Bool = false, ifEmpty: Bool = false) async throws -> UInt32 {
        try await perform("queue.delete of queue '\(name)'") { connection throws(GantryError) in
            try connection.deleteQueue(name, ifUnused: ifUnused, ifEmpty: ifEmpty)
        }
    }

    /// Removes every ready message from a queue and returns how many there were.
    @discardableResult
    public func purgeQueue(_ name: String) async throws -> UInt32 {
        try await perform("queue.purge of queue '\(name)'") { connection throws(GantryError) in
            try connection.purgeQueue(name)
        }
    }

    /// Declares an exchange, or checks that an existing one has the same settings (idempotent).
    public func declareExchange(
        _ name: String,
        type: AMQPExchangeType = .direct,
        durable: Bool = true,
        autoDelete: Bool = false,
        internal: Bool = false,
        arguments: [String: AMQPFieldValue] = [:]
    ) async throws {
        try await perform("exchange.declare of exchange '\(name)'") { connection throws(GantryError) in
            try connection.declareExchange(name, type: type, passive: false, durable: durable, autoDelete: autoDelete, isInternal: `internal`, arguments: arguments)
        }
    }

    /// Deletes an exchange.
    public func deleteExchange(_ name: String, ifUnused: Bool = false) async throws {
        try await perform("exchange.delete of exchange '\(name)'") { connection throws(GantryError) in
            try connection.deleteExchange(name, ifUnused: ifUnused)
        }
    }

    /// Binds a queue to an exchange (idempotent).
    public func bindQueue(_ queue: String, to exchange: String, routingKey: String, arguments: [String: AMQPFieldValue] = [:]) async throws {
        try await perform("queue.bind of queue '\(queue)'") { connection throws(GantryError) in
            try connection.bindQueue(queue, exchange: exchange, routingKey: routingKey, arguments: arguments, unbind: false)
        }
    }

    /// Removes a binding made by ``bindQueue(_:to:routingKey:arguments:)``.
    public func unbindQueue(_ queue: String, from exchange: String, routingKey: String, arguments: [String: AMQPFieldValue] = [:]) async throws {
        try await perform("queue.unbind of queue '\(queue)'") { connection throws(GantryError) in
            try connection.bindQueue(queue, exchange: exchange, routingKey: routingKey, arguments: arguments, unbind: true)
        }
    }

    // MARK: - Publishing

    /// Puts the publishing channel in confirm mode: from now on ``publish(exchange:routingKey:body:properties:mandatory:)``
    /// returns only once the broker has taken responsibility for the message. Idempotent.
    public func confirmSelect() async throws {
        try await perform("confirm.select") { connection throws(GantryError) in
            try connection.confirmSelect()
        }
    }

    /// Publishes one message.
    ///
    /// In confirm mode (``confirmSelect()``) it returns once the broker confirmed the message
    /// (basic.ack: routed and, for persistent messages on durable queues, written to disk);
    /// otherwise once the frames are written to the socket.
    ///
    /// - Parameter mandatory: fail (in confirm mode) instead of silently dropping a message
    ///   no queue is bound for.
    /// - Throws: `.commandFailed` (retriable) when the broker nacks it; `.notFound` when a
    ///   mandatory message was unroutable; `.connectionFailed` (retriable) when the connection
    ///   or channel failed first — the message may or may not have been stored, so publish
    ///   again on a new client (consumers must tolerate duplicates: delivery is at-least-once).
    public func publish(
        exchange: String = "",
        routingKey: String,
        body: [UInt8],
        properties: AMQPProperties = AMQPProperties(),
        mandatory: Bool = false
    ) async throws {
        try await publish([AMQPOutboundMessage(exchange: exchange, routingKey: routingKey, body: body, properties: properties, mandatory: mandatory)])
    }

    /// Publishes many messages back to back, then waits for all their confirms at once — far
    /// faster than one ``publish(exchange:routingKey:body:properties:mandatory:)`` at a time.
    ///
    /// - Throws: as the single publish, once every confirm arrived; the message counts how many
    ///   of the batch were refused. Nothing is sent when a message is invalid.
    public func publish(_ messages: [AMQPOutboundMessage]) async throws {
        let reply = PendingReply<Void>()
        mailbox.submit(AMQPCommand(
            execute: { connection in
                guard !reply.isSettled else { return }
                connection.publish(messages, reply: reply)
            },
            abandon: { reply.fail($0) }
        ))
        try await reply.value("publishing \(messages.count) message(s)")
    }

    // MARK: - Consuming

    /// Limits how many deliveries may be unacknowledged at once, per consumer started after
    /// this call (or per channel with `global`). Must be at least 1.
    public func qos(prefetchCount: UInt16, global: Bool = false) async throws {
        try await perform("basic.qos") { connection throws(GantryError) in
            try connection.qos(prefetchCount: prefetchCount, global: global)
        }
    }

    /// Starts a consumer with manual acknowledgement.
    ///
    /// Applies ``AMQPConfiguration/defaultPrefetchCount`` first when ``qos(prefetchCount:global:)``
    /// was never called: the prefetch is what bounds the consumer's buffer.
    ///
    /// - Parameters:
    ///   - queue: the queue to read.
    ///   - consumerTag: unique on this client; `nil` generates one.
    ///   - exclusive: refuse other consumers on the queue while this one runs.
    /// - Throws: `GantryError(.notFound)` when the queue does not exist.
    public func consume(
        queue: String,
        consumerTag: String? = nil,
        exclusive: Bool = false,
        arguments: [String: AMQPFieldValue] = [:]
    ) async throws -> AMQPConsumer {
        let tag = consumerTag ?? "gantry-\(String(UInt64.random(in: .min ... .max), radix: 16))"
        let buffer = DeliveryBuffer()
        // Made before the call, so that if the call fails or is cancelled after the thread
        // registered the consumer, releasing this object cancels it again.
        let consumer = AMQPConsumer(queue: queue, consumerTag: tag, buffer: buffer, mailbox: mailbox)
        try await perform("basic.consume on queue '\(queue)'") { connection throws(GantryError) in
            try connection.consume(queue: queue, consumerTag: tag, exclusive: exclusive, arguments: arguments, buffer: buffer)
        }
        return consumer
    }

    /// Acknowledges a delivery (with `multiple`, every unsettled one up to and including it;
    /// tag 0 with `multiple` means all).
    ///
    /// Returns once the connection thread has accepted the ack; a single ack is written together
    /// with the others accepted in the same pass of that thread, before it waits again. If the
    /// connection fails first, the broker requeues the delivery, as for any unacked one.
    ///
    /// - Throws: `.invalidArgument` for a tag that is not an unsettled delivery of this client,
    ///   without sending it (RabbitMQ would close the channel over it).
    public func ack(deliveryTag: UInt64, multiple: Bool = false) async throws {
        try await perform("basic.ack of delivery \(deliveryTag)") { connection throws(GantryError) in
            try connection.settle(.ack, deliveryTag: deliveryTag, multiple: multiple)
        }
    }

    /// Negatively acknowledges a delivery: back to its queue with `requeue` (delivered again,
    /// flagged redelivered), else dead-lettered or dropped as the queue is configured.
    public func nack(deliveryTag: UInt64, multiple: Bool = false, requeue: Bool = true) async throws {
        try await perform("basic.nack of delivery \(deliveryTag)") { connection throws(GantryError) in
            try connection.settle(.nack(requeue: requeue), deliveryTag: deliveryTag, multiple: multiple)
        }
    }

    /// Rejects one delivery; like ``nack(deliveryTag:multiple:requeue:)`` for a single message.
    /// `requeue: false` sends it to the queue's dead-letter exchange, if it has one.
    public func reject(deliveryTag: UInt64, requeue: Bool) async throws {
        try await perform("basic.reject of delivery \(deliveryTag)") { connection throws(GantryError) in
            try connection.settle(.reject(requeue: requeue), deliveryTag: deliveryTag, multiple: false)
        }
    }

    // MARK: - Plumbing

    /// Runs `body` on the connection thread and returns its result.
    private func perform<Value: Sendable>(
        _ operation: String,
        _ body: @escaping @Sendable (AMQPConnection) throws(GantryError) -> Value
    ) async throws -> Value {
        let reply = PendingReply<Value>()
        mailbox.submit(AMQPCommand(
            execute: { connection in
                // The caller was cancelled before the thread got here: do not do it.
                guard !reply.isSettled else { return }
                do throws(GantryError) {
                    reply.succeed(try body(connection))
                } catch {
                    reply.fail(error)
                }
            },
            abandon: { reply.fail($0) }
        ))
        return try await reply.value(operation)
    }
}
