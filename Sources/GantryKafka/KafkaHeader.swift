/// One Kafka record header: a name and an optional byte value.
public struct KafkaHeader: Sendable, Hashable {
    /// The header's name. Kafka allows the same name more than once in one record.
    public var key: String
    /// The header's value; `nil` is a header present without a value.
    public var value: [UInt8]?

    /// Creates a header from bytes.
    public init(key: String, value: [UInt8]?) {
        self.key = key
        self.value = value
    }

    /// Creates a header whose value is the UTF-8 bytes of `value`.
    public init(key: String, value: String) {
        self.init(key: key, value: Array(value.utf8))
    }
}
