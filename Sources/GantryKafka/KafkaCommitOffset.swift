/// An offset to commit for one partition of a consumer group.
///
/// Kafka's committed offset is the offset of the **next record to read**, not of the last
/// record processed: after processing the record at offset 41, commit 42. A consumer of the
/// same group that starts later (or takes the partition over in a rebalance) begins at the
/// committed offset, so committing 42 means 41 and everything before it is never delivered
/// to the group again, and committing 41 means the record at 41 will be.
public struct KafkaCommitOffset: Sendable, Hashable, CustomStringConvertible {
    /// The topic's name.
    public var topic: String
    /// The partition number.
    public var partition: Int32
    /// The next offset to read: one past the last processed record.
    public var offset: Int64

    /// Creates an offset to commit; `offset` is the next offset to read.
    public init(topic: String, partition: Int32, offset: Int64) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
    }

    /// The offset that marks `record` and everything before it in its partition as done.
    public init(after record: KafkaRecord) {
        self.init(topic: record.topic, partition: record.partition, offset: record.offset + 1)
    }

    /// `topic[partition]@offset`, for logs and errors.
    public var description: String { "\(topic)[\(partition)]@\(offset)" }
}
