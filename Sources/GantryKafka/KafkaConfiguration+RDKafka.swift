import CRdKafka
import Foundation
import GantryCore

extension KafkaConfiguration {
    /// Builds an `rd_kafka_conf_t` from Gantry's defaults, then the user's ``properties``,
    /// then the keys Gantry's guarantees depend on.
    ///
    /// The caller owns the returned conf: it must pass it to `rd_kafka_new` (which takes it
    /// over only on success) or destroy it.
    ///
    /// - Parameters:
    ///   - defaults: values the user's ``properties`` may override.
    ///   - enforced: values the user may not change; setting one of these keys to another
    ///     value is a configuration error rather than a silent override.
    func makeRDKafkaConf(defaults: [String: String], enforced: [String: String]) throws -> OpaquePointer {
        for (key, value) in enforced {
            if let userValue = properties[key], userValue != value {
                throw GantryError(
                    .configuration,
                    "Kafka property '\(key)' is set to '\(value)' by Gantry, which depends on it; remove it from the Kafka properties"
                )
            }
        }
        guard let conf = rd_kafka_conf_new() else {
            throw GantryError(.configuration, "librdkafka could not allocate a configuration (out of memory)")
        }
        do {
            if bootstrapServers.isEmpty {
                throw GantryError(.configuration, "no Kafka bootstrap servers configured; set GANTRY_KAFKA_BROKERS to host:port[,host:port]")
            }
            try Self.set(conf, "bootstrap.servers", bootstrapServers.joined(separator: ","))
            try Self.set(conf, "client.id", clientID)
            // Sorted so that the first bad key reported is the same on every run.
            for (key, value) in defaults.sorted(by: { $0.key < $1.key }) where properties[key] == nil {
                try Self.set(conf, key, value)
            }
            for (key, value) in properties.sorted(by: { $0.key < $1.key }) {
                try Self.set(conf, key, value)
            }
            for (key, value) in enforced.sorted(by: { $0.key < $1.key }) {
                try Self.set(conf, key, value)
            }
        } catch {
            rd_kafka_conf_destroy(conf)
            throw error
        }
        return conf
    }

    /// Sets one property, turning librdkafka's refusal into an error that names the key.
    static func set(_ conf: OpaquePointer, _ key: String, _ value: String) throws {
        var errstr = [CChar](repeating: 0, count: 512)
        let result = rd_kafka_conf_set(conf, key, value, &errstr, errstr.count)
        guard result != RD_KAFKA_CONF_OK else { return }
        let reason = String(decoding: errstr.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        switch result {
        case RD_KAFKA_CONF_UNKNOWN:
            throw GantryError(
                .configuration,
                "unknown Kafka property '\(key)': \(reason); check the key against librdkafka's CONFIGURATION.md"
            )
        default:
            // librdkafka quotes the value; it may be a password, so it is cut out.
            let safeReason = value.isEmpty ? reason : reason.replacingOccurrences(of: value, with: "…")
            throw GantryError(.configuration, "invalid value for Kafka property '\(key)': \(safeReason)")
        }
    }
}
