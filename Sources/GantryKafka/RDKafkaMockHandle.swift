import CRdKafka
import GantryCore
import Synchronization

/// The throwaway `rd_kafka_t` a mock cluster needs, and the cluster.
///
/// The mock's functions hand work to the mock's own thread and wait for it, so they are
/// safe from any thread; the Mutex only guards against use after ``destroy()``. That is why
/// `@unchecked Sendable` is honest.
final class RDKafkaMockHandle: @unchecked Sendable {
    private let handle: OpaquePointer
    private let cluster: OpaquePointer
    let bootstraps: String
    private let defaultPartitions: Int
    private let state = Mutex(MockState())

    private struct MockState {
        var destroyed = false
        /// Topics known to exist, so that each Metadata request does not cost a round trip to
        /// the mock's thread.
        var known: Set<String> = []
    }

    init(brokers: Int, defaultPartitions: Int) throws {
        guard let conf = rd_kafka_conf_new() else {
            throw GantryError(.configuration, "librdkafka could not allocate a configuration")
        }
        // The handle never connects anywhere; silence its notice that it has no brokers.
        try KafkaConfiguration.set(conf, "log_level", "4")
        var errstr = [CChar](repeating: 0, count: 512)
        // rd_kafka_new takes ownership of conf only when it succeeds.
        guard let handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errstr, errstr.count) else {
            rd_kafka_conf_destroy(conf)
            let reason = String(decoding: errstr.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw GantryError(.configuration, "could not create the handle for the Kafka mock cluster: \(reason)")
        }
        guard let cluster = rd_kafka_mock_cluster_new(handle, Int32(brokers)) else {
            rd_kafka_destroy(handle)
            throw GantryError(.configuration, "librdkafka could not start a mock cluster of \(brokers) brokers (see its log above)")
        }
        self.handle = handle
        self.cluster = cluster
        self.bootstraps = String(cString: rd_kafka_mock_cluster_bootstraps(cluster))
        self.defaultPartitions = defaultPartitions
    }

    func createTopic(_ name: String, partitions: Int) throws {
        guard KafkaWire.isValidTopicName(name) else {
            throw GantryError(.invalidArgument, "'\(name)' is not a valid Kafka topic name: use 1-249 of the characters a-z A-Z 0-9 . _ -")
        }
        guard partitions >= 1 else {
            throw GantryError(.invalidArgument, "topic '\(name)' needs at least one partition, not \(partitions)")
        }
        let error: rd_kafka_resp_err_t? = state.withLock { state in
            guard !state.destroyed else { return nil }
            // Under the lock so that destroy() cannot free the cluster during the call.
            let error = rd_kafka_mock_topic_create(cluster, name, Int32(partitions), 1)
            if error == RD_KAFKA_RESP_ERR_NO_ERROR || error == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS {
                state.known.insert(name)
            }
            return error
        }
        guard let error else {
            throw GantryError(.closed, "the Kafka mock cluster is shut down; topic '\(name)' was not created")
        }
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR || error == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS else {
            throw GantryError(kafka: error, "creating topic '\(name)' on the Kafka mock cluster")
        }
    }

    /// Creates the topics not known yet with the default partition count; called by the
    /// relay before it forwards a Metadata request, which would otherwise make the mock
    /// auto-create them with 4 partitions.
    func ensureTopics(_ topics: [String]) {
        let unknown = state.withLock { state in topics.filter { !state.known.contains($0) } }
        for topic in unknown {
            try? createTopic(topic, partitions: defaultPartitions)
        }
    }

    func destroy() {
        let first: Bool = state.withLock { state in
            defer { state.destroyed = true }
            return !state.destroyed
        }
        guard first else { return }
        // The cluster must go before the handle it was created on.
        rd_kafka_mock_cluster_destroy(cluster)
        rd_kafka_destroy(handle)
    }

    deinit {
        destroy()
    }
}
