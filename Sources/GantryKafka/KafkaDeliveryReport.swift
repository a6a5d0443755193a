/// Where the broker stored a produced record, known once the broker acknowledged it.
public struct KafkaDeliveryReport: Sendable, Hashable, CustomStringConvertible {
    /// The topic written to.
    public var topic: String
    /// The partition the record went to.
    public var partition: Int32
    /// The record's offset in that partition.
    public var offset: Int64

    /// Creates a delivery report.
    public init(topic: String, partition: Int32, offset: Int64) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
    }

    /// `topic[partition]@offset`, for logs and errors.
    public var description: String { "\(topic)[\(partition)]@\(offset)" }
}
