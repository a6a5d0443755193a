/// A partition of a topic.
public struct KafkaTopicPartition: Sendable, Hashable, CustomStringConvertible {
    /// The topic's name.
    public var topic: String
    /// The partition number, from 0.
    public var partition: Int32

    /// Creates a topic-partition.
    public init(topic: String, partition: Int32) {
        self.topic = topic
        self.partition = partition
    }

    /// `topic[partition]`, for logs and errors.
    public var description: String { "\(topic)[\(partition)]" }
}

extension Sequence<KafkaTopicPartition> {
    /// `topic[0,1,2] other[3]`: partitions grouped by topic, for logs.
    var compactDescription: String {
        var byTopic: [String: [Int32]] = [:]
        for item in self { byTopic[item.topic, default: []].append(item.partition) }
        return byTopic.keys.sorted().map { topic in
            "\(topic)[\(byTopic[topic]!.sorted().map(String.init).joined(separator: ","))]"
        }.joined(separator: " ")
    }
}
