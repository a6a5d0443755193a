import ArgumentParser
import Foundation
import GantryAMQP
import GantryCore
import GantryKafka
import GantryRedis
import GantryStore
import Histogram
import Logging

/// Submit → result latency of single tasks, one at a time on an idle cluster, beside the raw
/// round trip the same path cannot beat: publish one message, consume it, one Redis SET and
/// GET, measured in the same run.
struct LatencyBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "latency",
        abstract: "Sequential single no-op tasks on an idle cluster: p50/p90/p99/max submit → result, beside a raw broker + Redis round trip.",
        discussion: """
            A sample is one `gantry run noop` submission (the store creates the run, the dispatcher \
            publishes it and waits for the broker's confirm) until the run's event stream records \
            its end, which the commit script writes atomically with the result. The raw round \
            trip is one confirmed publish (librabbitmq / librdkafka directly), its delivery to a \
            consumer and ack, then one SET and one GET on the same Redis. Both are HdrHistograms \
            (3 significant digits). Target: p99 ≤ 0.6 ms over RabbitMQ.
            """
    )

    @OptionGroup var cluster: ClusterOptions

    @Option(help: "Samples of each kind.")
    var samples = 2000

    @Option(help: "Samples run first and not recorded.")
    var warmup = 200

    func run() async throws {
        let bench = try await cluster.startCluster(workers: 1)
        do {
            let plan = try BenchCluster.singleTaskPlan("noop")
            var gantry = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
            // Until `submit` returned: the run created and its root's publish confirmed.
            var submitted = gantry
            let clock = ContinuousClock()
            for index in 0..<(warmup + samples) {
                let start = clock.now
                let created = try await bench.runtime.dispatcher.submit(plan, input: [])
                let submitElapsed = clock.now - start
                let state = try await bench.waitForEnd(created.runID, timeout: .seconds(30))
                let elapsed = clock.now - start
                guard state == .succeeded else { throw GantryError(.taskFailed, "latency sample run \(created.runID) ended \(state)") }
                if index >= warmup {
                    _ = gantry.record(UInt64(elapsed.nanoseconds))
                    _ = submitted.record(UInt64(submitElapsed.nanoseconds))
                }
            }
            let raw = try await rawRoundTrips(bench)
            var report = BenchReport(scenario: "latency")
            report.conditions = report.conditions.merging(cluster.conditions(workers: 1, n: samples)) { $1 }
            report.conditions["task"] = .string("noop")
            for (name, histogram) in [("", gantry), ("submit_", submitted), ("raw_", raw)] {
                report.figure("\(name)p50_ms", Self.ms(histogram.valueAtPercentile(50)), headline: name.isEmpty)
                report.figure("\(name)p90_ms", Self.ms(histogram.valueAtPercentile(90)))
                report.figure("\(name)p99_ms", Self.ms(histogram.valueAtPercentile(99)), headline: true)
                report.figure("\(name)max_ms", Self.ms(histogram.max))
                report.figure("\(name)mean_ms", histogram.mean / 1e6)
            }
            report.figure("p99_over_raw_p99", Double(gantry.valueAtPercentile(99)) / Double(max(1, raw.valueAtPercentile(99))))
            report.figure("load_average", Machine.loadAverage)
            report.conditions["raw_path"] = .string(cluster.broker == "kafka"
                ? "librdkafka produce (acked) → consume → Redis SET + GET"
                : "librabbitmq confirmed publish → consume + ack → Redis SET + GET")
            if cluster.broker == "rabbitmq" { report.target("p99_ms", atMost: 0.6) }
            await bench.stop()
            await bench.cleanUp()
            report.print(String(
                format: "latency over %@ (%d sequential no-op tasks, 1 %@ worker): submit → result p50 %.3f ms, p90 %.3f, p99 %.3f, max %.3f%@ | raw broker + Redis round trip p50 %.3f ms, p90 %.3f, p99 %.3f, max %.3f",
                cluster.broker, samples, cluster.workerMode.rawValue,
                Self.ms(gantry.valueAtPercentile(50)), Self.ms(gantry.valueAtPercentile(90)), Self.ms(gantry.valueAtPercentile(99)), Self.ms(gantry.max),
                cluster.broker == "rabbitmq" ? " (\(report.verdict("p99_ms")))" : "",
                Self.ms(raw.valueAtPercentile(50)), Self.ms(raw.valueAtPercentile(90)), Self.ms(raw.valueAtPercentile(99)), Self.ms(raw.max)
            ))
        } catch {
            await bench.stop()
            await bench.cleanUp(keepFiles: true)
            throw error
        }
    }

    static func ms(_ nanoseconds: UInt64) -> Double { Double(nanoseconds) / 1e6 }

    // MARK: Raw round trip

    private func rawRoundTrips(_ bench: BenchCluster) async throws -> Histogram<UInt64> {
        var redisConfiguration = try RedisConfiguration(settings: bench.settings)
        redisConfiguration.poolSize = 1
        let redis = try RedisClient(configuration: redisConfiguration)
        defer { redis.close() }
        let key = "\(try bench.settings.string("store.namespace")):raw"
        switch cluster.broker {
        case "kafka": return try await kafkaRoundTrips(bench, redis: redis, key: key)
        default: return try await amqpRoundTrips(bench, redis: redis, key: key)
        }
    }

    private func amqpRoundTrips(_ bench: BenchCluster, redis: RedisClient, key: String) async throws -> Histogram<UInt64> {
        let amqp = try AMQPConfiguration(url: try bench.settings.string("broker.rabbitmq_url"))
        let publisher = try await AMQPClient.connect(amqp)
        let consumerClient = try await AMQPClient.connect(amqp)
        let queue = "\(try bench.settings.string("broker.queue_prefix"))raw"
        do {
            let histogram = try await amqpRoundTrips(publisher: publisher, consumerClient: consumerClient, queue: queue, redis: redis, key: key)
            _ = try? await publisher.deleteQueue(queue)
            await publisher.close()
            await consumerClient.close()
            return histogram
        } catch {
            _ = try? await publisher.deleteQueue(queue)
            await publisher.close()
            await consumerClient.close()
            throw error
        }
    }

    private func amqpRoundTrips(publisher: AMQPClient, consumerClient: AMQPClient, queue: String, redis: RedisClient, key: String) async throws -> Histogram<UInt64> {
        try await publisher.declareQueue(queue, durable: true, arguments: [AMQPQueueArgument.maxPriority: 10])
        try await publisher.confirmSelect()
        try await consumerClient.qos(prefetchCount: 64)
        let consumer = try await consumerClient.consume(queue: queue)
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: 160)
        var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        let clock = ContinuousClock()
        var iterator = consumer.makeAsyncIterator()
        for index in 0..<(warmup + samples) {
            let start = clock.now
            try await publisher.publish(routingKey: queue, body: body, properties: AMQPProperties(persistent: true))
            guard let delivery = try await iterator.next() else { throw GantryError(.closed, "the raw consumer ended") }
            try await consumerClient.ack(deliveryTag: delivery.deliveryTag)
            _ = try await redis.send("SET", key, delivery.body)
            _ = try await redis.send("GET", key)
            if index >= warmup { _ = histogram.record(UInt64((clock.now - start).nanoseconds)) }
        }
        try await consumer.cancel()
        _ = try await redis.send("DEL", key)
        return histogram
    }

    private func kafkaRoundTrips(_ bench: BenchCluster, redis: RedisClient, key: String) async throws -> Histogram<UInt64> {
        let brokers = try bench.settings.strings("broker.kafka_brokers")
        let topic = "\(try bench.settings.string("broker.queue_prefix"))raw"
        let kafka = KafkaConfiguration(bootstrapServers: brokers, clientID: "gantry-bench-raw")
        var producerKafka = kafka
        producerKafka.properties["linger.ms"] = "0"
        let producer = try KafkaProducer(configuration: producerKafka)
        let consumer = try KafkaConsumer(configuration: kafka, consumer: KafkaConsumerConfiguration(groupID: "gantry-bench-raw-\(bench.tag)"))
        // The first record creates the topic (the dev broker creates topics on first use).
        _ = try await producer.send(KafkaOutgoingMessage(topic: topic, value: Array("hello".utf8)))
        try await consumer.subscribe(topics: [topic])
        var events = consumer.events.makeAsyncIterator()
        // Wait for the assignment and the first record, so the group join is not measured.
        var seenFirst = false
        while !seenFirst {
            guard let event = try await events.next() else { throw GantryError(.closed, "the raw Kafka consumer ended") }
            if case .records(let records) = event, !records.isEmpty { seenFirst = true }
        }
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: 160)
        var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        let clock = ContinuousClock()
        for index in 0..<(warmup + samples) {
            let start = clock.now
            _ = try await producer.send(KafkaOutgoingMessage(topic: topic, value: body))
            var record: KafkaRecord?
            while record == nil {
                guard let event = try await events.next() else { throw GantryError(.closed, "the raw Kafka consumer ended") }
                if case .records(let records) = event { record = records.last }
            }
            _ = try await redis.send("SET", key, record!.value)
            _ = try await redis.send("GET", key)
            if index >= warmup { _ = histogram.record(UInt64((clock.now - start).nanoseconds)) }
        }
        _ = try await redis.send("DEL", key)
        await consumer.close()
        try await producer.close(timeout: .seconds(5))
        return histogram
    }
}

extension Duration {
    /// The whole duration in nanoseconds.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
