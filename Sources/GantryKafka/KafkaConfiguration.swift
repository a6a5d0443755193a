import CRdKafka
import Foundation

/// Where the Kafka cluster is and how to talk to it, shared by ``KafkaProducer`` and
/// ``KafkaConsumer``.
///
/// Every key of ``properties`` is passed to librdkafka unchanged, so anything librdkafka
/// supports (TLS, SASL, timeouts, buffer sizes) is set here without Gantry knowing about
/// it; see librdkafka's `CONFIGURATION.md` for the full list. A key librdkafka does not
/// know, or a value it rejects, fails the producer's or consumer's `init` with a
/// ``GantryError`` of code `configuration` that names the key.
///
/// Keys that Gantry's delivery guarantees depend on are set by Gantry and may not be
/// overridden: `enable.idempotence` (always `true` for the producer) and
/// `enable.auto.commit` (always `false` for the consumer).
///
/// From the environment (``init(environment:)``):
/// - `GANTRY_KAFKA_BROKERS`: comma-separated `host:port` list (default `127.0.0.1:9092`);
/// - `GANTRY_KAFKA_CLIENT_ID`: the client id shown in broker logs (default `gantry`);
/// - `GANTRY_KAFKA_CONF_<KEY>`: any librdkafka property, the key upper-cased with dots as
///   underscores, e.g. `GANTRY_KAFKA_CONF_SECURITY_PROTOCOL=ssl` sets `security.protocol`.
public struct KafkaConfiguration: Sendable, Equatable {
    /// The brokers to bootstrap from, each `host:port`. Default `["127.0.0.1:9092"]`.
    public var bootstrapServers: [String]
    /// The client id the brokers see. Default `"gantry"`.
    public var clientID: String
    /// librdkafka properties passed through unchanged (for example `security.protocol`,
    /// `ssl.ca.location`, `sasl.mechanisms`, `sasl.username`, `sasl.password`).
    /// Default empty.
    public var properties: [String: String]

    /// The bootstrap address used when nothing else is configured: the dev broker's.
    public static let defaultBootstrapServers = ["127.0.0.1:9092"]

    /// Creates a configuration.
    public init(
        bootstrapServers: [String] = KafkaConfiguration.defaultBootstrapServers,
        clientID: String = "gantry",
        properties: [String: String] = [:]
    ) {
        self.bootstrapServers = bootstrapServers
        self.clientID = clientID
        self.properties = properties
    }

    /// Creates a configuration from environment variables (see the type's documentation
    /// for the keys); anything not set keeps its default.
    public init(environment: [String: String]) {
        self.init()
        if let brokers = environment["GANTRY_KAFKA_BROKERS"] {
            let list = Self.splitServers(brokers)
            if !list.isEmpty { bootstrapServers = list }
        }
        if let clientID = environment["GANTRY_KAFKA_CLIENT_ID"], !clientID.isEmpty {
            self.clientID = clientID
        }
        let prefix = "GANTRY_KAFKA_CONF_"
        for (name, value) in environment where name.hasPrefix(prefix) && name.count > prefix.count {
            // librdkafka keys are lower-case words joined by dots and never contain an
            // underscore, so the mapping back from an environment name is unambiguous.
            let key = name.dropFirst(prefix.count).lowercased().replacingOccurrences(of: "_", with: ".")
            properties[key] = value
        }
    }

    /// Splits a `host:port,host:port` list, dropping blanks.
    static func splitServers(_ list: String) -> [String] {
        list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// Checks every property against librdkafka without connecting, so a command line tool
    /// can report a bad key before it starts anything.
    ///
    /// - Throws: ``GantryError`` with code `configuration` naming the first bad key.
    public func validate() throws {
        let conf = try makeRDKafkaConf(defaults: [:], enforced: [:])
        rd_kafka_conf_destroy(conf)
    }
}
