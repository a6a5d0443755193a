import GantryCore

/// How a ``RabbitMQTransport`` reaches RabbitMQ, names its queues and rides out broker restarts.
///
/// Every setting has a default, so `RabbitMQTransportConfiguration()` talks to the broker
/// `ops/stack up rabbitmq` starts. ``fromEnvironment(_:)`` reads these variables, each optional:
///
/// | key | meaning | default |
/// |---|---|---|
/// | `GANTRY_AMQP_URL` | ``amqp``: `amqp[s]://user:password@host:port/vhost?…`, TLS included (see ``AMQPConfiguration``) | `amqp://guest:guest@127.0.0.1:5682/` |
/// | `GANTRY_AMQP_QUEUE_PREFIX` | ``queuePrefix`` | `gantry.` |
/// | `GANTRY_AMQP_RECONNECT_BACKOFF_MS` | ``reconnectBackoffInitial`` | `100` |
/// | `GANTRY_AMQP_RECONNECT_BACKOFF_MAX_MS` | ``reconnectBackoffMax`` | `5000` |
/// | `GANTRY_AMQP_RECONNECT_TIMEOUT_MS` | ``reconnectTimeout``; `0` retries forever | `120000` |
public struct RabbitMQTransportConfiguration: Sendable, Hashable {
    /// The broker, credentials, TLS (an `amqps://` URL), heartbeat and timeouts.
    ///
    /// Its `connectionName` is the stem of the names RabbitMQ shows for the transport's
    /// connections: `<name>-publisher` and `<name>-consumer-<n>`.
    public var amqp: AMQPConfiguration
    /// Put in front of every queue name the application uses, so Gantry's queues are easy to
    /// tell apart on a shared broker: queue `tasks` is `gantry.tasks` on the broker. Default `gantry.`.
    public var queuePrefix: String
    /// The `x-max-priority` of task queues: ``GantryCore/OutgoingMessage/priority`` above it
    /// counts as it. RabbitMQ advises at most 10. Default `10`.
    public var maxPriority: UInt8
    /// The wait before the second connection attempt after a failure (the first is immediate);
    /// it doubles per failed attempt up to ``reconnectBackoffMax``, with jitter. Default 100 ms.
    public var reconnectBackoffInitial: Duration
    /// Upper bound of the wait between connection attempts. Default 5 s.
    public var reconnectBackoffMax: Duration
    /// How long a publish, a declare or a consumer keeps trying to reconnect before it gives
    /// up with the last connection error; `nil` keeps trying until the transport is closed.
    /// Default 120 s, long enough for a broker restart.
    public var reconnectTimeout: Duration?

    /// Creates a configuration; every parameter has the documented default.
    public init(
        amqp: AMQPConfiguration? = nil,
        queuePrefix: String = "gantry.",
        maxPriority: UInt8 = 10,
        reconnectBackoffInitial: Duration = .milliseconds(100),
        reconnectBackoffMax: Duration = .seconds(5),
        reconnectTimeout: Duration? = .seconds(120)
    ) {
        // The URL is a constant that parses; `try!` cannot fail here.
        self.amqp = amqp ?? (try! AMQPConfiguration(url: AMQPConfiguration.defaultURL))
        self.queuePrefix = queuePrefix
        self.maxPriority = maxPriority
        self.reconnectBackoffInitial = reconnectBackoffInitial
        self.reconnectBackoffMax = reconnectBackoffMax
        self.reconnectTimeout = reconnectTimeout
    }

    /// Reads the `GANTRY_AMQP_*` variables listed on the type; unset ones keep their defaults.
    ///
    /// - Parameter environment: the variables to read; `nil` reads the process environment.
    /// - Throws: `GantryError(.configuration)` naming the variable that is wrong.
    public static func fromEnvironment(_ environment: [String: String]? = nil) throws(GantryError) -> RabbitMQTransportConfiguration {
        func value(_ key: String) -> String? {
            environment.map { $0[key] } ?? processEnvironment(key)
        }
        func milliseconds(_ key: String, allowZero: Bool = false) throws(GantryError) -> Int? {
            guard let text = value(key), !text.isEmpty else { return nil }
            guard let number = Int(text), number > 0 || (allowZero && number == 0) else {
                throw GantryError(.configuration, "\(key)=\(text) is not a \(allowZero ? "non-negative" : "positive") number of milliseconds")
            }
            return number
        }
        var configuration = RabbitMQTransportConfiguration(amqp: try AMQPConfiguration.fromEnvironment(environment))
        if let prefix = value("GANTRY_AMQP_QUEUE_PREFIX") {
            configuration.queuePrefix = prefix
        }
        if let initial = try milliseconds("GANTRY_AMQP_RECONNECT_BACKOFF_MS") {
            configuration.reconnectBackoffInitial = .milliseconds(initial)
        }
        if let maximum = try milliseconds("GANTRY_AMQP_RECONNECT_BACKOFF_MAX_MS") {
            configuration.reconnectBackoffMax = .milliseconds(maximum)
        }
        if let timeout = try milliseconds("GANTRY_AMQP_RECONNECT_TIMEOUT_MS", allowZero: true) {
            configuration.reconnectTimeout = timeout == 0 ? nil : .milliseconds(timeout)
        }
        try configuration.validate()
        return configuration
    }

    /// Checks that the settings can work together, so a mistake shows when the transport is
    /// made rather than on the first publish.
    func validate() throws(GantryError) {
        guard maxPriority >= 1 else {
            throw GantryError(.configuration, "RabbitMQ transport: maxPriority must be 1...255 (RabbitMQ advises at most 10), not 0")
        }
        guard reconnectBackoffInitial > .zero, reconnectBackoffMax >= reconnectBackoffInitial else {
            throw GantryError(.configuration, "RabbitMQ transport: the reconnect backoff must be positive and its maximum (\(reconnectBackoffMax)) at least its start (\(reconnectBackoffInitial))")
        }
        if let reconnectTimeout, reconnectTimeout <= .zero {
            throw GantryError(.configuration, "RabbitMQ transport: reconnectTimeout must be positive, or nil to retry forever")
        }
        // Room for the longest suffix Gantry adds (".dlq") within AMQP's 255-byte names.
        guard queuePrefix.utf8.count <= 200 else {
            throw GantryError(.configuration, "RabbitMQ transport: the queue prefix '\(queuePrefix.prefix(40))…' is \(queuePrefix.utf8.count) bytes; keep it under 200 so queue names fit AMQP's 255")
        }
    }
}
