/// The basic-class properties of a message (its AMQP content header).
///
/// Every field is optional on the wire; `nil` means "not sent".
public struct AMQPProperties: Sendable, Hashable {
    /// Whether the broker writes the message to disk (delivery mode 2) or may keep it in memory only.
    public enum DeliveryMode: UInt8, Sendable, Hashable {
        /// Delivery mode 1: lost on broker restart.
        case transient = 1
        /// Delivery mode 2: survives a broker restart when the queue is durable.
        case persistent = 2
    }

    /// MIME type of the body.
    public var contentType: String?
    /// Encoding of the body, such as `gzip`.
    public var contentEncoding: String?
    /// Application headers.
    public var headers: [String: AMQPFieldValue]
    /// Transient or persistent.
    public var deliveryMode: DeliveryMode?
    /// 0...9 (up to the queue's `x-max-priority`), higher first.
    public var priority: UInt8?
    /// Correlates a reply with its request.
    public var correlationID: String?
    /// Queue a reply should go to.
    public var replyTo: String?
    /// Per-message time-to-live in milliseconds, as a decimal string (AMQP's own encoding).
    public var expiration: String?
    /// Application message identifier.
    public var messageID: String?
    /// Seconds since the Unix epoch.
    public var timestamp: UInt64?
    /// Application message type name.
    public var type: String?
    /// Publishing user; RabbitMQ refuses a message whose user-id is not the connection's user.
    public var userID: String?
    /// Publishing application.
    public var appID: String?

    /// Creates properties; `persistent: true` sets ``deliveryMode`` to ``DeliveryMode/persistent``.
    public init(
        persistent: Bool = false,
        priority: UInt8? = nil,
        headers: [String: AMQPFieldValue] = [:],
        messageID: String? = nil,
        correlationID: String? = nil,
        contentType: String? = nil,
        contentEncoding: String? = nil,
        replyTo: String? = nil,
        expiration: String? = nil,
        timestamp: UInt64? = nil,
        type: String? = nil,
        userID: String? = nil,
        appID: String? = nil
    ) {
        self.deliveryMode = persistent ? .persistent : nil
        self.priority = priority
        self.headers = headers
        self.messageID = messageID
        self.correlationID = correlationID
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.replyTo = replyTo
        self.expiration = expiration
        self.timestamp = timestamp
        self.type = type
        self.userID = userID
        self.appID = appID
    }

    /// Whether the message was published with delivery mode 2.
    public var isPersistent: Bool { deliveryMode == .persistent }
}

/// One message handed to a consumer.
///
/// Settle it exactly once with `AMQPClient.ack`, `nack` or `reject`, on the same client that
/// delivered it: delivery tags are only meaningful on the channel they came from.
public struct AMQPDelivery: Sendable, Hashable {
    /// Identifies this delivery on its channel; pass it to ack/nack/reject.
    public var deliveryTag: UInt64
    /// Whether the broker delivered this message before (to this or another consumer) without an ack.
    public var redelivered: Bool
    /// The exchange the message was published to (`""` for the default exchange).
    public var exchange: String
    /// The routing key it was published with.
    public var routingKey: String
    /// The consumer it was delivered to.
    public var consumerTag: String
    /// The message body.
    public var body: [UInt8]
    /// The message properties, headers included.
    public var properties: AMQPProperties

    /// Creates a delivery; the broker's deliveries are made by the client.
    public init(
        deliveryTag: UInt64,
        redelivered: Bool,
        exchange: String,
        routingKey: String,
        consumerTag: String,
        body: [UInt8],
        properties: AMQPProperties
    ) {
        self.deliveryTag = deliveryTag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routingKey = routingKey
        self.consumerTag = consumerTag
        self.body = body
        self.properties = properties
    }
}

/// One message to publish, for `AMQPClient.publish(_:)` batches.
public struct AMQPOutboundMessage: Sendable, Hashable {
    /// The exchange to publish to; `""` is the default exchange, which routes by queue name.
    public var exchange: String
    /// The routing key; with the default exchange, the queue name.
    public var routingKey: String
    /// The message body.
    public var body: [UInt8]
    /// The message properties.
    public var properties: AMQPProperties
    /// Whether an unroutable message fails the publish (instead of being dropped silently).
    public var mandatory: Bool

    /// Creates a message to publish.
    public init(
        exchange: String = "",
        routingKey: String,
        body: [UInt8],
        properties: AMQPProperties = AMQPProperties(),
        mandatory: Bool = false
    ) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.properties = properties
        self.mandatory = mandatory
    }
}

/// A queue's counters, as `queue.declare-ok` reports them.
public struct AMQPQueueStatus: Sendable, Hashable {
    /// The queue name (the broker's choice when declared with an empty name).
    public var name: String
    /// Messages ready for delivery; unacknowledged deliveries are not counted.
    public var messageCount: UInt32
    /// Consumers currently attached.
    public var consumerCount: UInt32

    /// Creates a status value.
    public init(name: String, messageCount: UInt32, consumerCount: UInt32) {
        self.name = name
        self.messageCount = messageCount
        self.consumerCount = consumerCount
    }
}

/// An exchange type; RabbitMQ plugins add more, so any name is accepted.
public struct AMQPExchangeType: RawRepresentable, Sendable, Hashable, ExpressibleByStringLiteral {
    /// The type name as the broker knows it.
    public var rawValue: String
    /// Creates a type from its name.
    public init(rawValue: String) { self.rawValue = rawValue }
    /// Creates a type from its name.
    public init(stringLiteral value: String) { self.rawValue = value }

    /// Routes to queues bound with exactly the routing key.
    public static let direct: AMQPExchangeType = "direct"
    /// Routes to every bound queue.
    public static let fanout: AMQPExchangeType = "fanout"
    /// Routes by dotted routing-key patterns (`*`, `#`).
    public static let topic: AMQPExchangeType = "topic"
    /// Routes by header values.
    public static let headers: AMQPExchangeType = "headers"
}
