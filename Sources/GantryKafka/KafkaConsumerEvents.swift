/// The sequence of a consumer's ``KafkaConsumerEvent``s.
public struct KafkaConsumerEvents: AsyncSequence, Sendable {
    /// Each element is one event.
    public typealias Element = KafkaConsumerEvent

    let consumer: KafkaConsumer

    /// Makes the iterator. Only one iterator should be used at a time.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(consumer: consumer)
    }

    /// Takes events from the consumer's buffer.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let consumer: KafkaConsumer

        /// The next event; nil once the consumer is closed.
        public mutating func next() async throws -> KafkaConsumerEvent? {
            try await consumer.core.nextEvent()
        }
    }
}
