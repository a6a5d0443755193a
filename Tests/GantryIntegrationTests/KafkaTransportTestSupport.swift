import Foundation
import GantryCore
import GantryKafka

/// Kafka transports for tests, against the dev broker at `GANTRY_KAFKA_BROKERS` (start it with
/// `ops/stack up kafka`): each on its own consumer group, with short session timeouts so that
/// a consumer a test failed to close gives its partitions back soon.
enum KafkaConformanceTransport {
    /// The transport configuration the tests use, for `group` (default: a new UUID-named one).
    static func configuration(group: String = KafkaTestEnvironment.group("transport")) -> KafkaTransportConfiguration {
        var configuration = KafkaTransportConfiguration(kafka: KafkaTestEnvironment.configuration, groupID: group)
        // A missing broker fails a test in 20 s rather than librdkafka's default five minutes.
        configuration.producerProperties["message.timeout.ms"] = "20000"
        configuration.consumerProperties["session.timeout.ms"] = "6000"
        configuration.consumerProperties["heartbeat.interval.ms"] = "500"
        configuration.revocationGracePeriod = .seconds(5)
        return configuration
    }

    /// A transport on a consumer group no other test uses.
    static func transport(group: String = KafkaTestEnvironment.group("transport")) throws -> KafkaTransport {
        try KafkaTransport(configuration: configuration(group: group))
    }

    /// For `TransportKind.make()`.
    static func make() async throws -> any TaskTransport {
        try transport(group: KafkaTestEnvironment.group("conformance"))
    }
}
