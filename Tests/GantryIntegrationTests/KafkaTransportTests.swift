import Foundation
import GantryCore
import GantryKafka
import Synchronization
import Testing

/// The Kafka transport's own guarantees, beyond the shared conformance suite, against the dev
/// broker at `GANTRY_KAFKA_BROKERS` (start it with `ops/stack up kafka`). Every test uses its own
/// queues and consumer groups. The dev broker waits 3 s before a new group's first assignment,
/// so each consume() costs that much.
@Suite("Kafka transport against the dev broker")
struct KafkaTransportTests {
    @Test("acks out of order commit only the contiguous prefix; the group resumes at the first gap")
    func outOfOrderAcksCommitTheContiguousPrefix() async throws {
        let group = KafkaTestEnvironment.group("contiguous")
        let queue = Self.queue("contiguous")
        let first = try KafkaConformanceTransport.transport(group: group)
        try await first.declare(queues: [queue])
        // One key: one partition, offsets 0...5 in order.
        try await first.publish((0..<6).map { OutgoingMessage(body: Array("r\($0)".utf8), key: "run-1") }, to: queue)

        let collector = DeliveryCollector(try await first.consume(queues: [queue], credit: 10))
        // All six are out at once, none settled: one partition's records run concurrently.
        let got = try await collector.wait(for: 6, timeout: .seconds(30))
        #expect(got.map(\.token.sequence) == [0, 1, 2, 3, 4, 5])
        #expect(Set(got.map(\.token.partition)).count == 1)
        for index in [0, 1, 3, 4] { try await first.ack(got[index]) }
        // The group's lag shows the committed offset: 6 records, committed up to 2.
        try await Self.eventually("the commit of offset 2") { try await first.depth(of: queue) == 4 }
        await collector.stop()
        await first.close()

        // A new member of the group (another process) starts at the gap: 2 was never
        // finished, so it and everything after it come again.
        let second = try KafkaConformanceTransport.transport(group: group)
        let again = DeliveryCollector(try await second.consume(queues: [queue], credit: 10))
        let resumed = try await again.wait(for: 4, timeout: .seconds(30))
        #expect(resumed.map(\.token.sequence) == [2, 3, 4, 5])
        #expect(resumed.map(Self.text) == ["r2", "r3", "r4", "r5"])
        for delivery in resumed { try await second.ack(delivery) }
        try await Self.eventually("the commit of offset 6") { try await second.depth(of: queue) == 0 }
        #expect(again.deliveries.count == 4)
        await again.stop()
        await second.close()
    }

    @Test("a consumer that dies holding records hands them to the group; its late settlements do nothing")
    func unackedRecordsOfADeadConsumerAreRedelivered() async throws {
        let group = KafkaTestEnvironment.group("dies")
        let queue = Self.queue("dies")
        let first = try KafkaConformanceTransport.transport(group: group)
        try await first.declare(queues: [queue])
        try await first.publish((0..<4).map { OutgoingMessage(body: Array("d\($0)".utf8), key: "run-2") }, to: queue)

        let collector = DeliveryCollector(try await first.consume(queues: [queue], credit: 10))
        let got = try await collector.wait(for: 4, timeout: .seconds(30))
        try await first.ack(got[0])
        try await first.ack(got[1])
        // The task running the consumer is cancelled while it holds d2 and d3.
        await collector.stop()
        // Stopping commits what was settled (d0 and d1) in the background before leaving.
        try await Self.eventually("the stopping consumer's commit of d0 and d1") { try await first.depth(of: queue) == 2 }
        // Settlements arriving after it died neither fail nor act: no commit, no republish.
        try await first.ack(got[2])
        try await first.nack(got[3], requeue: true)

        let second = try KafkaConformanceTransport.transport(group: group)
        let again = DeliveryCollector(try await second.consume(queues: [queue], credit: 10))
        let redelivered = try await again.wait(for: 2, timeout: .seconds(30))
        #expect(redelivered.map(Self.text) == ["d2", "d3"])
        for delivery in redelivered { try await second.ack(delivery) }
        // Lag 0 means nothing else is in the topic: a republished d3 would be a fifth record,
        // delivered to `again` and never acknowledged.
        try await Self.eventually("every record committed") { try await second.depth(of: queue) == 0 }
        #expect(again.deliveries.count == 2)
        await again.stop()
        await second.close()
        await first.close()
    }

    @Test("an undecodable message is dead-lettered to the .dlq topic with its reason and settled")
    func undecodableMessageIsDeadLettered() async throws {
        let queue = Self.queue("poison")
        let transport = try KafkaConformanceTransport.transport()
        try await transport.declare(queues: [queue])
        let garbage: [UInt8] = [0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x01]
        try await transport.publish(OutgoingMessage(body: garbage, key: "run-3", headers: ["trace": "t-1"]), to: queue)

        let collector = DeliveryCollector(try await transport.consume(queues: [queue], credit: 1))
        let delivery = try await collector.wait(for: 1, timeout: .seconds(30))[0]
        var reason = ""
        do {
            _ = try TaskEnvelope(decoding: delivery.body)
            Issue.record("garbage decoded as a task envelope")
        } catch {
            reason = "undecodable: \(error)"
            try await transport.deadLetter(delivery, reason: reason)
        }
        // Settled: the group committed past it.
        try await Self.eventually("the poison message settled") { try await transport.depth(of: queue) == 0 }
        await collector.stop()

        // It is in the Kafka topic `<topic>.dlq`, read here with a plain consumer.
        let deadLetterTopic = try transport.topic(for: queue) + ".dlq"
        #expect(deadLetterTopic == "gantry.\(queue).dlq")
        let reader = try await KafkaTestEnvironment.consumer(group: KafkaTestEnvironment.group("dlq-reader"), topics: [deadLetterTopic])
        let seen = try await kafkaReceive(reader, "the dead letter") { !$0.records.isEmpty }
        #expect(seen.records.count == 1)
        let record = try #require(seen.records.first)
        #expect(record.value == garbage)
        #expect(record.key == Array("run-3".utf8))
        #expect(record.headers.contains(KafkaHeader(key: deadLetterReasonHeader, value: reason)))
        #expect(record.headers.contains(KafkaHeader(key: "trace", value: "t-1")))
        #expect(reason.hasPrefix("undecodable: "))
        await reader.close()
        await transport.close()
    }

    @Test("a rebalance hands a busy member's records to the new member; the old member's late acks are ignored")
    func rebalanceMovesUnsettledRecords() async throws {
        let queue = Self.queue("rebalance")
        let transport = try KafkaConformanceTransport.transport()
        try await transport.declare(queues: [queue])
        let count = 16
        try await transport.publish((0..<count).map { OutgoingMessage(body: Array("m\($0)".utf8), key: "key-\($0)") }, to: queue)

        let first = DeliveryCollector(try await transport.consume(queues: [queue], credit: 100))
        let held = try await first.wait(for: count, timeout: .seconds(30))
        #expect(Set(held.map(\.token.partition)).count > 1)
        // A second member joins while the first holds everything: the group takes the first's
        // partitions away (eager protocol: all of them) and splits them between the two.
        let second = DeliveryCollector(try await transport.consume(queues: [queue], credit: 100))
        try await second.wait(for: 1, timeout: .seconds(40))
        // The first member finishes its work late: none of it throws, and none of it may commit
        // a partition the first no longer owns.
        for delivery in held { try await transport.ack(delivery) }
        // Whatever either member receives from now on is acknowledged, until the group has
        // committed everything.
        let acked = Mutex(Set<DeliveryToken>(held.map(\.token)))
        try await Self.eventually("every record committed after the rebalance", timeout: .seconds(40)) {
            for delivery in first.deliveries.dropFirst(count) + second.deliveries where acked.withLock({ $0.insert(delivery.token).inserted }) {
                try await transport.ack(delivery)
            }
            return try await transport.depth(of: queue) == 0
        }
        let afterRebalance = Array(first.deliveries.dropFirst(count)) + second.deliveries
        #expect(!second.deliveries.isEmpty)
        // Every record came again (the late acks committed nothing), and each knows it is a
        // redelivery: it was handed out by this transport and not settled when revoked.
        #expect(Set(afterRebalance.map(Self.text)) == Set((0..<count).map { "m\($0)" }))
        #expect(afterRebalance.allSatisfy { $0.redelivered })
        #expect(Set(first.deliveries.dropFirst(count).map(\.token.partition)).isDisjoint(with: Set(second.deliveries.map(\.token.partition))))
        await first.stop()
        await second.stop()
        await transport.close()
    }

    @Test("concurrent publishes each return once their records are stored; every record arrives once, in order per key")
    func concurrentPublishesDeliverEveryRecordOnce() async throws {
        let queue = Self.queue("concurrent")
        let transport = try KafkaConformanceTransport.transport(group: KafkaTestEnvironment.group("concurrent"))
        try await transport.declare(queues: [queue])
        let publishers = 4
        let perPublisher = 600
        try await withThrowingTaskGroup(of: Void.self) { group in
            for publisher in 0..<publishers {
                group.addTask {
                    let messages = (0..<perPublisher).map { OutgoingMessage(body: Array("p\(publisher)-\($0)".utf8), key: "run-\(publisher)") }
                    try await transport.publish(messages, to: queue)
                }
            }
            try await group.waitForAll()
        }
        // Every publish returned: all of it is stored.
        #expect(try await transport.depth(of: queue) == publishers * perPublisher)

        let stream = try await transport.consume(queues: [queue], credit: 64)
        var received: [String: [Int]] = [:]
        var count = 0
        for try await delivery in stream {
            let text = Self.text(delivery)
            let parts = text.split(separator: "-")
            received[String(parts[0]), default: []].append(Int(parts[1])!)
            try await transport.ack(delivery)
            count += 1
            if count == publishers * perPublisher { break }
        }
        // One key per publisher: one partition each, so each publisher's records come in order.
        #expect(received.keys.sorted() == (0..<publishers).map { "p\($0)" })
        for numbers in received.values { #expect(numbers == Array(0..<perPublisher)) }
        try await Self.eventually("the commit of every record") { try await transport.depth(of: queue) == 0 }
        stream.stopIntake()
        await transport.close()
    }

    @Test("configuration from the environment")
    func configurationFromEnvironment() async throws {
        let configuration = try KafkaTransportConfiguration(environment: [
            "GANTRY_KAFKA_BROKERS": "a:1,b:2",
            "GANTRY_KAFKA_TOPIC_PREFIX": "prod.",
            "GANTRY_KAFKA_GROUP_ID": "fleet-a",
            "GANTRY_KAFKA_COMMIT_INTERVAL": "250ms",
            "GANTRY_KAFKA_PREFETCH_BYTES": "1048576",
        ])
        #expect(configuration.kafka.bootstrapServers == ["a:1", "b:2"])
        #expect(configuration.topic(for: "tasks") == "prod.tasks")
        #expect(configuration.groupID == "fleet-a")
        #expect(configuration.commitInterval == .milliseconds(250))
        #expect(configuration.prefetchBytes == 1 << 20)
        #expect(throws: GantryError.self) { try KafkaTransportConfiguration(environment: ["GANTRY_KAFKA_COMMIT_INTERVAL": "soon"]) }
        let transport = try KafkaConformanceTransport.transport()
        #expect(try transport.topic(for: "tasks") == "gantry.tasks")
        #expect(throws: GantryError.self) { try transport.topic(for: "no spaces allowed") }
        await transport.close()
    }

    // MARK: Helpers

    private static func queue(_ purpose: String) -> String {
        "kt-\(purpose)-\(UUID().uuidString.prefix(12).lowercased())"
    }

    private static func text(_ delivery: Delivery) -> String {
        String(decoding: delivery.body, as: UTF8.self)
    }

    /// Polls `condition` until it holds, failing after `timeout`.
    private static func eventually(_ what: String, timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !(try await condition()) {
            guard ContinuousClock.now < deadline else {
                throw GantryError(.timeout, "\(what) did not happen within \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}
