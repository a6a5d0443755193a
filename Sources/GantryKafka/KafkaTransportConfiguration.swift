import GantryCore

/// How a ``KafkaTransport`` maps queues to topics, joins its consumer group and commits.
///
/// Connection settings (brokers, TLS, SASL, any librdkafka property shared by every client)
/// live in ``kafka``; properties for only the producer or only the consumers go in
/// ``producerProperties`` and ``consumerProperties`` (librdkafka warns about a consumer key
/// given to a producer and the other way round).
///
/// From the environment (``init(environment:)``), besides the keys of
/// ``KafkaConfiguration/init(environment:)``:
/// - `GANTRY_KAFKA_TOPIC_PREFIX`: ``topicPrefix`` (default `gantry.`);
/// - `GANTRY_KAFKA_GROUP_ID`: ``groupID`` (default `gantry-workers`);
/// - `GANTRY_KAFKA_COMMIT_INTERVAL`: ``commitInterval`` as a duration, e.g. `100ms`;
/// - `GANTRY_KAFKA_PREFETCH_BYTES`: ``prefetchBytes`` (default 33554432, 32 MiB).
public struct KafkaTransportConfiguration: Sendable, Equatable {
    /// The brokers and the librdkafka properties every client of the transport gets.
    public var kafka: KafkaConfiguration
    /// librdkafka properties for the producer only, e.g. `linger.ms`, `message.timeout.ms`.
    /// Default empty.
    public var producerProperties: [String: String]
    /// librdkafka properties for the consumers only, e.g. `session.timeout.ms`,
    /// `heartbeat.interval.ms`, `partition.assignment.strategy`. Default empty.
    public var consumerProperties: [String: String]
    /// Put before a queue's name to make its topic: queue `tasks` is topic `gantry.tasks`, its
    /// dead letters go to `gantry.tasks.dlq`. Default `gantry.`.
    public var topicPrefix: String
    /// The consumer group every ``KafkaTransport/consume(queues:credit:)`` joins. Workers of
    /// one fleet share it, so each record goes to one of them. Default `gantry-workers`.
    public var groupID: String
    /// Where a group with no committed offset for a partition starts. Default
    /// ``KafkaOffsetReset/earliest``, so tasks published before any worker ran are run.
    public var autoOffsetReset: KafkaOffsetReset
    /// How long finished records may wait before their offsets are committed, so that commits
    /// go in batches rather than one per record. Offsets are also committed when partitions are
    /// revoked and when a consumer stops. Default 100 ms.
    public var commitInterval: Duration
    /// How much a consumer fetches ahead of its workers: fetching pauses (the consumer stays
    /// in its group) while the records fetched and not yet handed out reach this many bytes of
    /// keys and values (plus 128 bytes per record for their bookkeeping), and resumes below
    /// half. Unless ``consumerProperties`` set `fetch.max.bytes`, one fetch returns at most
    /// half of it (and at least 1 MiB), so that a consumer keeping up never pauses: librdkafka
    /// fetches again what it had fetched ahead of a pause. Default 32 MiB.
    public var prefetchBytes: Int
    /// How long a consumer's rebalance may wait for it to commit the revoked partitions before
    /// they are given up anyway. Default 10 seconds.
    public var revocationGracePeriod: Duration
    /// How long ``KafkaTransport/declare(queues:)`` and ``KafkaTransport/depth(of:)`` wait
    /// for the brokers' answers. Default 10 seconds.
    public var requestTimeout: Duration
    /// How long ``KafkaTransport/close()`` waits for records still being published. Default
    /// 10 seconds.
    public var closeTimeout: Duration

    /// Creates a configuration; every argument has the default documented on its property.
    public init(
        kafka: KafkaConfiguration = KafkaConfiguration(),
        producerProperties: [String: String] = [:],
        consumerProperties: [String: String] = [:],
        topicPrefix: String = "gantry.",
        groupID: String = "gantry-workers",
        autoOffsetReset: KafkaOffsetReset = .earliest,
        commitInterval: Duration = .milliseconds(100),
        prefetchBytes: Int = 32 << 20,
        revocationGracePeriod: Duration = .seconds(10),
        requestTimeout: Duration = .seconds(10),
        closeTimeout: Duration = .seconds(10)
    ) {
        self.kafka = kafka
        self.producerProperties = producerProperties
        self.consumerProperties = consumerProperties
        self.topicPrefix = topicPrefix
        self.groupID = groupID
        self.autoOffsetReset = autoOffsetReset
        self.commitInterval = commitInterval
        self.prefetchBytes = prefetchBytes
        self.revocationGracePeriod = revocationGracePeriod
        self.requestTimeout = requestTimeout
        self.closeTimeout = closeTimeout
    }

    /// Creates a configuration from environment variables (see the type's documentation for
    /// the keys); anything not set keeps its default.
    ///
    /// - Throws: ``GantryError`` with code `configuration` naming a variable whose value does
    ///   not parse.
    public init(environment: [String: String]) throws {
        self.init(kafka: KafkaConfiguration(environment: environment))
        if let prefix = environment["GANTRY_KAFKA_TOPIC_PREFIX"] { topicPrefix = prefix }
        if let group = environment["GANTRY_KAFKA_GROUP_ID"], !group.isEmpty { groupID = group }
        if let text = environment["GANTRY_KAFKA_COMMIT_INTERVAL"] {
            guard let interval = Duration(parsing: text) else {
                throw GantryError(.configuration, "GANTRY_KAFKA_COMMIT_INTERVAL='\(text)' is not a duration; use e.g. 100ms or 1s")
            }
            commitInterval = interval
        }
        if let text = environment["GANTRY_KAFKA_PREFETCH_BYTES"] {
            guard let value = Int(text), value > 0 else {
                throw GantryError(.configuration, "GANTRY_KAFKA_PREFETCH_BYTES='\(text)' is not a positive number of bytes")
            }
            prefetchBytes = value
        }
    }

    /// The topic that carries `queue`.
    public func topic(for queue: String) -> String {
        topicPrefix + queue
    }

    /// Checks the values that do not need a broker.
    func validate() throws {
        guard !groupID.isEmpty else {
            throw GantryError(.configuration, "the Kafka transport's group id is empty; set GANTRY_KAFKA_GROUP_ID")
        }
        guard prefetchBytes > 0 else {
            throw GantryError(.configuration, "the Kafka transport's prefetch must be a positive number of bytes, not \(prefetchBytes)")
        }
        guard commitInterval >= .zero else {
            throw GantryError(.configuration, "the Kafka transport's commit interval must not be negative")
        }
        if !topicPrefix.isEmpty {
            guard KafkaWire.isValidTopicName(topicPrefix) else {
                throw GantryError(.configuration, "the Kafka topic prefix '\(topicPrefix)' may only use a-z A-Z 0-9 . _ -")
            }
        }
    }

    /// `kafka` with `extra` properties added, for one kind of client.
    func kafka(adding extra: [String: String]) -> KafkaConfiguration {
        var configuration = kafka
        configuration.properties.merge(extra) { _, new in new }
        return configuration
    }

    /// The consumers' configuration: ``kafka`` and ``consumerProperties``, with a fetch size
    /// that fits the prefetch limit unless one is set.
    var consumerKafkaConfiguration: KafkaConfiguration {
        var configuration = kafka(adding: consumerProperties)
        if configuration.properties["fetch.max.bytes"] == nil {
            // librdkafka wants fetch.max.bytes >= message.max.bytes (default 1,000,000).
            configuration.properties["fetch.max.bytes"] = String(max(prefetchBytes / 2, 1 << 20))
        }
        if configuration.properties["queued.min.messages"] == nil {
            // librdkafka stops fetching for a fixed second (2.0 has no fetch.queue.backoff.ms)
            // once its own queue holds this many records, which its default of 100,000 small
            // records reach within a fraction of a second of a backlog. The prefetch limit above
            // bounds what is fetched ahead; librdkafka's byte limit (queued.max.messages.kbytes)
            // stays as the last resort.
            configuration.properties["queued.min.messages"] = "10000000"
        }
        return configuration
    }
}
