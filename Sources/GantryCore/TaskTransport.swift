/// A message to publish.
public struct OutgoingMessage: Sendable, Hashable {
    /// The message body (an encoded ``TaskEnvelope`` for task queues).
    public var body: [UInt8]
    /// The partitioning key (Kafka: run id, so a run's tasks share a partition's order); ignored
    /// by brokers without keys.
    public var key: String?
    /// 0...9, higher first, where the broker supports priorities (RabbitMQ).
    public var priority: UInt8
    /// Application headers.
    public var headers: [String: String]

    /// Creates a message.
    public init(body: [UInt8], key: String? = nil, priority: UInt8 = 0, headers: [String: String] = [:]) {
        self.body = body
        self.key = key
        self.priority = priority
        self.headers = headers
    }
}

/// A message received from a transport, to be settled exactly once with ``TaskTransport/ack(_:)``,
/// ``TaskTransport/nack(_:requeue:)`` or ``TaskTransport/deadLetter(_:reason:)``.
public struct Delivery: Sendable {
    /// The message body.
    public var body: [UInt8]
    /// The queue (or topic) it came from, as the application names it.
    public var queue: String
    /// The key it was published with, if any.
    public var key: String?
    /// Application headers.
    public var headers: [String: String]
    /// True when the broker says this message was delivered before (and not acknowledged).
    public var redelivered: Bool
    /// The transport's handle for settling it (delivery tag, partition and offset, …).
    public var token: DeliveryToken

    /// Creates a delivery.
    public init(body: [UInt8], queue: String, key: String? = nil, headers: [String: String] = [:], redelivered: Bool = false, token: DeliveryToken) {
        self.body = body
        self.queue = queue
        self.key = key
        self.headers = headers
        self.redelivered = redelivered
        self.token = token
    }
}

/// A transport's opaque handle for one delivery.
public struct DeliveryToken: Sendable, Hashable {
    /// Which consumer (connection, channel, generation) the delivery came through.
    public var consumer: UInt64
    /// The broker's sequence for it: an AMQP delivery tag, a Kafka offset, an in-memory id.
    public var sequence: UInt64
    /// Kafka: the partition; others: 0.
    public var partition: Int32

    /// Creates a token.
    public init(consumer: UInt64, sequence: UInt64, partition: Int32 = 0) {
        self.consumer = consumer
        self.sequence = sequence
        self.partition = partition
    }
}

/// The stream of deliveries of one consumer. Ends when the consumer is closed; throws if the
/// connection is lost for good.
///
/// Two ways to stop: ``stopIntake()`` ends the stream but keeps the deliveries already handed
/// out settle-able (a worker draining on shutdown); cancelling the iterating task abandons the
/// consumer, and whatever it had not settled is delivered again to another consumer.
public struct DeliveryStream: AsyncSequence, Sendable {
    public typealias Element = Delivery
    private let backing: Backing
    private let stop: @Sendable () -> Void

    private enum Backing: Sendable {
        case stream(AsyncThrowingStream<Delivery, any Error>)
        case source(any DeliverySource)
    }

    /// Wraps a stream fed by a transport; `stopIntake` ends it without abandoning what it delivered.
    public init(_ stream: AsyncThrowingStream<Delivery, any Error>, stopIntake: @escaping @Sendable () -> Void) {
        self.backing = .stream(stream)
        self.stop = stopIntake
    }

    /// A stream that asks `source` for each delivery: for transports that hand deliveries out
    /// on demand, without a stream's buffer and per-element generic machinery in between.
    public init(source: any DeliverySource, stopIntake: @escaping @Sendable () -> Void) {
        self.backing = .source(source)
        self.stop = stopIntake
    }

    /// Takes no more deliveries: the stream ends once those already buffered are drained
    /// (buffered ones are given back to the broker), and deliveries already handed out can
    /// still be settled.
    public func stopIntake() {
        stop()
    }

    public func makeAsyncIterator() -> AsyncIterator {
        switch backing {
        case .stream(let stream): AsyncIterator(backing: .stream(stream.makeAsyncIterator()))
        case .source(let source): AsyncIterator(backing: .source(source))
        }
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        fileprivate enum Backing {
            case stream(AsyncThrowingStream<Delivery, any Error>.AsyncIterator)
            case source(any DeliverySource)
            case finished
        }

        fileprivate var backing: Backing

        public mutating func next() async throws -> Delivery? {
            switch backing {
            case .stream(var iterator):
                // Moved out while it runs, so that the enum does not hold a second reference.
                backing = .finished
                defer { backing = .stream(iterator) }
                return try await iterator.next()
            case .source(let source):
                do {
                    if let delivery = try await source.next() { return delivery }
                } catch {
                    backing = .finished
                    throw error
                }
                backing = .finished
                return nil
            case .finished:
                return nil
            }
        }
    }
}

/// Where a ``DeliveryStream`` made with ``DeliveryStream/init(source:stopIntake:)`` gets its
/// deliveries.
public protocol DeliverySource: AnyObject, Sendable {
    /// The next delivery, waiting for one if needed; nil when the stream ends. Called by one
    /// task at a time; not called again after it returned nil or threw.
    func next() async throws -> Delivery?
}

/// How tasks travel between producers, coordinators and workers: Kafka, RabbitMQ, or memory.
///
/// Delivery is at least once: a delivery that is not acknowledged (the consumer died, it was
/// nacked with requeue) comes again. Every implementation passes the same conformance suite.
public protocol TaskTransport: Sendable {
    /// A short name for logs and errors (`kafka`, `rabbitmq`, `memory`).
    var name: String { get }

    /// Makes sure `queues` (and their dead-letter destinations) exist. Idempotent.
    func declare(queues: [String]) async throws

    /// Publishes `messages` to `queue` and returns once the broker has confirmed every one.
    func publish(_ messages: [OutgoingMessage], to queue: String) async throws

    /// Starts consuming `queues` with at most `credit` deliveries unsettled at once: a worker
    /// never takes more than it can run.
    func consume(queues: [String], credit: Int) async throws -> DeliveryStream

    /// Settles a delivery as done. For Kafka the offset is committed once every earlier record
    /// of its partition is settled too.
    func ack(_ delivery: Delivery) async throws

    /// Settles a delivery as not done: with `requeue` it is delivered again (to any consumer).
    func nack(_ delivery: Delivery, requeue: Bool) async throws

    /// Moves a delivery that can never be processed to the queue's dead-letter destination, with
    /// `reason` in its `x-gantry-reason` header, and settles it.
    func deadLetter(_ delivery: Delivery, reason: String) async throws

    /// Messages waiting in `queue`, where the broker can tell; nil where it cannot.
    func depth(of queue: String) async throws -> Int?

    /// Stops every consumer (their streams end; unsettled deliveries will be redelivered) and
    /// closes the connections.
    func close() async
}

extension TaskTransport {
    /// Publishes one message.
    public func publish(_ message: OutgoingMessage, to queue: String) async throws {
        try await publish([message], to: queue)
    }

    /// The dead-letter destination of `queue`.
    public func deadLetterQueue(of queue: String) -> String { queue + ".dlq" }
}

/// The header that carries the reason a message was dead-lettered.
public let deadLetterReasonHeader = "x-gantry-reason"
