/// A record read by a ``KafkaConsumer``.
public struct KafkaRecord: Sendable, Hashable {
    /// The topic it was read from.
    public var topic: String
    /// Its partition.
    public var partition: Int32
    /// Its offset in the partition. To mark it done, commit `offset + 1`
    /// (see ``KafkaCommitOffset``).
    public var offset: Int64
    /// Its key, if it has one.
    public var key: [UInt8]?
    /// Its value. A record with a null value (a tombstone) reads as empty.
    public var value: [UInt8]
    /// Its headers, in the order they were written.
    public var headers: [KafkaHeader]
    /// When it was created or appended, in milliseconds since 1970, if the broker said.
    public var timestampMilliseconds: Int64?

    /// Creates a record.
    public init(
        topic: String, partition: Int32, offset: Int64, key: [UInt8]?, value: [UInt8],
        headers: [KafkaHeader] = [], timestampMilliseconds: Int64? = nil
    ) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestampMilliseconds = timestampMilliseconds
    }

    /// The partition it was read from.
    public var topicPartition: KafkaTopicPartition { KafkaTopicPartition(topic: topic, partition: partition) }
}
