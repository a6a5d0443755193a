import Foundation
import GantryCore
@testable import GantryKafka
import Testing

/// The dev broker's building blocks, in-process: the mock cluster behind its relay, and the
/// protocol parsing the relay relies on.
@Suite("Kafka mock cluster and relay")
struct KafkaMockClusterTests {
    @Test("topics created on demand get the configured partition count, on every broker, through the relay")
    func onDemandTopicsThroughRelay() async throws {
        let cluster = try KafkaMockCluster(brokers: 2, port: 0, defaultPartitions: 3)
        #expect(cluster.relayPorts.count == 2)
        #expect(cluster.bootstrapServers == "127.0.0.1:\(cluster.relayPorts[0])")
        #expect(cluster.bootstrapServers != cluster.mockBootstrapServers)

        let configuration = KafkaConfiguration(bootstrapServers: [cluster.bootstrapServers])
        let topic = KafkaTestEnvironment.topic("mock")
        let producer = try KafkaProducer(configuration: configuration)
        let reports = try await producer.sendAll((0..<30).map {
            KafkaOutgoingMessage(topic: topic, key: Array("k\($0)".utf8), value: Array("v\($0)".utf8))
        })
        // Three partitions, not the mock's own default of four.
        #expect(Set(reports.map(\.partition)) == [0, 1, 2])
        try await producer.close()

        var consumerConfiguration = configuration
        consumerConfiguration.properties["session.timeout.ms"] = "6000"
        let consumer = try KafkaConsumer(
            configuration: consumerConfiguration,
            consumer: KafkaConsumerConfiguration(groupID: KafkaTestEnvironment.group("mock"))
        )
        try await consumer.subscribe(topics: [topic])
        let seen = try await kafkaReceive(consumer, "30 records through the relay") { $0.records.count >= 30 }
        #expect(Set(seen.assigned.map(\.partition)) == [0, 1, 2])
        #expect(Set(seen.records.map(\.value)) == Set((0..<30).map { Array("v\($0)".utf8) }))
        await consumer.close()
    }

    @Test("a taken port is a configuration error naming the port")
    func portInUse() throws {
        let first = try KafkaMockCluster(port: 0)
        let port = first.relayPorts[0]
        let error = try #require(throws: GantryError.self) { _ = try KafkaMockCluster(port: port) }
        #expect(error.code == .configuration)
        #expect(error.message.contains("127.0.0.1:\(port)"))
    }
}

@Suite("Kafka wire parsing for the relay")
struct KafkaWireTests {
    /// Big-endian helpers to build frames by hand.
    static func i16(_ value: Int16) -> [UInt8] { withUnsafeBytes(of: value.bigEndian, Array.init) }
    static func i32(_ value: Int32) -> [UInt8] { withUnsafeBytes(of: value.bigEndian, Array.init) }
    static func str(_ value: String?) -> [UInt8] {
        guard let value else { return i16(-1) }
        return i16(Int16(value.utf8.count)) + Array(value.utf8)
    }

    @Test("metadata request topics are read for v0 to v8, and nothing for all-topics requests")
    func metadataRequest() {
        for version: Int16 in [0, 1, 2, 4, 8] {
            let body = Self.i16(3) + Self.i16(version) + Self.i32(7) + Self.str("client")
                + Self.i32(2) + Self.str("tasks") + Self.str("results") + [1]
            #expect(KafkaWire.requestHeader(Array(body.prefix(8))) == .init(apiKey: 3, apiVersion: version, correlationID: 7))
            #expect(KafkaWire.metadataRequestTopics(body, apiVersion: version) == ["tasks", "results"])
        }
        let all = Self.i16(3) + Self.i16(1) + Self.i32(7) + Self.str(nil) + Self.i32(-1)
        #expect(KafkaWire.metadataRequestTopics(all, apiVersion: 1).isEmpty)
        // Flexible versions are not parsed: the relay forwards them untouched.
        #expect(KafkaWire.metadataRequestTopics(all, apiVersion: 9).isEmpty)
    }

    @Test("metadata responses get relay ports for known brokers only")
    func metadataResponse() {
        let brokers = Self.i32(2)
            + Self.i32(1) + Self.str("127.0.0.1") + Self.i32(40001) + Self.str(nil)
            + Self.i32(2) + Self.str("127.0.0.1") + Self.i32(40002) + Self.str("rack-a")
        let tail: [UInt8] = Self.str("cluster") + Self.i32(1) + Self.i32(0)
        var v2 = Self.i32(99) + brokers + tail
        let count = KafkaWire.rewriteMetadataResponse(&v2, apiVersion: 2, ports: [40001: 9092])
        #expect(count == 1)
        #expect(v2 == Self.i32(99) + Self.i32(2)
            + Self.i32(1) + Self.str("127.0.0.1") + Self.i32(9092) + Self.str(nil)
            + Self.i32(2) + Self.str("127.0.0.1") + Self.i32(40002) + Self.str("rack-a") + tail)

        var v0 = Self.i32(5) + Self.i32(1) + Self.i32(1) + Self.str("127.0.0.1") + Self.i32(40001)
        #expect(KafkaWire.rewriteMetadataResponse(&v0, apiVersion: 0, ports: [40001: 9092]) == 1)
        #expect(Array(v0.suffix(4)) == Self.i32(9092))

        var truncated = Array(v2.prefix(12))
        let before = truncated
        #expect(KafkaWire.rewriteMetadataResponse(&truncated, apiVersion: 2, ports: [40001: 9092]) == nil)
        #expect(truncated == before)
    }

    @Test("find-coordinator responses get the relay port")
    func findCoordinatorResponse() {
        var v0 = Self.i32(1) + Self.i16(0) + Self.i32(1) + Self.str("127.0.0.1") + Self.i32(40001)
        #expect(KafkaWire.rewriteFindCoordinatorResponse(&v0, apiVersion: 0, ports: [40001: 9092]) == 1)
        #expect(Array(v0.suffix(4)) == Self.i32(9092))
        var v1 = Self.i32(1) + Self.i32(0) + Self.i16(0) + Self.str(nil) + Self.i32(1) + Self.str("127.0.0.1") + Self.i32(40001)
        #expect(KafkaWire.rewriteFindCoordinatorResponse(&v1, apiVersion: 1, ports: [40001: 9092]) == 1)
        #expect(Array(v1.suffix(4)) == Self.i32(9092))
    }

    @Test("topic names are checked the way Kafka checks them")
    func topicNames() {
        #expect(KafkaWire.isValidTopicName("gantry.tasks_v1-2"))
        #expect(!KafkaWire.isValidTopicName(""))
        #expect(!KafkaWire.isValidTopicName(".."))
        #expect(!KafkaWire.isValidTopicName("has space"))
        #expect(!KafkaWire.isValidTopicName(String(repeating: "a", count: 250)))
    }
}
