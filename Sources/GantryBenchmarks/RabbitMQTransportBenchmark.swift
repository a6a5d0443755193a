import ArgumentParser
import Foundation
import GantryAMQP
import GantryCore

/// Publish → consume → ack throughput of ``RabbitMQTransport``, beside the same loop written
/// directly on `AMQPClient` (librabbitmq with no transport layer) against the same broker in
/// the same run.
///
/// `amqp-publish` / `amqp-consume` from amqp-tools start one process per message, so they
/// measure process start-up, not the broker; the raw loop here is their honest equivalent:
/// persistent messages published in confirmed batches, then `basic.consume` with the same
/// prefetch and one `basic.ack` per delivery.
struct RabbitMQTransportBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rabbitmq",
        abstract: "RabbitMQ transport publish→consume→ack messages/s for 64 B and 4 KiB payloads, beside a raw librabbitmq loop."
    )

    @Option(help: "AMQP URL of the broker.")
    var url = ProcessInfo.processInfo.environment[AMQPConfiguration.environmentKey] ?? AMQPConfiguration.defaultURL

    @Option(help: "Messages with a 64-byte payload.")
    var smallMessages = 50_000

    @Option(help: "Messages with a 4 KiB payload.")
    var largeMessages = 10_000

    @Option(help: "Messages per confirmed publish batch (one publish call).")
    var batch = 1000

    @Option(help: "Consumer credit (basic.qos prefetch).")
    var credit = 256

    @Option(help: "Measured rounds per payload size; the best round of each side is reported.")
    var rounds = 2

    func run() async throws {
        guard batch >= 1, credit >= 1, credit <= 65_535, rounds >= 1 else {
            throw ValidationError("batch and rounds must be at least 1, credit 1...65535")
        }
        var amqp = try AMQPConfiguration(url: url)
        amqp.connectionName = "gantry-bench"
        for (size, count) in [(64, smallMessages), (4096, largeMessages)] where count > 0 {
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            var raw = Rates.zero
            var gantry = Rates.zero
            // Alternate the two so neither always runs on a warmer (or more loaded) broker.
            for _ in 0..<rounds {
                raw = max(raw, try await rawRound(amqp, payload: payload, count: count))
                gantry = max(gantry, try await gantryRound(amqp, payload: payload, count: count))
            }
            let ratio = gantry.endToEnd / raw.endToEnd
            let report: [String: JSONValue] = [
                "scenario": .string("rabbitmq"),
                "broker": .string(amqp.endpoint),
                "payload_bytes": .int(Int64(size)),
                "messages": .int(Int64(count)),
                "batch": .int(Int64(batch)),
                "credit": .int(Int64(credit)),
                "rounds": .int(Int64(rounds)),
                "gantry_publish_per_s": .int(Int64(gantry.publish)),
                "gantry_consume_ack_per_s": .int(Int64(gantry.consume)),
                "gantry_per_s": .int(Int64(gantry.endToEnd)),
                "raw_publish_per_s": .int(Int64(raw.publish)),
                "raw_consume_ack_per_s": .int(Int64(raw.consume)),
                "raw_per_s": .int(Int64(raw.endToEnd)),
                "ratio": .double((ratio * 1000).rounded() / 1000),
            ]
            print(JSONValue.object(report).jsonString)
            print("""
                rabbitmq \(size) B × \(count): Gantry \(Int(gantry.endToEnd)) msg/s (publish \(Int(gantry.publish))/s, consume+ack \(Int(gantry.consume))/s) \
                | raw librabbitmq \(Int(raw.endToEnd)) msg/s (publish \(Int(raw.publish))/s, consume+ack \(Int(raw.consume))/s) \
                | ratio Gantry/raw \(String(format: "%.2f", ratio)) (target ≥ 0.50)
                """)
        }
    }

    /// Messages per second of one round: each phase, and the whole publish-then-consume run.
    struct Rates: Comparable {
        var publish: Double
        var consume: Double
        var endToEnd: Double

        static let zero = Rates(publish: 0, consume: 0, endToEnd: 0)

        init(publish: Double, consume: Double, endToEnd: Double) {
            self.publish = publish
            self.consume = consume
            self.endToEnd = endToEnd
        }

        init(count: Int, publishing: Duration, consuming: Duration) {
            publish = Double(count) / max(publishing.seconds, 1e-9)
            consume = Double(count) / max(consuming.seconds, 1e-9)
            endToEnd = Double(count) / max((publishing + consuming).seconds, 1e-9)
        }

        static func < (lhs: Rates, rhs: Rates) -> Bool { lhs.endToEnd < rhs.endToEnd }
    }

    /// The transport: `publish` in batches, then `consume` + `ack`, on a queue it declares
    /// (durable, x-max-priority 10, dead-letter route).
    private func gantryRound(_ amqp: AMQPConfiguration, payload: [UInt8], count: Int) async throws -> Rates {
        let queue = "bench-\(UUID().uuidString.prefix(8).lowercased())"
        let configuration = RabbitMQTransportConfiguration(amqp: amqp)
        let transport = try await RabbitMQTransport.connect(configuration)
        do {
            try await transport.declare(queues: [queue])
            let messages = [OutgoingMessage](repeating: OutgoingMessage(body: payload), count: min(batch, count))
            let publishing = try await timed {
                var sent = 0
                while sent < count {
                    let size = min(batch, count - sent)
                    try await transport.publish(size == messages.count ? messages : Array(messages.prefix(size)), to: queue)
                    sent += size
                }
            }
            let consuming = try await timed {
                var received = 0
                for try await delivery in try await transport.consume(queues: [queue], credit: credit) {
                    try await transport.ack(delivery)
                    received += 1
                    if received == count { break }
                }
            }
            await transport.close()
            await deleteQueues([configuration.queuePrefix + queue, configuration.queuePrefix + queue + ".dlq"], amqp)
            return Rates(count: count, publishing: publishing, consuming: consuming)
        } catch {
            await transport.close()
            await deleteQueues([configuration.queuePrefix + queue, configuration.queuePrefix + queue + ".dlq"], amqp)
            throw error
        }
    }

    /// The same loop on `AMQPClient`: confirm mode, persistent messages in batches, then
    /// basic.qos + basic.consume + one basic.ack per delivery, on a queue declared the way the
    /// transport declares its queues, so the difference is the transport layer alone.
    private func rawRound(_ amqp: AMQPConfiguration, payload: [UInt8], count: Int) async throws -> Rates {
        let queue = "gantry-bench-raw-\(UUID().uuidString.prefix(8).lowercased())"
        let client = try await AMQPClient.connect(amqp)
        do {
            try await client.declareQueue(queue, durable: true, arguments: [AMQPQueueArgument.maxPriority: 10])
            try await client.confirmSelect()
            let message = AMQPOutboundMessage(routingKey: queue, body: payload, properties: AMQPProperties(persistent: true))
            let messages = [AMQPOutboundMessage](repeating: message, count: min(batch, count))
            let publishing = try await timed {
                var sent = 0
                while sent < count {
                    let size = min(batch, count - sent)
                    try await client.publish(size == messages.count ? messages : Array(messages.prefix(size)))
                    sent += size
                }
            }
            let consuming = try await timed {
                try await client.qos(prefetchCount: UInt16(credit))
                let consumer = try await client.consume(queue: queue)
                var received = 0
                for try await delivery in consumer {
                    try await client.ack(deliveryTag: delivery.deliveryTag)
                    received += 1
                    if received == count { break }
                }
                try await consumer.cancel()
            }
            try await client.deleteQueue(queue)
            await client.close()
            return Rates(count: count, publishing: publishing, consuming: consuming)
        } catch {
            _ = try? await client.deleteQueue(queue)
            await client.close()
            throw error
        }
    }

    private func deleteQueues(_ queues: [String], _ amqp: AMQPConfiguration) async {
        guard let client = try? await AMQPClient.connect(amqp) else { return }
        for queue in queues { _ = try? await client.deleteQueue(queue) }
        await client.close()
    }

    private func timed(_ body: () async throws -> Void) async throws -> Duration {
        let clock = ContinuousClock()
        let start = clock.now
        try await body()
        return clock.now - start
    }
}

