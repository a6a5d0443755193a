import Foundation
import GantryCore
import Synchronization
import Testing

/// Every transport Gantry can run on. Each must pass the whole conformance suite.
enum TransportKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case memory
    case rabbitmq
    case kafka

    var testDescription: String { rawValue }

    func make() async throws -> any TaskTransport {
        switch self {
        case .memory: return InMemoryTransport()
        case .rabbitmq: return try await RabbitMQConformanceTransport.make()
        case .kafka: return try await KafkaConformanceTransport.make()
        }
    }
}

/// Collects a consumer's deliveries in the background so a test can wait for a count with a deadline.
final class DeliveryCollector: Sendable {
    private final class Storage: Sendable {
        let received = Mutex<[Delivery]>([])
        let failure = Mutex<(any Error)?>(nil)
    }

    private let storage = Storage()
    private let task: Task<Void, Never>

    init(_ stream: DeliveryStream) {
        let storage = self.storage
        task = Task {
            do {
                for try await delivery in stream { storage.received.withLock { $0.append(delivery) } }
            } catch {
                storage.failure.withLock { $0 = error }
            }
        }
    }

    var deliveries: [Delivery] { storage.received.withLock { $0 } }

    /// Waits until at least `count` deliveries arrived, or fails after `timeout`.
    @discardableResult
    func wait(for count: Int, timeout: Duration = .seconds(20)) async throws -> [Delivery] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let current = deliveries
            if current.count >= count { return current }
            if let error = storage.failure.withLock({ $0 }) { throw error }
            guard ContinuousClock.now < deadline else {
                throw GantryError(.timeout, "expected \(count) deliveries within \(timeout), got \(current.count)")
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Stops consuming: the stream's consumer is cancelled and its unsettled deliveries go back.
    func stop() async {
        task.cancel()
        await task.value
    }
}

private func uniqueQueue(_ purpose: String) -> String {
    "gantry-test.\(purpose).\(UUID().uuidString.prefix(12).lowercased())"
}

private func message(_ text: String, key: String? = nil, headers: [String: String] = [:]) -> OutgoingMessage {
    OutgoingMessage(body: Array(text.utf8), key: key, headers: headers)
}

private func text(_ delivery: Delivery) -> String { String(decoding: delivery.body, as: UTF8.self) }

@Suite struct TransportConformanceTests {
    @Test(arguments: TransportKind.allCases)
    func publishedMessagesArriveIntactAndAckSettlesThem(kind: TransportKind) async throws {
        let transport = try await kind.make()
        let queue = uniqueQueue("roundtrip")
        try await transport.declare(queues: [queue])
        try await transport.publish([message("one", key: "run-1", headers: ["h": "v"]), message("two", key: "run-1")], to: queue)
        let collector = DeliveryCollector(try await transport.consume(queues: [queue], credit: 10))
        let got = try await collector.wait(for: 2)
        #expect(got.map(text) == ["one", "two"])
        #expect(got[0].key == "run-1")
        #expect(got[0].headers["h"] == "v")
        #expect(got.allSatisfy { $0.queue == queue && !$0.redelivered })
        for delivery in got { try await transport.ack(delivery) }
        await collector.stop()
        // Nothing comes back once acknowledged.
        let again = DeliveryCollector(try await transport.consume(queues: [queue], credit: 10))
        try await transport.publish(message("marker"), to: queue)
        #expect(try await again.wait(for: 1).map(text) == ["marker"])
        await again.stop()
        await transport.close()
    }

    @Test(arguments: TransportKind.allCases)
    func creditBoundsUnsettledDeliveries(kind: TransportKind) async throws {
        let transport = try await kind.make()
        let queue = uniqueQueue("credit")
        try await transport.declare(queues: [queue])
        try await transport.publish((0..<5).map { message("m\($0)") }, to: queue)
        let collector = DeliveryCollector(try await transport.consume(queues: [queue], credit: 2))
        let first = try await collector.wait(for: 2)
        // Give a third delivery every chance to (wrongly) arrive before settling anything.
        try await Task.sleep(for: .milliseconds(300))
        #expect(collector.deliveries.count == 2)
        try await transport.ack(first[0])
        let more = try await collector.wait(for: 3)
        #expect(more.count == 3)
        for delivery in try await collector.wait(for: 3).dropFirst() { try await transport.ack(delivery) }
        let all = try await collector.wait(for: 5)
        #expect(Set(all.map(text)) == ["m0", "m1", "m2", "m3", "m4"])
        await collector.stop()
        await transport.close()
    }

    @Test(arguments: TransportKind.allCases)
    func nackWithRequeueRedelivers(kind: TransportKind) async throws {
        let transport = try await kind.make()
        let queue = uniqueQueue("nack")
        try await transport.declare(queues: [queue])
        try await transport.publish(message("again"), to: queue)
        let collector = DeliveryCollector(try await transport.consume(queues: [queue], credit: 1))
        let first = try await collector.wait(for: 1)[0]
        try await transport.nack(first, requeue: true)
        let second = try await collector.wait(for: 2)[1]
        #expect(text(second) == "again")
        #expect(second.redelivered)
        try await transport.ack(second)
        await collector.stop()
        await transport.close()
    }

    @Test(arguments: TransportKind.allCases)
    func aConsumerThatStopsWithoutAckingHandsItsMessagesBack(kind: TransportKind) async throws {
        let transport = try await kind.make()
        let queue = uniqueQueue("handback")
        try await transport.declare(queues: [queue])
        try await transport.publish([message("a"), message("b")], to: queue)
        let first = DeliveryCollector(try await transport.consume(queues: [queue], credit: 10))
        try await first.wait(for: 2)
        await first.stop()
        let second = DeliveryCollector(try await transport.consume(queues: [queue], credit: 10))
        let redelivered = try await second.wait(for: 2)
        #expect(Set(redelivered.map(text)) == ["a", "b"])
        #expect(redelivered.allSatisfy { $0.redelivered })
        for delivery in redelivered { try await transport.ack(delivery) }
        await second.stop()
        await transport.close()
    }

    @Test(arguments: TransportKind.allCases)
    func stoppingIntakeKeepsHandedOutDeliveriesSettleable(kind: TransportKind) async throws {
        let transport = try await kind.make()
        let queue = uniqueQueue("drain")
        try await transport.declare(queues: [queue])
        try await transport.publish((0..<4).map { message("d\($0)") }, to: queue)
        let stream = try await transport.consume(queues: [queue], credit: 2)
        let collector = DeliveryCollector(stream)
        let held = try await collector.wait(for: 2)
        stream.stopIntake()
        // The two handed out can still be acknowledged: a draining worker finishes its work.
        for delivery in held { try await transport.ack(delivery) }
        // The other two were never taken: the next consumer gets them, and only them.
        let next = DeliveryCollector(try await transport.consume(queues: [queue], credit: 10))
        let rest = try await next.wait(for: 2)
        #expect(Set((held + rest).map(text)) == ["d0", "d1", "d2", "d3"])
        for delivery in rest { try await transport.ack(delivery) }
        await collector.stop()
        await next.stop()
        #expect(collector.deliveries.count == 2)
        await transport.close()
    }

    @Test(arguments: TransportKind.allCases)
    func deadLetteredMessagesLandInTheDeadLetterQueueWithTheirReason(kind: TransportKind) async throws {
        let transport = try await kind.make()
        let queue = uniqueQueue("dlq")
        try await transport.declare(queues: [queue])
        try await transport.publish(message("poison"), to: queue)
        let collector = DeliveryCollector(try await transport.consume(queues: [queue], credit: 1))
        let delivery = try await collector.wait(for: 1)[0]
        try await transport.deadLetter(delivery, reason: "undecodable: bad magic bytes")
        await collector.stop()
        let dead = DeliveryCollector(try await transport.consume(queues: [transport.deadLetterQueue(of: queue)], credit: 1))
        let got = try await dead.wait(for: 1)[0]
        #expect(text(got) == "poison")
        #expect(got.headers[deadLetterReasonHeader] == "undecodable: bad magic bytes")
        try await transport.ack(got)
        await dead.stop()
        await transport.close()
    }

    @Test(arguments: TransportKind.allCases)
    func aLargeBatchArrivesExactlyOnceWhenAcked(kind: TransportKind) async throws {
        let transport = try await kind.make()
        let queue = uniqueQueue("batch")
        try await transport.declare(queues: [queue])
        let count = 2000
        try await transport.publish((0..<count).map { message("\($0)", key: "k\($0 % 7)") }, to: queue)
        if let depth = try await transport.depth(of: queue) { #expect(depth == count) }
        let stream = try await transport.consume(queues: [queue], credit: 64)
        var seen = Set<String>()
        for try await delivery in stream {
            #expect(seen.insert(text(delivery)).inserted)
            try await transport.ack(delivery)
            if seen.count == count { break }
        }
        #expect(seen.count == count)
        await transport.close()
    }
}
