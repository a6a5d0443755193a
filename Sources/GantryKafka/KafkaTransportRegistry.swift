import Synchronization

/// What the consumers of one ``KafkaTransport`` share: the live consumers by id (a delivery's
/// token names its consumer), and the records that were handed out but never settled.
///
/// Kafka keeps no delivery count, so the transport remembers, for its own consumers, which
/// records a stopped or revoked consumer left unsettled: when one of them comes again it is
/// marked `redelivered`. The memory is bounded (``unsettledLimit``) and does not outlive the
/// transport; a record redelivered to another process is not marked (see ``KafkaTransport``).
final class KafkaTransportRegistry: Sendable {
    /// A record, by partition and offset.
    struct RecordID: Hashable, Sendable {
        var partition: KafkaTopicPartition
        var offset: Int64
    }

    /// At most this many unsettled records are remembered; beyond it, redeliveries go unmarked
    /// rather than memory growing without bound.
    static let unsettledLimit = 100_000

    private struct State {
        var consumers: [UInt64: KafkaTransportConsumer] = [:]
        var nextID: UInt64 = 1
        var closed = false
        var unsettled: Set<RecordID> = []
    }

    private let state = Mutex(State())

    /// A new consumer id; ids fit in 32 bits because tokens carry the assignment serial below
    /// them.
    func makeConsumerID() -> UInt64 {
        state.withLock { state in
            let id = state.nextID
            state.nextID = state.nextID >= UInt64(UInt32.max) ? 1 : state.nextID + 1
            return id
        }
    }

    var isClosed: Bool { state.withLock { $0.closed } }

    /// Registers a started consumer; false once the transport is closed.
    func add(_ consumer: KafkaTransportConsumer) -> Bool {
        state.withLock { state in
            guard !state.closed else { return false }
            state.consumers[consumer.id] = consumer
            return true
        }
    }

    func remove(_ consumer: KafkaTransportConsumer) {
        _ = state.withLock { $0.consumers.removeValue(forKey: consumer.id) }
    }

    /// The consumer a delivery token names, if it is still registered.
    func consumer(forToken consumer: UInt64) -> KafkaTransportConsumer? {
        let id = consumer >> 32
        return state.withLock { $0.consumers[id] }
    }

    var consumers: [KafkaTransportConsumer] {
        state.withLock { Array($0.consumers.values) }
    }

    /// Marks the transport closed and returns every consumer, to be stopped.
    func close() -> [KafkaTransportConsumer] {
        state.withLock { state in
            state.closed = true
            return Array(state.consumers.values)
        }
    }

    func rememberUnsettled(_ records: [RecordID]) {
        guard !records.isEmpty else { return }
        state.withLock { state in
            for record in records where state.unsettled.count < Self.unsettledLimit {
                state.unsettled.insert(record)
            }
        }
    }

    /// Sets `redelivered` on the records a consumer of this transport left unsettled before,
    /// and forgets them.
    func markRedelivered(_ runs: inout [KafkaTransportConsumer.FetchedRun]) {
        state.withLock { state in
            guard !state.unsettled.isEmpty else { return }
            for run in runs.indices {
                let partition = runs[run].partition
                for index in runs[run].deliveries.indices {
                    guard let offset = runs[run].deliveries[index]?.token.sequence else { continue }
                    if state.unsettled.remove(RecordID(partition: partition, offset: Int64(bitPattern: offset))) != nil {
                        runs[run].deliveries[index]?.redelivered = true
                    }
                }
            }
        }
    }
}
