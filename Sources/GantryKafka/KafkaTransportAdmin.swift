import CRdKafka
import Foundation
import GantryCore
import Logging
import Synchronization

/// The blocking librdkafka queries a ``KafkaTransport`` needs now and then (topic metadata,
/// watermarks, the group's committed offsets), each run on a dedicated thread so none blocks
/// the cooperative pool.
///
/// It owns one consumer-type handle with the transport's group id, created on first use; it
/// never subscribes, so it never joins the group; it only reads the group's offsets.
final class KafkaTransportAdmin: Sendable {
    private struct State {
        var client: RDKafkaClient?
        var running = 0
        var closed = false
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let configuration: KafkaConfiguration
    private let groupID: String
    private let logger: Logger
    private let state = Mutex(State())

    init(configuration: KafkaConfiguration, groupID: String, logger: Logger) {
        self.configuration = configuration
        self.groupID = groupID
        self.logger = logger
    }

    deinit {
        // rd_kafka_destroy blocks while librdkafka's threads stop: not on whatever thread
        // released the last reference.
        if let client = state.withLock({ $0.client }) {
            KafkaThread.start(name: "gantry-kadmin") { client.destroy() }
        }
    }

    // MARK: Queries

    /// Makes sure every topic exists, asking for its metadata until it has partitions.
    ///
    /// On the dev broker a Metadata request naming a topic creates it; a real broker creates
    /// it only with `auto.create.topics.enable=true` (the handle asks for that with
    /// `allow.auto.create.topics`).
    ///
    /// - Throws: ``GantryError`` with code `notFound` naming a topic that still does not exist
    ///   after `timeout`.
    func ensureTopics(_ topics: [String], timeout: Duration) async throws {
        guard !topics.isEmpty else { return }
        try await run { handle in
            let deadline = ContinuousClock.now + timeout
            for topic in topics {
                var lastError = RD_KAFKA_RESP_ERR_NO_ERROR
                while true {
                    let (error, partitions) = Self.partitions(of: topic, handle: handle, timeout: deadline - .now)
                    if error == RD_KAFKA_RESP_ERR_NO_ERROR, !partitions.isEmpty { break }
                    lastError = error
                    guard ContinuousClock.now < deadline else {
                        let reason = String(cString: rd_kafka_err2str(lastError))
                        throw GantryError(
                            .notFound,
                            "Kafka topic '\(topic)' does not exist and the brokers did not create it within \(timeout) (\(reason)); create it (kafka-topics.sh --create --topic \(topic)) or set auto.create.topics.enable=true on the brokers"
                        )
                    }
                    // A broker that is creating the topic answers LEADER_NOT_AVAILABLE for a
                    // moment; this is a dedicated thread, so waiting here blocks nothing else.
                    Thread.sleep(forTimeInterval: 0.1)
                }
            }
        }
    }

    /// The records of `topic` the group has not committed yet: per partition, the high
    /// watermark minus the committed offset (or minus the start the group would read from
    /// when it has not committed).
    func lag(topic: String, fromEarliest: Bool, timeout: Duration) async throws -> Int {
        try await run { handle in
            let deadline = ContinuousClock.now + timeout
            let (error, partitions) = Self.partitions(of: topic, handle: handle, timeout: timeout)
            if error == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || error == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC { return 0 }
            guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
                throw GantryError(kafka: error, "reading the partitions of Kafka topic '\(topic)'")
            }
            let list = makeKafkaTopicPartitionList(partitions.map { (topic, $0, Int64(RD_KAFKA_OFFSET_INVALID)) })
            defer { rd_kafka_topic_partition_list_destroy(list) }
            // Fills each element's offset with the group's committed offset, or
            // RD_KAFKA_OFFSET_INVALID when it has none.
            let committedError = rd_kafka_committed(handle, list, Self.milliseconds(deadline - .now))
            guard committedError == RD_KAFKA_RESP_ERR_NO_ERROR else {
                throw GantryError(kafka: committedError, "reading the committed offsets of group '\(self.groupID)' for Kafka topic '\(topic)'")
            }
            var total: Int64 = 0
            for (element, committed, _) in kafkaTopicPartitions(list) {
                var low: Int64 = 0
                var high: Int64 = 0
                let watermarkError = rd_kafka_query_watermark_offsets(handle, topic, element.partition, &low, &high, Self.milliseconds(deadline - .now))
                guard watermarkError == RD_KAFKA_RESP_ERR_NO_ERROR else {
                    throw GantryError(kafka: watermarkError, "reading the offsets of Kafka partition \(element)")
                }
                let start = committed >= 0 ? max(committed, low) : (fromEarliest ? low : high)
                total += max(0, high - start)
            }
            return Int(total)
        }
    }

    /// The partition ids of `topic`, or the error the metadata gave for it.
    private static func partitions(of topic: String, handle: OpaquePointer, timeout: Duration) -> (rd_kafka_resp_err_t, [Int32]) {
        // A topic handle makes rd_kafka_metadata ask about this topic only (which is also what
        // makes the dev broker create it).
        guard let topicHandle = rd_kafka_topic_new(handle, topic, nil) else {
            return (rd_kafka_last_error(), [])
        }
        defer { rd_kafka_topic_destroy(topicHandle) }
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let error = rd_kafka_metadata(handle, 0, topicHandle, &metadata, milliseconds(timeout))
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else { return (error, []) }
        // The metadata is owned by the caller and freed with rd_kafka_metadata_destroy.
        defer { rd_kafka_metadata_destroy(metadata) }
        for index in 0..<Int(metadata.pointee.topic_cnt) {
            let entry = metadata.pointee.topics[index]
            guard String(cString: entry.topic) == topic else { continue }
            guard entry.err == RD_KAFKA_RESP_ERR_NO_ERROR else { return (entry.err, []) }
            return (RD_KAFKA_RESP_ERR_NO_ERROR, (0..<Int(entry.partition_cnt)).map { entry.partitions[$0].id })
        }
        return (RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, [])
    }

    private static func milliseconds(_ duration: Duration) -> Int32 {
        let (seconds, attoseconds) = duration.components
        let total = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        return Int32(clamping: max(1, total))
    }

    // MARK: Threads and lifetime

    /// Runs `body` with the handle on a new thread and returns its result.
    private func run<T: Sendable>(_ body: @escaping @Sendable (OpaquePointer) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            KafkaThread.start(name: "gantry-kadmin") {
                let result: Result<T, any Error>
                do {
                    let client = try self.acquire()
                    result = Result { try body(client.handle) }
                    self.drainEvents(client)
                    self.release()
                } catch {
                    result = .failure(error)
                }
                continuation.resume(with: result)
            }
        }
    }

    /// The handle, created on first use; counts the caller as running so that ``close()``
    /// waits for it.
    private func acquire() throws -> RDKafkaClient {
        try state.withLock { state in
            guard !state.closed else { throw GantryError(.closed, "the Kafka transport is closed") }
            if state.client == nil {
                let conf = try configuration.makeRDKafkaConf(
                    defaults: ["allow.auto.create.topics": "true"],
                    enforced: ["group.id": groupID, "enable.auto.commit": "false", "log.queue": "true"]
                )
                state.client = try RDKafkaClient(
                    type: RD_KAFKA_CONSUMER, conf: conf, events: Int32(RD_KAFKA_EVENT_ERROR | RD_KAFKA_EVENT_LOG), consumer: true)
            }
            state.running += 1
            return state.client!
        }
    }

    private func release() {
        let destroy: (RDKafkaClient, [CheckedContinuation<Void, Never>])? = state.withLock { state in
            state.running -= 1
            guard state.closed, state.running == 0, let client = state.client else { return nil }
            state.client = nil
            defer { state.closeWaiters = [] }
            return (client, state.closeWaiters)
        }
        if let (client, waiters) = destroy {
            client.destroy()
            for waiter in waiters { waiter.resume() }
        }
    }

    /// Serves the logs and errors that piled up on the handle's queue; nothing else polls it.
    private func drainEvents(_ client: RDKafkaClient) {
        while let event = rd_kafka_queue_poll(client.queue, 0) {
            switch rd_kafka_event_type(event) {
            case RD_KAFKA_EVENT_LOG:
                RDKafkaClient.forwardLog(event, to: logger)
            case RD_KAFKA_EVENT_ERROR:
                logger.debug("Kafka transport admin: \(String(cString: rd_kafka_event_error_string(event)))")
            default:
                break
            }
            rd_kafka_event_destroy(event)
        }
    }

    /// Releases the handle once no query runs. Calling it again does nothing.
    func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let destroy: RDKafkaClient?? = state.withLock { state in
                state.closed = true
                guard let client = state.client else { return .some(nil) }
                if state.running > 0 {
                    state.closeWaiters.append(continuation)
                    return nil
                }
                state.client = nil
                return .some(client)
            }
            switch destroy {
            case .none:
                break
            case .some(.none):
                continuation.resume()
            case .some(.some(let client)):
                KafkaThread.start(name: "gantry-kadmin") {
                    client.destroy()
                    continuation.resume()
                }
            }
        }
    }
}
