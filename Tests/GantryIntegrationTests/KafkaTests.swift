import Foundation
import GantryCore
@testable import GantryKafka
import Synchronization
import Testing

/// The Kafka wire against the dev broker at `GANTRY_KAFKA_BROKERS` (default
/// `127.0.0.1:9092`; start it with `ops/stack up kafka`). Every test uses its own topic and
/// group.
@Suite("Kafka wire against the dev broker")
struct KafkaTests {
    @Test("produce then consume with a manual commit; a new member resumes at the commit")
    func roundTripWithManualCommit() async throws {
        let topic = KafkaTestEnvironment.topic("roundtrip")
        let group = KafkaTestEnvironment.group("roundtrip")
        let producer = try KafkaTestEnvironment.producer()

        // One key: every record lands in one partition, so offsets are 0...9 in order.
        let messages = (0..<10).map { index in
            KafkaOutgoingMessage(
                topic: topic, key: Array("run-1".utf8), value: Array("task-\(index)".utf8),
                headers: [KafkaHeader(key: "attempt", value: "\(index)"), KafkaHeader(key: "empty", value: nil)]
            )
        }
        let reports = try await producer.sendAll(messages)
        #expect(reports.count == 10)
        #expect(Set(reports.map(\.partition)).count == 1)
        #expect(reports.map(\.offset) == Array(0..<10))
        let single = try await producer.send(topic: topic, key: Array("run-1".utf8), value: Array("task-10".utf8))
        #expect(single.offset == 10 && single.partition == reports[0].partition)

        let first = try await KafkaTestEnvironment.consumer(group: group, topics: [topic])
        let seen = try await kafkaReceive(first, "11 records") { $0.records.count >= 11 }
        #expect(!seen.assigned.isEmpty)
        #expect(seen.assigned.allSatisfy { $0.topic == topic })
        #expect(seen.records.map(\.offset) == Array(0...10))
        #expect(seen.records.map { String(decoding: $0.value, as: UTF8.self) } == (0...10).map { "task-\($0)" })
        #expect(seen.records[3].key == Array("run-1".utf8))
        #expect(seen.records[3].headers == [KafkaHeader(key: "attempt", value: "3"), KafkaHeader(key: "empty", value: nil)])

        // Records 0...5 are done: commit the next offset to read, 6.
        try await first.commit([KafkaCommitOffset(after: seen.records[5])])
        await first.close()

        let second = try await KafkaTestEnvironment.consumer(group: group, topics: [topic])
        let resumed = try await kafkaReceive(second, "the 5 uncommitted records") { $0.records.count >= 5 }
        // Had the commit been lost, the partition would restart at 0 and offset 0 come first.
        #expect(resumed.records.map(\.offset) == Array(6...10))
        #expect(resumed.records.map { String(decoding: $0.value, as: UTF8.self) } == (6...10).map { "task-\($0)" })
        await second.close()
        try await producer.close()
    }

    @Test("committed offsets hold across every partition of a topic")
    func commitsAcrossPartitions() async throws {
        let topic = KafkaTestEnvironment.topic("partitions")
        let group = KafkaTestEnvironment.group("partitions")
        let producer = try KafkaTestEnvironment.producer()
        let messages = (0..<40).map { KafkaOutgoingMessage(topic: topic, key: Array("key-\($0)".utf8), value: Array("v\($0)".utf8)) }
        let reports = try await producer.sendAll(messages)
        #expect(Set(reports.map(\.partition)).count > 1, "40 keys should spread over several partitions")

        let first = try await KafkaTestEnvironment.consumer(group: group, topics: [topic])
        let seen = try await kafkaReceive(first, "40 records") { $0.records.count >= 40 }
        #expect(Set(seen.records.map { String(decoding: $0.value, as: UTF8.self) }) == Set((0..<40).map { "v\($0)" }))
        // The highest offset + 1 of each partition, through the tuple form.
        var next: [KafkaTopicPartition: Int64] = [:]
        for record in seen.records { next[record.topicPartition] = max(next[record.topicPartition] ?? 0, record.offset + 1) }
        try await first.commit(offsets: next.map { (topic: $0.key.topic, partition: $0.key.partition, offset: $0.value) })
        await first.close()

        try await producer.send(topic: topic, key: Array("marker".utf8), value: Array("marker".utf8))
        let second = try await KafkaTestEnvironment.consumer(group: group, topics: [topic])
        let resumed = try await kafkaReceive(second, "the marker record") { observed in
            observed.records.contains { $0.value == Array("marker".utf8) }
        }
        // Only the record written after the commit comes back: the marker sits at the end of
        // its partition, so anything committed before it would have been delivered first.
        #expect(resumed.records.map { String(decoding: $0.value, as: UTF8.self) } == ["marker"])
        await second.close()
        try await producer.close()
    }

    @Test("a second member of the group triggers a revocation and a split of the partitions")
    func rebalanceIsSurfaced() async throws {
        let topic = KafkaTestEnvironment.topic("rebalance")
        let group = KafkaTestEnvironment.group("rebalance")
        let first = try await KafkaTestEnvironment.consumer(group: group, topics: [topic])
        let alone = try await kafkaReceive(first, "the first assignment") { !$0.assigned.isEmpty }
        let partitions = Set(alone.assigned)
        #expect(partitions.count > 1)

        let second = try await KafkaTestEnvironment.consumer(group: group, topics: [topic])
        async let secondSeen = kafkaReceive(second, "the second member's assignment") { !$0.assigned.isEmpty }
        let firstSeen = try await kafkaReceive(first, "the revocation and new assignment") { observed in
            !observed.revoked.isEmpty && !observed.assigned.isEmpty
        }
        let secondAssigned = Set(try await secondSeen.assigned)
        let firstAssigned = Set(firstSeen.assigned)
        #expect(!firstSeen.revoked.isEmpty)
        #expect(firstAssigned.isDisjoint(with: secondAssigned))
        #expect(firstAssigned.union(secondAssigned) == partitions)
        // The members' live assignments are that split. On a loaded machine the group may
        // rebalance once more (a join that took too long); then it must settle into a split again.
        let settled: @Sendable () -> Bool = {
            let mine = first.assignment, theirs = second.assignment
            return !mine.isEmpty && !theirs.isEmpty && mine.isDisjoint(with: theirs) && mine.union(theirs) == partitions
        }
        if !settled() {
            async let secondSettled = kafkaReceive(second, "the group to settle (second member)") { _ in settled() }
            _ = try await kafkaReceive(first, "the group to settle") { _ in settled() }
            _ = try await secondSettled
        }
        #expect(settled())
        await second.close()
        await first.close()
    }

    @Test("a reader slower than the fetcher gets every record once, in order, in bounded batches")
    func boundedBufferPausesAndResumes() async throws {
        let topic = KafkaTestEnvironment.topic("backpressure")
        let producer = try KafkaTestEnvironment.producer()
        let messages = (0..<300).map { KafkaOutgoingMessage(topic: topic, key: Array("one".utf8), value: Array("\($0)".utf8)) }
        _ = try await producer.sendAll(messages)
        try await producer.close()

        // A buffer of 20 against 300 records already on the broker: the polling thread has to
        // pause the partitions and resume them many times.
        var configuration = KafkaTestEnvironment.configuration
        configuration.properties["session.timeout.ms"] = "6000"
        let consumer = try KafkaConsumer(
            configuration: configuration,
            consumer: KafkaConsumerConfiguration(groupID: KafkaTestEnvironment.group("backpressure"), maxBatchSize: 7, bufferCapacity: 20)
        )
        try await consumer.subscribe(topics: [topic])
        // Nothing is read until the buffer is full and fetching paused.
        let deadline = ContinuousClock.now + .seconds(30)
        while !consumer.isFetchPaused {
            guard ContinuousClock.now < deadline else {
                Issue.record("the consumer never paused fetching with 300 records waiting and a buffer of 20")
                break
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        let batchSizes = BatchSizes()
        let seen = try await kafkaReceive(consumer, "300 records") { observed in
            batchSizes.note(observed.records.count)
            return observed.records.count >= 300
        }
        #expect(seen.records.map(\.offset) == Array(0..<300))
        #expect(seen.records.map { String(decoding: $0.value, as: UTF8.self) } == (0..<300).map(String.init))
        #expect(batchSizes.largestStep <= 7)
        await consumer.close()
    }

    @Test("kcat produces, a Swift consumer reads")
    func kcatProducesSwiftConsumes() async throws {
        let topic = KafkaTestEnvironment.topic("kcat-in")
        let group = KafkaTestEnvironment.group("kcat-in")
        let result = try await runKcat(
            ["-P", "-b", KafkaTestEnvironment.brokers, "-t", topic, "-K", ":"],
            input: "k1:from kcat 1\nk2:from kcat 2\nk3:from kcat 3\n"
        )
        #expect(result.status == 0, "kcat -P failed: \(result.stderr)")

        let consumer = try await KafkaTestEnvironment.consumer(group: group, topics: [topic])
        let seen = try await kafkaReceive(consumer, "kcat's 3 records") { $0.records.count >= 3 }
        let pairs = Set(seen.records.map { (String(decoding: $0.key ?? [], as: UTF8.self)) + "=" + String(decoding: $0.value, as: UTF8.self) })
        #expect(pairs == ["k1=from kcat 1", "k2=from kcat 2", "k3=from kcat 3"])
        try await consumer.commit(seen.records.map(KafkaCommitOffset.init(after:)))
        await consumer.close()
    }

    @Test("Swift produces, kcat reads in consumer-group mode")
    func swiftProducesKcatConsumesInGroup() async throws {
        let topic = KafkaTestEnvironment.topic("kcat-out")
        let group = KafkaTestEnvironment.group("kcat-out")
        let producer = try KafkaTestEnvironment.producer()
        let messages = (0..<5).map { KafkaOutgoingMessage(topic: topic, key: Array("k\($0)".utf8), value: Array("from swift \($0)".utf8)) }
        _ = try await producer.sendAll(messages)
        try await producer.close()

        // -G: balanced consumer group; -c 5: exit after five records.
        let result = try await runKcat([
            "-b", KafkaTestEnvironment.brokers, "-G", group, topic,
            "-X", "auto.offset.reset=earliest", "-c", "5", "-f", "%k=%s\n",
        ])
        #expect(result.status == 0, "kcat -G failed: \(result.stderr)")
        let lines = Set(result.stdout.split(separator: "\n").map(String.init))
        #expect(lines == Set((0..<5).map { "k\($0)=from swift \($0)" }))
        #expect(result.stderr.contains("Group \(group) rebalanced"))
    }
}

/// Checks that need no broker: configuration errors name the bad key.
@Suite("Kafka configuration")
struct KafkaConfigurationTests {
    @Test("an unknown librdkafka key is a configuration error naming it")
    func unknownKey() throws {
        let configuration = KafkaConfiguration(properties: ["no.such.key": "1"])
        let error = try #require(throws: GantryError.self) { try configuration.validate() }
        #expect(error.code == .configuration)
        #expect(error.message.contains("no.such.key"))
        #expect(throws: GantryError.self) { _ = try KafkaProducer(configuration: configuration) }
    }

    @Test("an invalid value is a configuration error that does not echo the value")
    func invalidValue() throws {
        let configuration = KafkaConfiguration(properties: ["security.protocol": "carrier-pigeon"])
        let error = try #require(throws: GantryError.self) { try configuration.validate() }
        #expect(error.code == .configuration)
        #expect(error.message.contains("security.protocol"))
        #expect(!error.message.contains("carrier-pigeon"))
    }

    @Test("keys Gantry depends on cannot be overridden")
    func enforcedKeys() throws {
        let configuration = KafkaConfiguration(properties: ["enable.auto.commit": "true"])
        let error = try #require(throws: GantryError.self) {
            _ = try KafkaConsumer(configuration: configuration, consumer: KafkaConsumerConfiguration(groupID: "g"))
        }
        #expect(error.code == .configuration)
        #expect(error.message.contains("enable.auto.commit"))
        let idempotence = KafkaConfiguration(properties: ["enable.idempotence": "false"])
        #expect(throws: GantryError.self) { _ = try KafkaProducer(configuration: idempotence) }
    }

    @Test("the environment sets brokers and passes properties through")
    func environment() {
        let configuration = KafkaConfiguration(environment: [
            "GANTRY_KAFKA_BROKERS": "a:1, b:2",
            "GANTRY_KAFKA_CONF_SECURITY_PROTOCOL": "ssl",
            "GANTRY_KAFKA_CONF_SSL_CA_LOCATION": "/etc/ca.pem",
        ])
        #expect(configuration.bootstrapServers == ["a:1", "b:2"])
        #expect(configuration.properties == ["security.protocol": "ssl", "ssl.ca.location": "/etc/ca.pem"])
    }
}

/// The largest growth of the record count between two events: the largest batch.
private final class BatchSizes: Sendable {
    private let state = Mutex((last: 0, largest: 0))

    func note(_ count: Int) {
        state.withLock { state in
            state.largest = max(state.largest, count - state.last)
            state.last = count
        }
    }

    var largestStep: Int { state.withLock { $0.largest } }
}
