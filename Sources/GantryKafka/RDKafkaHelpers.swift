import CRdKafka

/// Copies `count` bytes from a C buffer.
@inline(__always)
func kafkaBytes(_ pointer: UnsafeRawPointer?, _ count: Int) -> [UInt8] {
    guard let pointer, count > 0 else { return [] }
    return Array(UnsafeRawBufferPointer(start: pointer, count: count))
}

/// Reads a topic-partition list into Swift values; the list stays owned by the caller.
func kafkaTopicPartitions(_ list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) -> [(KafkaTopicPartition, offset: Int64, error: rd_kafka_resp_err_t)] {
    guard let list else { return [] }
    var result: [(KafkaTopicPartition, offset: Int64, error: rd_kafka_resp_err_t)] = []
    result.reserveCapacity(Int(list.pointee.cnt))
    for index in 0..<Int(list.pointee.cnt) {
        let element = list.pointee.elems[index]
        let topic = String(cString: element.topic)
        result.append((KafkaTopicPartition(topic: topic, partition: element.partition), element.offset, element.err))
    }
    return result
}

/// Builds a topic-partition list; the caller must destroy it with
/// `rd_kafka_topic_partition_list_destroy`.
func makeKafkaTopicPartitionList(_ entries: [(topic: String, partition: Int32, offset: Int64)]) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
    let list = rd_kafka_topic_partition_list_new(Int32(max(entries.count, 1)))!
    for entry in entries {
        // _add copies the topic name, so the Swift string may go away afterwards.
        let element = rd_kafka_topic_partition_list_add(list, entry.topic, entry.partition)!
        element.pointee.offset = entry.offset
    }
    return list
}
