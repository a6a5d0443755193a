/// A record to produce.
public struct KafkaOutgoingMessage: Sendable, Hashable {
    /// The topic to write to. A topic that does not exist yet is created by brokers that
    /// allow automatic topic creation (the dev broker does).
    public var topic: String
    /// The record key. Records with the same key go to the same partition, in order; a
    /// record without a key goes to a partition chosen at random.
    public var key: [UInt8]?
    /// The record value.
    public var value: [UInt8]
    /// The record headers.
    public var headers: [KafkaHeader]

    /// Creates a message.
    public init(topic: String, key: [UInt8]? = nil, value: [UInt8], headers: [KafkaHeader] = []) {
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
    }
}
