/// A value in an AMQP field table: queue and exchange arguments, message headers.
///
/// The cases follow RabbitMQ's field types. Literals pick the type most brokers and clients
/// expect: an integer literal is a signed 32-bit `I` when it fits (else a 64-bit `l`), a string
/// literal a long string `S`, so `["x-max-priority": 10, "x-queue-type": "classic"]` declares
/// what every other client declares and a redeclare stays idempotent.
public indirect enum AMQPFieldValue: Sendable, Hashable {
    /// `t`
    case bool(Bool)
    /// `b`
    case int8(Int8)
    /// `B`
    case uint8(UInt8)
    /// `s`
    case int16(Int16)
    /// `u`
    case uint16(UInt16)
    /// `I`
    case int32(Int32)
    /// `i`
    case uint32(UInt32)
    /// `l`
    case int64(Int64)
    /// `L` (RabbitMQ does not accept it in arguments; prefer ``int64(_:)``)
    case uint64(UInt64)
    /// `f`
    case float(Float)
    /// `d`
    case double(Double)
    /// `D`: `value` × 10^-`scale`
    case decimal(scale: UInt8, value: UInt32)
    /// `S` holding valid UTF-8
    case string(String)
    /// `x`, or an `S` long string that is not valid UTF-8
    case bytes([UInt8])
    /// `A`
    case array([AMQPFieldValue])
    /// `F`
    case table([String: AMQPFieldValue])
    /// `T`: seconds since the Unix epoch
    case timestamp(UInt64)
    /// `V`
    case void
}

extension AMQPFieldValue {
    /// The value as a string, if it is a string (or bytes that are UTF-8).
    public var stringValue: String? {
        switch self {
        case .string(let value): value
        case .bytes(let value): String(validating: value, as: UTF8.self)
        default: nil
        }
    }

    /// The value as a signed integer, if it is any integer type that fits.
    public var intValue: Int? {
        switch self {
        case .int8(let value): Int(value)
        case .uint8(let value): Int(value)
        case .int16(let value): Int(value)
        case .uint16(let value): Int(value)
        case .int32(let value): Int(value)
        case .uint32(let value): Int(value)
        case .int64(let value): Int(exactly: value)
        case .uint64(let value): Int(exactly: value)
        case .timestamp(let value): Int(exactly: value)
        default: nil
        }
    }

    /// The value as a table, if it is one.
    public var tableValue: [String: AMQPFieldValue]? {
        if case .table(let value) = self { return value }
        return nil
    }

    /// The value as an array, if it is one.
    public var arrayValue: [AMQPFieldValue]? {
        if case .array(let value) = self { return value }
        return nil
    }
}

extension AMQPFieldValue: ExpressibleByStringLiteral {
    /// A long string `S`.
    public init(stringLiteral value: String) {
        self = .string(value)
    }
}

extension AMQPFieldValue: ExpressibleByIntegerLiteral {
    /// A signed 32-bit `I` when it fits, otherwise a signed 64-bit `l`.
    public init(integerLiteral value: Int) {
        if let small = Int32(exactly: value) {
            self = .int32(small)
        } else {
            self = .int64(Int64(value))
        }
    }
}

extension AMQPFieldValue: ExpressibleByBooleanLiteral {
    /// A boolean `t`.
    public init(booleanLiteral value: Bool) {
        self = .bool(value)
    }
}

extension AMQPFieldValue: ExpressibleByFloatLiteral {
    /// A double `d`.
    public init(floatLiteral value: Double) {
        self = .double(value)
    }
}

extension AMQPFieldValue: ExpressibleByArrayLiteral {
    /// An array `A`.
    public init(arrayLiteral elements: AMQPFieldValue...) {
        self = .array(elements)
    }
}

extension AMQPFieldValue: ExpressibleByDictionaryLiteral {
    /// A nested table `F`.
    public init(dictionaryLiteral elements: (String, AMQPFieldValue)...) {
        self = .table(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}

/// Names of the queue arguments Gantry uses, for `AMQPClient.declareQueue(_:durable:exclusive:autoDelete:arguments:)`.
public enum AMQPQueueArgument {
    /// Exchange that rejected (`requeue: false`), expired or overflowed messages are re-published to.
    public static let deadLetterExchange = "x-dead-letter-exchange"
    /// Routing key for dead-lettered messages; without it the original routing key is kept.
    public static let deadLetterRoutingKey = "x-dead-letter-routing-key"
    /// Highest message priority the queue honours (1...255; RabbitMQ advises at most 10).
    public static let maxPriority = "x-max-priority"
    /// `classic`, `quorum` or `stream`.
    public static let queueType = "x-queue-type"
    /// Per-queue message time-to-live, in milliseconds.
    public static let messageTTL = "x-message-ttl"
    /// Most ready messages the queue keeps before its overflow behaviour applies.
    public static let maxLength = "x-max-length"
    /// Quorum queues: deliveries after which a message is dead-lettered (poison message handling).
    public static let deliveryLimit = "x-delivery-limit"
}
