import CRdKafka

/// Copies `count` bytes from a C buffer.
@inline(__always)
func kafkaBytes(_ pointer: UnsafeRawPointer?, _ count: Int) -> [UInt8] {
    guard let pointer, count > 0 else { return [] }
    return Array(UnsafeRawBufferPointer(start: pointer, count: count))
}

/// Calls `body` with the name, value (nil for a null value) and value size of each header of
/// `message`, in order. The pointers belong to the message and are valid only inside `body`.
@inline(__always)
func forEachKafkaHeader(
    of message: UnsafePointer<rd_kafka_message_t>, count reserve: (Int) -> Void = { _ in },
    _ body: (UnsafePointer<CChar>, UnsafeRawPointer?, Int) -> Void
) {
    var headers: OpaquePointer?
    guard rd_kafka_message_headers(message, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR, let headers else { return }
    let count = rd_kafka_header_cnt(headers)
    reserve(count)
    for index in 0..<count {
        var name: UnsafePointer<CChar>?
        var value: UnsafeRawPointer?
        var size = 0
        guard rd_kafka_header_get_all(headers, index, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR, let name else { continue }
        body(name, value, size)
    }
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
