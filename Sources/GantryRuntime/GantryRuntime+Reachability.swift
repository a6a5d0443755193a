import GantryAMQP
import GantryCore
import GantryKafka
import Logging

extension GantryRuntime {
    /// Checks that the broker `broker.kind` names answers within `timeout`, so a command that
    /// needs it fails at once with one error naming the address and the setting to change,
    /// instead of retrying in the background until its reconnect deadline.
    ///
    /// RabbitMQ: a real AMQP connection (so a wrong password or vhost is caught too). Kafka: a
    /// TCP connection to the bootstrap servers; one that answers is enough. Memory: nothing to check.
    public static func checkBrokerReachable(settings: GantrySettings, timeout: Duration = .seconds(5)) async throws {
        switch try settings.string("broker.kind") {
        case "rabbitmq":
            let url = try settings.string("broker.rabbitmq_url")
            var amqp: AMQPConfiguration
            do {
                amqp = try AMQPConfiguration(url: url)
            } catch {
                throw GantryError(.configuration, "setting 'broker.rabbitmq_url' (from \(settings.source(of: "broker.rabbitmq_url"))): \(error.message)")
            }
            amqp.connectTimeout = timeout
            amqp.connectionName = "gantry-cli-check"
            do {
                let client = try await AMQPClient.connect(amqp, logger: Logger(label: "gantry.check"))
                await client.close()
            } catch let error as GantryError {
                throw GantryError(
                    .connectionFailed,
                    "\(error.message) (the address comes from setting 'broker.rabbitmq_url', set by \(settings.source(of: "broker.rabbitmq_url")))",
                    underlying: error
                )
            }
        case "kafka":
            let servers = try settings.strings("broker.kafka_brokers")
            var reasons: [String] = []
            for server in servers {
                let (host, port) = TCPProbe.split(server, defaultPort: 9092)
                guard let reason = await TCPProbe.connect(host: host, port: port, timeout: timeout) else { return }
                reasons.append("\(host):\(port): \(reason)")
            }
            throw GantryError(
                .connectionFailed,
                "cannot reach Kafka at \(reasons.joined(separator: "; ")) (the address comes from setting 'broker.kafka_brokers', set by \(settings.source(of: "broker.kafka_brokers")); start the broker with `ops/stack up` or change the setting)"
            )
        default:
            return
        }
    }
}
