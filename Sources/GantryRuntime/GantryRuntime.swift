import GantryAMQP
import GantryCore
import GantryKafka
import GantryRedis
import GantryStore
import Logging

/// The connections a Gantry process needs, made from its settings: the Redis store, the broker
/// transport chosen by `broker.kind`, and a dispatcher that publishes through it.
public struct GantryRuntime: Sendable {
    /// The settings everything was made from.
    public let settings: GantrySettings
    /// The Redis state store.
    public let store: RedisStateStore
    /// The broker transport.
    public let transport: any TaskTransport
    /// Publishes queued nodes as task messages (signed when `signing.key_id` is set).
    public let dispatcher: TaskDispatcher

    /// Connects to Redis (checking it answers) and makes the transport.
    public static func connect(settings: GantrySettings, logger: Logger) async throws -> GantryRuntime {
        let store = try RedisStateStore(settings: settings)
        try await store.checkReachable(settings: settings)
        try await store.loadScripts()
        let transport = try makeTransport(settings: settings, logger: logger)
        let dispatcher = TaskDispatcher(store: store, transport: transport, signing: try signingKey(settings))
        return GantryRuntime(settings: settings, store: store, transport: transport, dispatcher: dispatcher)
    }

    /// The transport for `broker.kind`.
    public static func makeTransport(settings: GantrySettings, logger: Logger) throws -> any TaskTransport {
        let kind = try settings.string("broker.kind")
        switch kind {
        case "rabbitmq":
            let url = try settings.string("broker.rabbitmq_url")
            let amqp: AMQPConfiguration
            do {
                amqp = try AMQPConfiguration(url: url)
            } catch {
                throw GantryError(.configuration, "setting 'broker.rabbitmq_url' (from \(settings.source(of: "broker.rabbitmq_url"))): \(error.message)")
            }
            let configuration = RabbitMQTransportConfiguration(amqp: amqp, queuePrefix: try settings.string("broker.queue_prefix"))
            return try RabbitMQTransport(configuration: configuration, logger: logger)
        case "kafka":
            let brokers = try settings.strings("broker.kafka_brokers")
            let kafka = KafkaConfiguration(bootstrapServers: brokers, properties: try settings.dictionary("broker.kafka_properties"))
            let configuration = KafkaTransportConfiguration(kafka: kafka, topicPrefix: try settings.string("broker.queue_prefix"), groupID: try settings.string("broker.kafka_group"))
            return try KafkaTransport(configuration: configuration, logger: logger)
        case "memory":
            return InMemoryTransport()
        default:
            throw GantryError(.configuration, "setting 'broker.kind' (from \(settings.source(of: "broker.kind"))) must be rabbitmq, kafka or memory, got '\(kind)'")
        }
    }

    /// The key envelopes are signed with, if `signing.key_id` is set.
    public static func signingKey(_ settings: GantrySettings) throws -> TaskDispatcher.SigningKey? {
        let id = try settings.string("signing.key_id")
        guard !id.isEmpty else { return nil }
        guard let secret = try settings.dictionary("signing.keys")[id] else {
            throw GantryError(.configuration, "signing.key_id is '\(id)' but signing.keys has no secret for it")
        }
        return TaskDispatcher.SigningKey(id: id, secret: Array(secret.utf8))
    }

    /// The keys workers verify envelopes with: all of `signing.keys` when `signing.required`.
    public static func verificationKeys(_ settings: GantrySettings) throws -> [String: [UInt8]]? {
        guard try settings.bool("signing.required") else { return nil }
        let keys = try settings.dictionary("signing.keys").mapValues { Array($0.utf8) }
        guard !keys.isEmpty else {
            throw GantryError(.configuration, "signing.required is true but signing.keys is empty; add at least one key id and secret")
        }
        return keys
    }

    /// The log level of `log.level`.
    public static func logLevel(_ settings: GantrySettings) throws -> Logger.Level {
        let text = try settings.string("log.level")
        guard let level = Logger.Level(rawValue: text) else {
            throw GantryError(.configuration, "setting 'log.level' must be one of trace, debug, info, notice, warning, error, critical; got '\(text)'")
        }
        return level
    }
}
