import Synchronization

/// A ``TaskTransport`` inside one process, for unit tests and single-process runs.
///
/// Same semantics as the brokers: at-least-once delivery, per-consumer credit, redelivery (with
/// `redelivered` set) of everything a consumer had not settled when it stopped or nacked with
/// requeue, and dead-lettering to `<queue>.dlq`.
public final class InMemoryTransport: TaskTransport {
    public let name = "memory"

    private struct Message {
        var body: [UInt8]
        var key: String?
        var headers: [String: String]
        var redelivered: Bool
        var priority: UInt8
    }

    private struct Consumer {
        var queues: [String]
        var credit: Int
        var unsettled: [UInt64: (queue: String, message: Message)] = [:]
        var continuation: AsyncThrowingStream<Delivery, any Error>.Continuation
        var nextQueue = 0
        /// Stopped taking deliveries; what it holds can still be settled.
        var draining = false
    }

    private struct State {
        var queues: [String: [Message]] = [:]
        var consumers: [UInt64: Consumer] = [:]
        var nextConsumer: UInt64 = 1
        var nextSequence: UInt64 = 1
        var closed = false
    }

    private let state = Mutex(State())

    /// Creates an empty transport.
    public init() {}

    public func declare(queues: [String]) async throws {
        state.withLock { state in
            for queue in queues {
                if state.queues[queue] == nil { state.queues[queue] = [] }
                if state.queues[deadLetterQueue(of: queue)] == nil { state.queues[deadLetterQueue(of: queue)] = [] }
            }
        }
    }

    public func publish(_ messages: [OutgoingMessage], to queue: String) async throws {
        try state.withLock { state in
            guard !state.closed else { throw GantryError(.closed, "the in-memory transport is closed") }
            for message in messages {
                Self.enqueue(&state, queue, Message(body: message.body, key: message.key, headers: message.headers, redelivered: false, priority: message.priority))
            }
            Self.dispatch(&state)
        }
    }

    public func consume(queues: [String], credit: Int) async throws -> DeliveryStream {
        guard credit >= 1 else { throw GantryError(.invalidArgument, "consumer credit must be at least 1, got \(credit)") }
        let (stream, continuation) = AsyncThrowingStream<Delivery, any Error>.makeStream()
        let id = try state.withLock { state -> UInt64 in
            guard !state.closed else { throw GantryError(.closed, "the in-memory transport is closed") }
            let id = state.nextConsumer
            state.nextConsumer += 1
            state.consumers[id] = Consumer(queues: queues, credit: credit, continuation: continuation)
            for queue in queues where state.queues[queue] == nil { state.queues[queue] = [] }
            Self.dispatch(&state)
            return id
        }
        // A consumer abandoned by its task (cancelled) gives back what it held; one that stopped
        // its intake keeps its deliveries settle-able.
        continuation.onTermination = { [weak self] termination in
            if case .cancelled = termination { self?.stopConsumer(id) }
        }
        return DeliveryStream(stream) { [weak self] in self?.drainConsumer(id) }
    }

    public func ack(_ delivery: Delivery) async throws {
        try settle(delivery) { _, _, _ in }
    }

    public func nack(_ delivery: Delivery, requeue: Bool) async throws {
        try settle(delivery) { state, queue, message in
            guard requeue else { return }
            var again = message
            again.redelivered = true
            state.queues[queue, default: []].insert(again, at: 0)
        }
    }

    public func deadLetter(_ delivery: Delivery, reason: String) async throws {
        let dlq = deadLetterQueue(of: delivery.queue)
        try settle(delivery) { state, _, message in
            var dead = message
            dead.headers[deadLetterReasonHeader] = reason
            dead.redelivered = false
            Self.enqueue(&state, dlq, dead)
        }
    }

    public func depth(of queue: String) async throws -> Int? {
        state.withLock { $0.queues[queue]?.count ?? 0 }
    }

    public func close() async {
        let continuations = state.withLock { state -> [AsyncThrowingStream<Delivery, any Error>.Continuation] in
            state.closed = true
            let all = state.consumers.values.map(\.continuation)
            for id in Array(state.consumers.keys) { Self.removeConsumer(&state, id) }
            return all
        }
        for continuation in continuations { continuation.finish() }
    }

    // MARK: Internals

    private func settle(_ delivery: Delivery, _ body: (inout State, String, Message) -> Void) throws {
        try state.withLock { state in
            guard let held = state.consumers[delivery.token.consumer]?.unsettled.removeValue(forKey: delivery.token.sequence) else {
                throw GantryError(.invalidArgument, "delivery \(delivery.token.sequence) is not held by a live consumer (already settled, or its consumer stopped and it was redelivered)")
            }
            body(&state, held.queue, held.message)
            Self.dispatch(&state)
        }
    }

    private func drainConsumer(_ id: UInt64) {
        let continuation = state.withLock { state -> AsyncThrowingStream<Delivery, any Error>.Continuation? in
            state.consumers[id]?.draining = true
            return state.consumers[id]?.continuation
        }
        continuation?.finish()
    }

    private func stopConsumer(_ id: UInt64) {
        state.withLock { state in
            Self.removeConsumer(&state, id)
            Self.dispatch(&state)
        }
    }

    private static func removeConsumer(_ state: inout State, _ id: UInt64) {
        guard let consumer = state.consumers.removeValue(forKey: id) else { return }
        // Unsettled deliveries go back to the front of their queues, marked as redelivered.
        for (_, held) in consumer.unsettled.sorted(by: { $0.key > $1.key }) {
            var again = held.message
            again.redelivered = true
            state.queues[held.queue, default: []].insert(again, at: 0)
        }
    }

    private static func enqueue(_ state: inout State, _ queue: String, _ message: Message) {
        var messages = state.queues[queue] ?? []
        // Higher priority first; equal priorities keep their order.
        if let position = messages.firstIndex(where: { $0.priority < message.priority }) {
            messages.insert(message, at: position)
        } else {
            messages.append(message)
        }
        state.queues[queue] = messages
    }

    /// Hands queued messages to consumers with free credit, round-robin over their queues.
    private static func dispatch(_ state: inout State) {
        var progress = true
        while progress {
            progress = false
            for id in state.consumers.keys.sorted() {
                guard var consumer = state.consumers[id], !consumer.draining, consumer.unsettled.count < consumer.credit else { continue }
                for step in 0..<consumer.queues.count {
                    let queue = consumer.queues[(consumer.nextQueue + step) % consumer.queues.count]
                    guard var messages = state.queues[queue], !messages.isEmpty else { continue }
                    let message = messages.removeFirst()
                    state.queues[queue] = messages
                    let sequence = state.nextSequence
                    state.nextSequence += 1
                    consumer.unsettled[sequence] = (queue, message)
                    consumer.nextQueue = (consumer.nextQueue + step + 1) % consumer.queues.count
                    consumer.continuation.yield(Delivery(
                        body: message.body, queue: queue, key: message.key, headers: message.headers, redelivered: message.redelivered,
                        token: DeliveryToken(consumer: id, sequence: sequence)))
                    progress = true
                    break
                }
                state.consumers[id] = consumer
            }
        }
    }
}
