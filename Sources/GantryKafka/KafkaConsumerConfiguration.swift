/// Where a consumer group starts reading a partition it has no committed offset for.
public enum KafkaOffsetReset: String, Sendable, Hashable {
    /// From the oldest record the broker still has.
    case earliest
    /// Only records written after the consumer joined.
    case latest
}

/// How a ``KafkaConsumer`` joins its group and buffers records.
///
/// Connection settings (brokers, TLS, SASL, any librdkafka property) live in
/// ``KafkaConfiguration``; these are the group-level choices, each with its default.
public struct KafkaConsumerConfiguration: Sendable, Hashable {
    /// The consumer group. Consumers of one group share the partitions of the topics they
    /// subscribe to, and offsets are committed per group. Required.
    public var groupID: String
    /// Where to start in a partition the group never committed an offset for. Default
    /// ``KafkaOffsetReset/earliest``, so that records written before the group first
    /// joined (tasks submitted before any worker ran) are processed, not skipped.
    public var autoOffsetReset: KafkaOffsetReset
    /// The largest number of records in one ``KafkaConsumerEvent/records(_:)`` batch.
    /// Default 500.
    public var maxBatchSize: Int
    /// How many received records may wait in the consumer's buffer for the application to
    /// take them. Above this the consumer pauses fetching (it stays in its group) and
    /// resumes once the buffer is half empty. Default 10,000.
    public var bufferCapacity: Int
    /// How long a revocation waits for ``KafkaPartitionRevocation/finish()`` (the
    /// application committing or handing back the revoked partitions' records) before the
    /// partitions are given up anyway. Zero gives them up at once. Default 10 seconds.
    public var revocationGracePeriod: Duration

    /// Creates a consumer configuration.
    public init(
        groupID: String,
        autoOffsetReset: KafkaOffsetReset = .earliest,
        maxBatchSize: Int = 500,
        bufferCapacity: Int = 10_000,
        revocationGracePeriod: Duration = .seconds(10)
    ) {
        self.groupID = groupID
        self.autoOffsetReset = autoOffsetReset
        self.maxBatchSize = maxBatchSize
        self.bufferCapacity = bufferCapacity
        self.revocationGracePeriod = revocationGracePeriod
    }
}
