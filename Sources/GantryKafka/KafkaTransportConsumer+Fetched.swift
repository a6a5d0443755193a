import CRdKafka
import GantryCore
import Synchronization

extension KafkaTransportConsumer {
    /// Consecutive fetched records of one partition, in offset order, as the fetching thread
    /// queues them: its work under the consumer's lock is per run, not per record.
    ///
    /// Each delivery already carries its offset and partition in its token; the consumer part
    /// of the token (which assignment it was fetched under) is set when it is handed out.
    struct FetchedRun: Sendable {
        var partition: KafkaTopicPartition
        /// nil once handed out (moved out, so that taking a record copies nothing).
        var deliveries: [Delivery?] = []
        /// The sum of the records' ``size(of:)``.
        var bytes = 0

        init(partition: KafkaTopicPartition) {
            self.partition = partition
        }

        /// Adds a delivery, moved in rather than copied.
        mutating func append(_ delivery: consuming Delivery) {
            bytes += FetchedRun.size(of: delivery)
            deliveries.append(consume delivery)
        }

        /// What a ready record counts against the prefetch limit: its key and value, plus a
        /// rough cost of the delivery around them and its queue entry, so that many tiny
        /// records still bound memory.
        static func size(of delivery: Delivery) -> Int {
            delivery.body.count + (delivery.key?.utf8.count ?? 0) + 128
        }
    }

    /// The runs of the batch being fetched, built on the wire consumer's polling thread
    /// straight from librdkafka's messages.
    struct FetchedBatch {
        /// Topic → queue name, for ``Delivery/queue``.
        let queueOfTopic: [String: String]
        private(set) var runs: [FetchedRun] = []
        /// The partition of the last run, and the queue of its topic.
        private var current: (partition: KafkaTopicPartition, queue: String)?

        init(queueOfTopic: [String: String]) {
            self.queueOfTopic = queueOfTopic
        }

        /// Adds a fetched record (a message without error) to the run of its partition.
        mutating func add(_ message: UnsafePointer<rd_kafka_message_t>, topic: String) {
            let partition = message.pointee.partition
            if current?.partition.partition != partition || current?.partition.topic != topic {
                let topicPartition = KafkaTopicPartition(topic: topic, partition: partition)
                let queue = current?.partition.topic == topic ? current!.queue : (queueOfTopic[topic] ?? topic)
                current = (topicPartition, queue)
                runs.append(FetchedRun(partition: topicPartition))
            }
            runs[runs.count - 1].append(FetchedBatch.delivery(from: message, queue: current!.queue))
        }

        /// The runs gathered so far; the batch starts empty again.
        mutating func take() -> [FetchedRun] {
            defer {
                runs = []
                current = nil
            }
            return runs
        }

        /// The delivery of a fetched record. Its token has the record's partition and offset,
        /// and gets its consumer part when handed out.
        static func delivery(from message: UnsafePointer<rd_kafka_message_t>, queue: String) -> Delivery {
            let record = message.pointee
            var headers: [String: String] = [:]
            var redelivered = false
            forEachKafkaHeader(of: message) { name, value, size in
                let key = String(cString: name)
                if key == KafkaTransport.redeliveredHeader {
                    redelivered = true
                    return
                }
                // Kafka allows a name twice; the last one wins, as in an AMQP table.
                headers[key] = value.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: size), as: UTF8.self) } ?? ""
            }
            return Delivery(
                body: kafkaBytes(record.payload, record.len), queue: queue,
                key: record.key.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: record.key_len), as: UTF8.self) },
                headers: headers, redelivered: redelivered,
                token: DeliveryToken(consumer: 0, sequence: UInt64(bitPattern: record.offset), partition: record.partition))
        }
    }
}
