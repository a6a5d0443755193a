import GantryCore
import Logging
import Synchronization

/// The consumer behind one ``GantryCore/DeliveryStream`` of a ``RabbitMQTransport``.
///
/// It owns its own AMQP connection: the prefetch (`basic.qos`) then bounds exactly this
/// stream's unsettled deliveries, across all its queues, and a lost consumer connection never
/// disturbs publishers or other streams.
///
/// A driver task pumps deliveries from one `AMQPConsumer` per queue into the stream. When the
/// connection fails it reconnects with backoff, declares and consumes again, and the stream
/// goes on; the broker requeues what the dead connection had not settled and delivers it
/// again (flagged redelivered). Each connection is a new *generation*, carried in every
/// ``GantryCore/DeliveryToken/consumer`` with the consumer's id (`id << 32 | generation`);
/// settling a delivery of an older generation is refused, because its delivery tag would name
/// a different message on the new connection.
///
/// Three ends: ``stopIntake()`` (basic.cancel, the stream ends, the connection stays until what
/// was handed out is settled), ``stop()`` (the connection closes; the broker requeues everything
/// unsettled), and giving up reconnecting (the stream throws the last error).
final class RabbitMQTransportConsumer: Sendable {
    /// One live connection: its client, generation and a consumer per queue.
    struct Session: Sendable {
        let client: AMQPClient
        let generation: UInt32
        let consumers: [(queue: String, consumer: AMQPConsumer)]
    }

    private enum Phase {
        case running
        /// Intake stopped: no new deliveries; waiting for the handed-out ones to be settled.
        case draining
        case stopped
    }

    private struct State {
        var phase: Phase = .running
        var generation: UInt32 = 0
        /// The live session of `generation`; nil while reconnecting and after the end.
        var session: Session?
        /// Deliveries of `generation` handed to the stream and not settled yet.
        var outstanding = 0
        var driver: Task<Void, Never>?
        /// basic.cancel of every consumer after ``stopIntake()``; settlements wait for it so
        /// that an ack, which frees prefetch credit, cannot draw a new delivery first.
        var cancellingIntake: Task<Void, Never>?
        /// The driver, waiting for the last outstanding delivery of a draining consumer.
        var drainWaiter: CheckedContinuation<Void, Never>?
    }

    /// The consumer's number within its transport, the high half of every token's `consumer`.
    let id: UInt32
    private let queues: [String]
    private let credit: UInt16
    private let configuration: RabbitMQTransportConfiguration
    private let amqp: AMQPConfiguration
    private let codec: RabbitMQTransportCodec
    private let logger: Logger
    private let continuation: AsyncThrowingStream<Delivery, any Error>.Continuation
    private let state = Mutex(State())

    init(
        id: UInt32,
        queues: [String],
        credit: UInt16,
        configuration: RabbitMQTransportConfiguration,
        logger: Logger,
        continuation: AsyncThrowingStream<Delivery, any Error>.Continuation
    ) {
        self.id = id
        self.queues = queues
        self.credit = credit
        self.configuration = configuration
        var amqp = configuration.amqp
        amqp.connectionName = "\(configuration.amqp.connectionName)-consumer-\(id)"
        self.amqp = amqp
        self.codec = RabbitMQTransportCodec(configuration)
        var logger = logger
        logger[metadataKey: "gantry.consumer"] = "\(id)"
        logger[metadataKey: "gantry.queues"] = "\(queues.joined(separator: ","))"
        self.logger = logger
        self.continuation = continuation
    }

    /// The token of delivery tag `tag` on connection `generation` of consumer `id`.
    static func token(consumer id: UInt32, generation: UInt32, tag: UInt64) -> DeliveryToken {
        DeliveryToken(consumer: UInt64(id) << 32 | UInt64(generation), sequence: tag)
    }

    /// The consumer id and generation a token names.
    static func split(_ token: DeliveryToken) -> (id: UInt32, generation: UInt32) {
        (UInt32(truncatingIfNeeded: token.consumer >> 32), UInt32(truncatingIfNeeded: token.consumer))
    }

    // MARK: Lifecycle

    /// Opens the first connection (retrying retriable failures like a reconnect) and starts
    /// the driver. `onEnd` runs once the consumer is over and its connection closed.
    func start(onEnd: @escaping @Sendable () -> Void) async throws {
        let first: Session
        do {
            first = try await establish()
        } catch {
            continuation.finish()
            onEnd()
            throw error
        }
        let driver = Task {
            await self.drive(first)
            onEnd()
        }
        let stopped: Bool = state.withLock { state in
            state.driver = driver
            return state.phase == .stopped
        }
        if stopped { driver.cancel() }
    }

    /// Takes no more deliveries: cancels the broker consumers (they requeue what they buffered),
    /// ends the stream after what it already holds, and keeps the connection until every
    /// delivery handed out is settled.
    func stopIntake() {
        let consumers: [AMQPConsumer]? = state.withLock { state in
            guard case .running = state.phase else { return nil }
            state.phase = .draining
            guard let session = state.session else { return [] }
            let consumers = session.consumers.map(\.consumer)
            state.cancellingIntake = Task {
                for consumer in consumers {
                    // A failure means the connection is gone, which cancels consumers too.
                    try? await consumer.cancel()
                }
            }
            return consumers
        }
        guard let consumers else { return }
        if consumers.isEmpty {
            // Reconnecting: nothing is held on a live connection, so there is nothing to drain.
            stop()
        }
    }

    /// Ends the consumer: closes its connection, so the broker requeues everything unsettled,
    /// and finishes the stream. Idempotent.
    func stop() {
        let (driver, waiter): (Task<Void, Never>?, CheckedContinuation<Void, Never>?) = state.withLock { state in
            guard state.phase != .stopped else { return (nil, nil) }
            state.phase = .stopped
            defer { state.drainWaiter = nil }
            return (state.driver, state.drainWaiter)
        }
        waiter?.resume()
        driver?.cancel()
    }

    /// ``stop()``, then waits until the connection is closed.
    func stopAndWait() async {
        stop()
        let driver = state.withLock { $0.driver }
        await driver?.value
    }

    // MARK: Settling

    /// Runs `settle` with the client of the delivery's connection.
    ///
    /// - Throws: `.closed` when that connection is gone (the broker has requeued the message and
    ///   will deliver it again) or the consumer stopped; what `settle` throws otherwise
    ///   (`.invalidArgument` for a delivery already settled).
    func settle(_ token: DeliveryToken, _ operation: String, _ settle: (AMQPClient, UInt64) async throws -> Void) async throws {
        let generation = Self.split(token).generation
        let (client, cancelling) = try liveClient(generation, token: token, operation)
        await cancelling?.value
        do {
            try await settle(client, token.sequence)
        } catch let error as GantryError where error.isConnectionLoss {
            settled(generation)
            throw GantryError(
                .closed,
                "\(operation) of delivery \(token.sequence) (consumer \(id), connection \(generation)) did not reach RabbitMQ: the connection was lost; the broker requeues the message and delivers it again",
                underlying: error,
                isRetriable: false
            )
        }
        settled(generation)
    }

    /// Fails unless the delivery's connection is still the live one.
    func checkLive(_ token: DeliveryToken, _ operation: String) throws {
        _ = try liveClient(Self.split(token).generation, token: token, operation)
    }

    private func liveClient(_ generation: UInt32, token: DeliveryToken, _ operation: String) throws -> (AMQPClient, Task<Void, Never>?) {
        enum Outcome { case live(AMQPClient, Task<Void, Never>?), stale(current: UInt32), stopped }
        let outcome: Outcome = state.withLock { state in
            if case .stopped = state.phase { return .stopped }
            guard state.generation == generation, let session = state.session else { return .stale(current: state.generation) }
            return .live(session.client, state.cancellingIntake)
        }
        switch outcome {
        case .live(let client, let cancelling):
            return (client, cancelling)
        case .stale(let current):
            throw GantryError(
                .closed,
                "\(operation) of delivery \(token.sequence) refused: it came through connection \(generation) of RabbitMQ consumer \(id), which was lost (the consumer is on connection \(current) now); the broker requeued the message and delivers it again, so settle that new delivery instead",
                isRetriable: false
            )
        case .stopped:
            throw GantryError(
                .closed,
                "\(operation) of delivery \(token.sequence) refused: RabbitMQ consumer \(id) has stopped and closed its connection; the broker requeued the message and delivers it again",
                isRetriable: false
            )
        }
    }

    /// One handed-out delivery of `generation` is settled (or lost with its connection).
    private func settled(_ generation: UInt32) {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { state in
            guard state.generation == generation, state.outstanding > 0 else { return nil }
            state.outstanding -= 1
            guard case .draining = state.phase, state.outstanding == 0 else { return nil }
            defer { state.drainWaiter = nil }
            return state.drainWaiter
        }
        waiter?.resume()
    }

    // MARK: Driver

    private func drive(_ first: Session) async {
        var session = first
        while true {
            let ending = await pump(session)
            let phase = state.withLock { $0.phase }
            if case .draining = phase {
                // The pump stopped because intake did: the stream may end after what it holds,
                // and the connection must live until those deliveries are settled.
                continuation.finish()
                await waitForDrain()
            }
            end(session)
            await session.client.close()
            guard case .running = phase, let ending else { break }
            logger.warning("RabbitMQ consumer lost its connection; reconnecting", metadata: [
                "amqp.connection": "\(amqp.connectionName)", "amqp.generation": "\(session.generation)", "error": "\(ending)",
            ])
            do {
                session = try await establish()
            } catch {
                let final = GantryError.wrapping(error, during: "reconnecting RabbitMQ consumer \(id)")
                if final.code != .closed && final.code != .cancelled {
                    logger.error("RabbitMQ consumer gave up reconnecting", metadata: ["error": "\(final)"])
                    continuation.finish(throwing: final)
                }
                break
            }
            logger.info("RabbitMQ consumer reconnected", metadata: ["amqp.connection": "\(amqp.connectionName)", "amqp.generation": "\(session.generation)"])
        }
        continuation.finish()
    }

    /// Moves deliveries into the stream until a consumer ends: returns why, or nil when the
    /// stream's reader went away.
    private func pump(_ session: Session) async -> GantryError? {
        await withTaskGroup(of: GantryError?.self) { group in
            for (queue, consumer) in session.consumers {
                group.addTask {
                    do {
                        for try await amqpDelivery in consumer {
                            let token = Self.token(consumer: self.id, generation: session.generation, tag: amqpDelivery.deliveryTag)
                            let delivery = self.codec.delivery(amqpDelivery, queue: queue, token: token)
                            // Counted before it is visible, so a quick ack cannot count down first.
                            guard self.handOut(session.generation) else {
                                // Intake stopped after the broker sent it: give it straight back
                                // rather than hold it until the drain ends.
                                try? await session.client.nack(deliveryTag: amqpDelivery.deliveryTag, requeue: true)
                                return nil
                            }
                            if case .terminated = self.continuation.yield(delivery) {
                                self.settled(session.generation)
                                return nil
                            }
                        }
                        return GantryError(.connectionFailed, "the consumer on queue '\(queue)' ended", isRetriable: true)
                    } catch {
                        return GantryError.wrapping(error, during: "consuming queue '\(queue)'")
                    }
                }
            }
            // The first consumer to end decides; the others are cancelled with it.
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    private func handOut(_ generation: UInt32) -> Bool {
        state.withLock { state in
            guard case .running = state.phase, state.generation == generation else { return false }
            state.outstanding += 1
            return true
        }
    }

    private func waitForDrain() async {
        await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
            let done: Bool = state.withLock { state in
                guard case .draining = state.phase, state.outstanding > 0 else { return true }
                state.drainWaiter = waiter
                return false
            }
            if done { waiter.resume() }
        }
    }

    /// The session is over: its deliveries can no longer be settled.
    private func end(_ session: Session) {
        state.withLock { state in
            guard state.generation == session.generation else { return }
            state.session = nil
            state.outstanding = 0
        }
    }

    // MARK: Connecting

    /// Connects, sets the prefetch, declares and consumes every queue; retries retriable
    /// failures with backoff until the configured reconnect timeout.
    private func establish() async throws -> Session {
        var backoff = RabbitMQTransportBackoff(configuration)
        while true {
            var client: AMQPClient?
            let error: GantryError
            do {
                try checkRunning()
                let connected = try await AMQPClient.connect(amqp, logger: logger)
                client = connected
                // One queue: a per-consumer limit. Several: a limit for the whole channel, which
                // only this stream's consumers use, so `credit` bounds them together.
                try await connected.qos(prefetchCount: credit, global: queues.count > 1)
                for queue in queues {
                    try await codec.declare(queue, on: connected)
                }
                var consumers: [(queue: String, consumer: AMQPConsumer)] = []
                for queue in queues {
                    consumers.append((queue, try await connected.consume(queue: codec.brokerName(queue))))
                }
                return try activate(client: connected, consumers: consumers)
            } catch let failure {
                error = GantryError.wrapping(failure, during: "starting RabbitMQ consumer \(id) on \(queues.joined(separator: ", "))")
            }
            await client?.close()
            try checkRunning()
            let wait = error.isRetriable && !Task.isCancelled ? backoff.next() : nil
            guard let wait else { throw error }
            logger.warning("cannot start RabbitMQ consumer; retrying", metadata: ["retry_in": "\(wait)", "error": "\(error)"])
            do {
                try await Task.sleep(for: wait)
            } catch {
                throw GantryError(.cancelled, "reconnecting RabbitMQ consumer \(id) was cancelled")
            }
        }
    }

    /// Makes a new connection the live generation, unless the consumer stopped meanwhile.
    private func activate(client: AMQPClient, consumers: [(queue: String, consumer: AMQPConsumer)]) throws -> Session {
        let session: Session? = state.withLock { state in
            guard case .running = state.phase else { return nil }
            state.generation += 1
            let session = Session(client: client, generation: state.generation, consumers: consumers)
            state.session = session
            state.outstanding = 0
            return session
        }
        guard let session else { throw stoppedError }
        return session
    }

    private func checkRunning() throws {
        let running = state.withLock { state in
            if case .running = state.phase { return true }
            return false
        }
        if !running { throw stoppedError }
    }

    private var stoppedError: GantryError {
        GantryError(.closed, "RabbitMQ consumer \(id) on \(queues.joined(separator: ", ")) was stopped")
    }
}
