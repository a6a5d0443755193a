import GantryCore
import Logging
import Synchronization

/// The reconnecting AMQP connection a ``RabbitMQTransport`` publishes, declares and reads queue
/// depths on.
///
/// Holds at most one ``AMQPClient``. The first caller that finds no working client starts one
/// connect loop (with backoff); callers arriving meanwhile wait for that loop instead of each
/// opening a connection. Every new client gets the next generation number, so a caller that
/// saw a client fail retires exactly that one, never a newer client another caller already
/// made.
final class RabbitMQTransportConnection: Sendable {
    /// A client and the generation it belongs to.
    struct Lease: Sendable {
        let client: AMQPClient
        let generation: UInt64
    }

    private typealias Waiter = CheckedContinuation<Lease, any Error>

    private enum Phase {
        /// No client; the next ``acquire()`` starts connecting.
        case idle
        /// A connect loop runs; `waiters` get its client or its final error.
        case connecting(waiters: [UInt64: Waiter])
        case connected(Lease)
        case closed
    }

    private struct State {
        var phase: Phase = .idle
        var generation: UInt64 = 0
        var nextWaiter: UInt64 = 0
        var loop: Task<Void, Never>?
    }

    private let state = Mutex(State())
    private let configuration: RabbitMQTransportConfiguration
    private let amqp: AMQPConfiguration
    private let logger: Logger
    /// Runs on every new client before anyone uses it (confirm mode for publishing).
    private let prepare: @Sendable (AMQPClient) async throws -> Void

    init(configuration: RabbitMQTransportConfiguration, name: String, logger: Logger, prepare: @escaping @Sendable (AMQPClient) async throws -> Void) {
        self.configuration = configuration
        var amqp = configuration.amqp
        amqp.connectionName = name
        self.amqp = amqp
        self.logger = logger
        self.prepare = prepare
    }

    private var closedError: GantryError {
        GantryError(.closed, "the RabbitMQ transport for \(amqp.endpoint) is closed")
    }

    /// A working client: the current one, or a new one once the connect loop has made it.
    ///
    /// - Throws: the connect loop's last error when it gave up (a non-retriable refusal such as
    ///   a wrong password at once, a retriable one after ``RabbitMQTransportConfiguration/reconnectTimeout``);
    ///   `.closed` after ``close()``; `.cancelled` when the calling task is cancelled.
    func acquire() async throws -> Lease {
        let fast: Lease? = state.withLock { state in
            if case .connected(let lease) = state.phase, lease.client.isOpen { return lease }
            return nil
        }
        if let fast { return fast }

        let id = state.withLock { state in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (waiter: Waiter) in
                enum Action { case resume(Lease), fail(GantryError), wait }
                let action: Action = state.withLock { state in
                    // Checked under the lock: either this sees the cancellation, or the
                    // cancellation handler (which takes the lock too) sees the waiter.
                    if Task.isCancelled { return .fail(GantryError(.cancelled, "waiting for the RabbitMQ connection to \(amqp.endpoint) was cancelled")) }
                    switch state.phase {
                    case .connected(let lease) where lease.client.isOpen:
                        return .resume(lease)
                    case .connected(let lease):
                        // It failed and nobody retired it yet.
                        state.phase = .connecting(waiters: [id: waiter])
                        state.loop = startLoop(retiring: lease.client)
                        return .wait
                    case .idle:
                        state.phase = .connecting(waiters: [id: waiter])
                        state.loop = startLoop(retiring: nil)
                        return .wait
                    case .connecting(var waiters):
                        waiters[id] = waiter
                        state.phase = .connecting(waiters: waiters)
                        return .wait
                    case .closed:
                        return .fail(closedError)
                    }
                }
                switch action {
                case .resume(let lease): waiter.resume(returning: lease)
                case .fail(let error): waiter.resume(throwing: error)
                case .wait: break
                }
            }
        } onCancel: {
            let waiter: Waiter? = state.withLock { state in
                guard case .connecting(var waiters) = state.phase, let waiter = waiters.removeValue(forKey: id) else { return nil }
                state.phase = .connecting(waiters: waiters)
                return waiter
            }
            waiter?.resume(throwing: GantryError(.cancelled, "waiting for the RabbitMQ connection to \(amqp.endpoint) was cancelled"))
        }
    }

    /// Drops `lease` after it failed, unless a newer client already replaced it, and closes it.
    func retire(_ lease: Lease) async {
        state.withLock { state in
            if case .connected(let current) = state.phase, current.generation == lease.generation {
                state.phase = .idle
            }
        }
        await lease.client.close()
    }

    /// Closes the client, stops connecting and fails every waiter with `.closed`. Idempotent.
    func close() async {
        let (waiters, client, loop): ([Waiter], AMQPClient?, Task<Void, Never>?) = state.withLock { state in
            defer {
                state.phase = .closed
                state.loop = nil
            }
            switch state.phase {
            case .connecting(let waiters): return (Array(waiters.values), nil, state.loop)
            case .connected(let lease): return ([], lease.client, state.loop)
            case .idle, .closed: return ([], nil, state.loop)
            }
        }
        for waiter in waiters { waiter.resume(throwing: closedError) }
        loop?.cancel()
        await loop?.value
        await client?.close()
    }

    // MARK: Connect loop

    /// Called under the lock; the task only starts running after the lock is released.
    private func startLoop(retiring old: AMQPClient?) -> Task<Void, Never> {
        Task {
            // A failed client's thread has already ended; close() only reaps it.
            await old?.close()
            await self.connectLoop()
        }
    }

    private func connectLoop() async {
        var backoff = RabbitMQTransportBackoff(configuration)
        while true {
            let error: GantryError
            do {
                let client = try await AMQPClient.connect(amqp, logger: logger)
                do {
                    try await prepare(client)
                } catch {
                    await client.close()
                    throw error
                }
                if let unwanted = publish(client) { await unwanted.close() }
                return
            } catch let failure {
                error = GantryError.wrapping(failure, during: "connecting to RabbitMQ at \(amqp.endpoint)")
            }
            let wait = error.isRetriable && !Task.isCancelled ? backoff.next() : nil
            guard let wait else {
                giveUp(error)
                return
            }
            logger.warning("cannot reach RabbitMQ; retrying", metadata: [
                "amqp.endpoint": "\(amqp.endpoint)", "amqp.connection": "\(amqp.connectionName)",
                "retry_in": "\(wait)", "error": "\(error)",
            ])
            do {
                try await Task.sleep(for: wait)
            } catch {
                // Cancelled by close(), which has already failed the waiters.
                giveUp(closedError)
                return
            }
        }
    }

    /// The loop made a client: hands it to every waiter, or returns it to be closed when the
    /// transport closed meanwhile.
    private func publish(_ client: AMQPClient) -> AMQPClient? {
        enum Action { case resume([Waiter], Lease), discard }
        let action: Action = state.withLock { state in
            guard case .connecting(let waiters) = state.phase else { return .discard }
            state.generation += 1
            let lease = Lease(client: client, generation: state.generation)
            state.phase = .connected(lease)
            state.loop = nil
            return .resume(Array(waiters.values), lease)
        }
        switch action {
        case .resume(let waiters, let lease):
            if lease.generation > 1 {
                logger.info("reconnected to RabbitMQ", metadata: ["amqp.endpoint": "\(amqp.endpoint)", "amqp.connection": "\(amqp.connectionName)", "amqp.generation": "\(lease.generation)"])
            }
            for waiter in waiters { waiter.resume(returning: lease) }
            return nil
        case .discard:
            return client
        }
    }

    private func giveUp(_ error: GantryError) {
        let waiters: [Waiter] = state.withLock { state in
            guard case .connecting(let waiters) = state.phase else { return [] }
            state.phase = .idle
            state.loop = nil
            return Array(waiters.values)
        }
        for waiter in waiters { waiter.resume(throwing: error) }
    }
}
