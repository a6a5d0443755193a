import GantryCore

/// How Gantry's queues and messages look on RabbitMQ: broker queue names, queue declarations,
/// and the mapping between ``GantryCore/OutgoingMessage`` / ``GantryCore/Delivery`` and AMQP.
///
/// - Queue `q` is the durable classic queue `<prefix>q` with `x-max-priority` and a dead-letter
///   route (default exchange, routing key `<prefix>q.dlq`) to the durable queue `<prefix>q.dlq`.
///   A name ending in `.dlq` is a dead-letter queue itself: declared plain, with no route of
///   its own, so declaring or consuming it never clashes with the arguments its task queue set.
/// - Messages are persistent; `priority` is the AMQP priority (capped at the queue's maximum,
///   omitted when 0); `key` travels in the ``keyHeader`` header; headers are AMQP long strings.
struct RabbitMQTransportCodec: Sendable {
    /// The header that carries ``GantryCore/OutgoingMessage/key``.
    static let keyHeader = "x-gantry-key"
    /// The header RabbitMQ adds when it dead-letters a message itself (reject, expiry, overflow).
    static let deathHeader = "x-death"
    static let deadLetterSuffix = ".dlq"

    let prefix: String
    let maxPriority: UInt8

    init(_ configuration: RabbitMQTransportConfiguration) {
        prefix = configuration.queuePrefix
        maxPriority = configuration.maxPriority
    }

    // MARK: Names

    /// The broker's name for the application's queue `queue`.
    func brokerName(_ queue: String) -> String { prefix + queue }

    /// The application's name for a broker queue (inverse of ``brokerName(_:)``).
    func applicationName(_ brokerQueue: String) -> String {
        brokerQueue.hasPrefix(prefix) ? String(brokerQueue.dropFirst(prefix.count)) : brokerQueue
    }

    static func isDeadLetterQueue(_ queue: String) -> Bool { queue.hasSuffix(deadLetterSuffix) }

    // MARK: Declarations

    /// Declares `queue` (and, for a task queue, its dead-letter queue first, so the route
    /// always has somewhere to go). Idempotent: the same arguments every time.
    func declare(_ queue: String, on client: AMQPClient) async throws {
        guard !queue.isEmpty else {
            throw GantryError(.invalidArgument, "a queue name is empty; name the queue")
        }
        if Self.isDeadLetterQueue(queue) {
            try await declareChecked(brokerName(queue), arguments: [:], on: client)
            return
        }
        let deadLetters = brokerName(queue + Self.deadLetterSuffix)
        try await declareChecked(deadLetters, arguments: [:], on: client)
        try await declareChecked(brokerName(queue), arguments: [
            AMQPQueueArgument.maxPriority: .int32(Int32(maxPriority)),
            // The default exchange routes by queue name: no exchange or binding to manage.
            AMQPQueueArgument.deadLetterExchange: .string(""),
            AMQPQueueArgument.deadLetterRoutingKey: .string(deadLetters),
        ], on: client)
    }

    private func declareChecked(_ name: String, arguments: [String: AMQPFieldValue], on client: AMQPClient) async throws {
        do {
            try await client.declareQueue(name, durable: true, arguments: arguments)
        } catch let error as GantryError where error.code == .commandFailed && error.message.contains("406") {
            throw GantryError(
                .configuration,
                "RabbitMQ queue '\(name)' already exists with other settings than Gantry declares (durable, \(arguments.isEmpty ? "no arguments" : arguments.keys.sorted().joined(separator: ", "))); it was made by another program or an older Gantry: delete it, or choose another GANTRY_AMQP_QUEUE_PREFIX",
                underlying: error
            )
        }
    }

    // MARK: Messages

    /// The AMQP message for `message` on `queue`. Mandatory, so a publish to a queue that does
    /// not exist fails with `.notFound` instead of being dropped by the broker.
    func outbound(_ message: OutgoingMessage, to queue: String) -> AMQPOutboundMessage {
        var headers: [String: AMQPFieldValue] = [:]
        if !message.headers.isEmpty || message.key != nil {
            headers.reserveCapacity(message.headers.count + 1)
            for (name, value) in message.headers { headers[name] = .string(value) }
            if let key = message.key { headers[Self.keyHeader] = .string(key) }
        }
        return AMQPOutboundMessage(
            routingKey: brokerName(queue),
            body: message.body,
            properties: AMQPProperties(persistent: true, priority: message.priority > 0 ? min(message.priority, maxPriority) : nil, headers: headers),
            mandatory: true
        )
    }

    /// A copy of a delivered message for the dead-letter queue, with `reason` in its header.
    func deadLetterCopy(of delivery: Delivery, reason: String) -> AMQPOutboundMessage {
        var headers = delivery.headers
        headers[deadLetterReasonHeader] = reason
        return outbound(OutgoingMessage(body: delivery.body, key: delivery.key, headers: headers), to: delivery.queue + Self.deadLetterSuffix)
    }

    /// The ``GantryCore/Delivery`` of an AMQP delivery from the application's queue `queue`.
    func delivery(_ amqp: AMQPDelivery, queue: String, token: DeliveryToken) -> Delivery {
        var key: String?
        var headers: [String: String] = [:]
        if !amqp.properties.headers.isEmpty {
            for (name, value) in amqp.properties.headers {
                if name == Self.keyHeader {
                    key = value.stringValue
                } else if let text = Self.text(value) {
                    headers[name] = text
                }
            }
            // Dead-lettered by the broker (nack without requeue, expiry): say why, like deadLetter does.
            if headers[deadLetterReasonHeader] == nil, let death = amqp.properties.headers[Self.deathHeader]?.arrayValue?.first?.tableValue {
                let reason = death["reason"]?.stringValue ?? "unknown"
                let from = death["queue"]?.stringValue.map(applicationName) ?? "?"
                headers[deadLetterReasonHeader] = "RabbitMQ dead-lettered it from queue '\(from)': \(reason)"
            }
        }
        return Delivery(body: amqp.body, queue: queue, key: key, headers: headers, redelivered: amqp.redelivered, token: token)
    }

    /// A header value as text. Tables and arrays (RabbitMQ's own `x-death`) have no text form
    /// and are left out of ``GantryCore/Delivery/headers``.
    private static func text(_ value: AMQPFieldValue) -> String? {
        switch value {
        case .string(let text): text
        case .bytes: value.stringValue
        case .bool(let flag): flag ? "true" : "false"
        case .float(let number): String(number)
        case .double(let number): String(number)
        case .array, .table, .void, .decimal: nil
        default: value.intValue.map { String($0) }
        }
    }
}
