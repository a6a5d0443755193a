import GantryCore
@testable import GantryKafka
import Synchronization
import Testing

/// The Kafka transport's bookkeeping without a broker: the consumer's state machine (runs of
/// fetched records, credit, contiguous commit points, revocation) and the producer's delivery
/// report accounting.
@Suite("Kafka transport bookkeeping")
struct KafkaTransportBookkeepingTests {
    typealias Consumer = KafkaTransportConsumer

    private static let topic = "gantry.bookkeeping"
    private static let p0 = KafkaTopicPartition(topic: topic, partition: 0)
    private static let p1 = KafkaTopicPartition(topic: topic, partition: 1)

    /// A run of `partition` with records at `offsets`.
    private static func run(_ partition: KafkaTopicPartition, _ offsets: some Sequence<Int64>) -> Consumer.FetchedRun {
        var run = Consumer.FetchedRun(partition: partition)
        for offset in offsets {
            run.append(Delivery(
                body: Array("\(partition.partition):\(offset)".utf8), queue: "bookkeeping", key: "k",
                token: DeliveryToken(consumer: 0, sequence: UInt64(offset), partition: partition.partition)))
        }
        return run
    }

    private static func take(_ machine: inout Consumer.StateMachine) -> Delivery? {
        guard case .delivery(let delivery, _) = machine.take() else { return nil }
        return delivery
    }

    private static func settle(_ machine: inout Consumer.StateMachine, _ delivery: Delivery) -> Consumer.StateMachine.FinishResult {
        machine.finish(serial: UInt32(truncatingIfNeeded: delivery.token.consumer), offset: Int64(bitPattern: delivery.token.sequence))
    }

    private static func name(_ delivery: Delivery) -> String {
        "\(delivery.token.partition):\(delivery.token.sequence)"
    }

    @Test("runs are handed out in order within credit, a refetched record once, and commits stop at the first unsettled offset")
    func runsCreditRefetchAndContiguousCommits() throws {
        var machine = Consumer.StateMachine(consumerID: 7, credit: 3, prefetchBytes: 1 << 20)
        machine.assign([Self.p0, Self.p1])
        // p0 0...4, p1 0...1, then p0 3...5 again (fetched again after a pause).
        var fetched = [Self.run(Self.p0, 0...4), Self.run(Self.p1, 0...1)]
        _ = machine.receive(&fetched)
        var refetched = [Self.run(Self.p0, 3...5)]
        _ = machine.receive(&refetched)

        var out: [Delivery] = []
        while let delivery = Self.take(&machine) { out.append(delivery) }
        // Credit 3: only three are out.
        #expect(out.map(Self.name) == ["0:0", "0:1", "0:2"])
        #expect(out.allSatisfy { $0.token.consumer >> 32 == 7 })

        // Settling 1 first commits nothing: 0 is still running.
        guard case .settled = Self.settle(&machine, out[1]) else { Issue.record("0:1 was not settled"); return }
        #expect(machine.takeCommits().isEmpty)
        guard case .settled = Self.settle(&machine, out[0]) else { Issue.record("0:0 was not settled"); return }
        #expect(machine.takeCommits().map(\.offset) == [KafkaCommitOffset(topic: Self.topic, partition: 0, offset: 2)])
        // Settling twice is refused.
        guard case .notHeld = Self.settle(&machine, out[0]) else { Issue.record("0:0 was settled twice"); return }

        // The rest, settled as they come: the refetched 3 and 4 are skipped.
        var rest: [Delivery] = []
        while let delivery = Self.take(&machine) {
            rest.append(delivery)
            _ = Self.settle(&machine, delivery)
        }
        #expect(rest.map(Self.name) == ["0:3", "0:4", "1:0", "1:1", "0:5"])
        // 2 is still out: p0's commit point stays at it; p1's moves past its last record.
        let commits = Set(machine.takeCommits().map(\.offset))
        #expect(commits == [KafkaCommitOffset(topic: Self.topic, partition: 1, offset: 2)])
        _ = Self.settle(&machine, out[2])
        #expect(machine.takeCommits().map(\.offset) == [KafkaCommitOffset(topic: Self.topic, partition: 0, offset: 6)])
    }

    @Test("a revocation drops the partition's queued records, commits what finished, and its handed-out records only free credit")
    func revocationDropsQueuedRecordsAndReleasesHandedOutOnes() throws {
        var machine = Consumer.StateMachine(consumerID: 1, credit: 10, prefetchBytes: 1 << 20)
        machine.assign([Self.p0, Self.p1])
        var fetched = [Self.run(Self.p0, 0...3), Self.run(Self.p1, 0...3)]
        _ = machine.receive(&fetched)
        let first = try #require(Self.take(&machine))
        let second = try #require(Self.take(&machine))
        #expect([first, second].map(Self.name) == ["0:0", "0:1"])
        _ = Self.settle(&machine, first)

        let handback = machine.revoke([Self.p0], lost: false)
        #expect(handback.commits == [KafkaCommitOffset(topic: Self.topic, partition: 0, offset: 1)])
        #expect(handback.unsettled == [.init(partition: Self.p0, offset: 1)])

        // p0's queued 2 and 3 are gone; p1's records still come.
        var out: [String] = []
        while let delivery = Self.take(&machine) { out.append(Self.name(delivery)) }
        #expect(out == ["1:0", "1:1", "1:2", "1:3"])
        // The revoked record frees its credit without moving any commit.
        guard case .released = Self.settle(&machine, second) else { Issue.record("0:1 was not released"); return }
        #expect(machine.takeCommits().isEmpty)
    }

    /// The producer's state, shared by the test and the task waiting for a batch.
    private final class ProducerState: Sendable {
        let state = Mutex(KafkaProducerCore.State())

        /// What the sender of `batch` gets: at once when it is complete, else once reports
        /// complete it.
        func wait(for batch: UInt32) async throws -> [KafkaDeliveryReport] {
            try await withCheckedThrowingContinuation { continuation in
                if let ready = state.withLock({ $0.wait(for: batch, continuation) }) { continuation.resume(with: ready) }
            }
        }
    }

    private static func report(_ batch: UInt32, _ index: Int, offset: Int64) -> (UInt, Result<KafkaDeliveryReport, GantryError>) {
        (UInt(batch) << 32 | UInt(index), .success(KafkaDeliveryReport(topic: topic, partition: 0, offset: offset)))
    }

    @Test("delivery reports complete each batch once every record is reported, with reports only where asked")
    func deliveryReportsCompleteBatches() async throws {
        let producer = ProducerState()
        let (withReports, withoutReports) = producer.state.withLock { state in
            let a = state.register(count: 3, keepReports: true)
            let b = state.register(count: 2, keepReports: false)
            // As enqueueing claims them.
            state.batches[a]!.outstanding = 3
            state.batches[b]!.outstanding = 2
            state.inFlight = 5
            return (a, b)
        }
        // Reports before the senders wait: a batch completes only once its sender waits.
        let early = producer.state.withLock {
            $0.report([Self.report(withReports, 2, offset: 12), Self.report(withoutReports, 0, offset: 20), Self.report(withReports, 0, offset: 10)])
        }
        #expect(early.isEmpty)
        #expect(producer.state.withLock { $0.inFlight } == 2)

        let waiting = Task { try await producer.wait(for: withReports) }
        let deadline = ContinuousClock.now + .seconds(5)
        while producer.state.withLock({ $0.batches[withReports]?.waiter == nil }) {
            try #require(ContinuousClock.now < deadline, "the sender never waited")
            try await Task.sleep(for: .milliseconds(1))
        }
        let completed = producer.state.withLock {
            $0.report([Self.report(withoutReports, 1, offset: 21), Self.report(withReports, 1, offset: 11)])
        }
        // Only the waiting sender is resumed; the other batch waits for its sender.
        #expect(completed.count == 1)
        for (continuation, result) in completed { continuation.resume(with: result) }
        #expect(try await waiting.value.map(\.offset) == [10, 11, 12])
        #expect(producer.state.withLock { $0.inFlight } == 0)

        #expect(try await producer.wait(for: withoutReports).isEmpty)
        #expect(producer.state.withLock { $0.batches.isEmpty })
    }

    @Test("records claimed for enqueueing but refused by librdkafka are withdrawn from the batch")
    func refusedRecordsAreWithdrawn() {
        var state = KafkaProducerCore.State()
        let batch = state.register(count: 4, keepReports: false)
        state.batches[batch]!.outstanding = 4
        state.inFlight = 4
        state.withdraw(3, from: batch)
        #expect(state.inFlight == 1)
        #expect(state.batches[batch]?.outstanding == 1)
        // The sender gives up: the last report then ends the batch.
        _ = state.abandon(batch)
        let completed = state.report([Self.report(batch, 0, offset: 0)])
        #expect(completed.isEmpty)
        #expect(state.batches.isEmpty)
        #expect(state.inFlight == 0)
    }

    @Test("consumers fetch ahead up to the prefetch limit, not librdkafka's record-count limit, unless told otherwise")
    func consumerFetchLimits() {
        var configuration = KafkaTransportConfiguration(groupID: "bookkeeping")
        configuration.prefetchBytes = 8 << 20
        let derived = configuration.consumerKafkaConfiguration.properties
        #expect(derived["fetch.max.bytes"] == String(4 << 20))
        // librdkafka's default of 100,000 queued records stops fetching for a second.
        #expect(Int(derived["queued.min.messages"] ?? "") ?? 0 >= 1_000_000)

        configuration.consumerProperties["queued.min.messages"] = "5000"
        configuration.consumerProperties["fetch.max.bytes"] = "2000000"
        let chosen = configuration.consumerKafkaConfiguration.properties
        #expect(chosen["queued.min.messages"] == "5000")
        #expect(chosen["fetch.max.bytes"] == "2000000")
    }
}
