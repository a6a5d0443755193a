import GantryCore
import Synchronization

/// The deliveries of one consumer, on their way from the connection thread to the task
/// iterating the consumer.
///
/// Bounded by construction: every buffered delivery is unacknowledged, and the channel's
/// prefetch (basic.qos, which `consume` always sets) caps unacknowledged deliveries, so the
/// broker never sends more than the prefetch count ahead of the acks.
final class DeliveryBuffer: Sendable {
    private enum State {
        /// Delivering; `waiter` is set only while `queue` is empty.
        case active(queue: [AMQPDelivery], waiter: CheckedContinuation<AMQPDelivery?, any Error>?)
        /// The application stopped consuming; `unread` waits for the thread to requeue it.
        case stopped(unread: [AMQPDelivery])
        /// Over: hand out `remaining`, then throw `error` once (if any), then end.
        case finished(remaining: [AMQPDelivery], error: GantryError?)
    }

    private let state = Mutex<State>(.active(queue: [], waiter: nil))

    /// Thread side: hands a delivery over; false when nobody will read it any more.
    func push(_ delivery: AMQPDelivery) -> Bool {
        let waiter: CheckedContinuation<AMQPDelivery?, any Error>?? = state.withLock { state in
            guard case .active(var queue, let waiter) = state else { return .none }
            if let waiter {
                state = .active(queue: queue, waiter: nil)
                return .some(waiter)
            }
            queue.append(delivery)
            state = .active(queue: queue, waiter: nil)
            return .some(nil)
        }
        switch waiter {
        case .none: return false
        case .some(let continuation):
            continuation?.resume(returning: delivery)
            return true
        }
    }

    /// Front side: the next delivery, `nil` at the end.
    func next(onCancel: @escaping @Sendable () -> Void) async throws -> AMQPDelivery? {
        enum Step { case value(AMQPDelivery?), error(GantryError), wait }
        let immediate: Step = state.withLock { state in
            switch state {
            case .active(var queue, let waiter):
                if queue.isEmpty {
                    if waiter != nil {
                        return .error(GantryError(.invalidArgument, "an AMQP consumer can be iterated by one task at a time"))
                    }
                    return .wait
                }
                let first = queue.removeFirst()
                state = .active(queue: queue, waiter: nil)
                return .value(first)
            case .stopped:
                return .value(nil)
            case .finished(var remaining, let error):
                if !remaining.isEmpty {
                    let first = remaining.removeFirst()
                    state = .finished(remaining: remaining, error: error)
                    return .value(first)
                }
                if let error {
                    state = .finished(remaining: [], error: nil)
                    return .error(error)
                }
                return .value(nil)
            }
        }
        switch immediate {
        case .value(let delivery): return delivery
        case .error(let error): throw error
        case .wait: break
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<AMQPDelivery?, any Error>) in
                enum Outcome { case installed, resume(AMQPDelivery?), fail(GantryError) }
                // Re-check under the lock: a delivery, a stop or the end may have come meanwhile.
                let outcome: Outcome = state.withLock { state in
                    switch state {
                    case .active(var queue, let waiter):
                        if queue.isEmpty {
                            if waiter != nil {
                                return .fail(GantryError(.invalidArgument, "an AMQP consumer can be iterated by one task at a time"))
                            }
                            state = .active(queue: [], waiter: continuation)
                            return .installed
                        }
                        let first = queue.removeFirst()
                        state = .active(queue: queue, waiter: nil)
                        return .resume(first)
                    case .stopped:
                        return .resume(nil)
                    case .finished(var remaining, let error):
                        if !remaining.isEmpty {
                            let first = remaining.removeFirst()
                            state = .finished(remaining: remaining, error: error)
                            return .resume(first)
                        }
                        if let error {
                            state = .finished(remaining: [], error: nil)
                            return .fail(error)
                        }
                        return .resume(nil)
                    }
                }
                switch outcome {
                case .installed: break
                case .resume(let delivery): continuation.resume(returning: delivery)
                case .fail(let error): continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            onCancel()
        }
    }

    /// Front side: stop delivering; deliveries not yet read wait for the thread to requeue
    /// them. Returns false when the buffer was already stopped or finished.
    func stop() -> Bool {
        let result: (Bool, CheckedContinuation<AMQPDelivery?, any Error>?) = state.withLock { state in
            guard case .active(let queue, let waiter) = state else { return (false, nil) }
            state = .stopped(unread: queue)
            return (true, waiter)
        }
        result.1?.resume(returning: nil)
        return result.0
    }

    /// Thread side: ends the stream. `keepUnread` lets the reader still get what is buffered
    /// (the channel is alive, so those deliveries can still be acked). Returns the deliveries
    /// nobody will read, which the thread requeues while the channel is alive.
    @discardableResult
    func finish(error: GantryError?, keepUnread: Bool) -> [AMQPDelivery] {
        let result: ([AMQPDelivery], CheckedContinuation<AMQPDelivery?, any Error>?) = state.withLock { state in
            switch state {
            case .active(let queue, let waiter):
                if waiter != nil {
                    // The waiter only exists while nothing is buffered: hand it the end now.
                    state = .finished(remaining: [], error: nil)
                    return ([], waiter)
                }
                state = .finished(remaining: keepUnread ? queue : [], error: error)
                return (keepUnread ? [] : queue, nil)
            case .stopped(let unread):
                state = .finished(remaining: [], error: nil)
                return (unread, nil)
            case .finished:
                return ([], nil)
            }
        }
        if let waiter = result.1 {
            if let error { waiter.resume(throwing: error) } else { waiter.resume(returning: nil) }
        }
        return result.0
    }
}

/// A consumer on a queue: an `AsyncSequence` of ``AMQPDelivery``, fed by the connection thread.
///
/// Iterate it from one task at a time. The sequence ends (`nil`) after ``cancel()``, after the
/// client is closed, or when the iterating task is cancelled; it throws a retriable
/// `GantryError(.connectionFailed)` when the connection or channel fails or the broker cancels
/// the consumer (queue deleted). Deliveries it had buffered but not yet returned when it
/// stopped are requeued, so they go to another consumer rather than waiting for a timeout.
///
/// Settle every delivery with `AMQPClient.ack`, `nack` or `reject`. Releasing the last
/// reference to the consumer cancels it.
public final class AMQPConsumer: AsyncSequence, Sendable {
    /// The element type: one delivered message.
    public typealias Element = AMQPDelivery

    /// The queue this consumer reads.
    public let queue: String
    /// The consumer tag, unique on its connection.
    public let consumerTag: String

    private let buffer: DeliveryBuffer
    private let mailbox: AMQPMailbox

    init(queue: String, consumerTag: String, buffer: DeliveryBuffer, mailbox: AMQPMailbox) {
        self.queue = queue
        self.consumerTag = consumerTag
        self.buffer = buffer
        self.mailbox = mailbox
    }

    deinit {
        Self.stop(buffer: buffer, mailbox: mailbox, consumerTag: consumerTag, reply: nil)
    }

    /// The next delivery, or `nil` when the consumer has ended.
    ///
    /// - Throws: `GantryError(.connectionFailed, isRetriable: true)` when the connection or
    ///   channel failed or the broker cancelled the consumer.
    public func next() async throws -> AMQPDelivery? {
        let buffer = buffer, mailbox = mailbox, tag = consumerTag
        return try await buffer.next(onCancel: {
            Self.stop(buffer: buffer, mailbox: mailbox, consumerTag: tag, reply: nil)
        })
    }

    /// Cancels the consumer (basic.cancel) and requeues deliveries it buffered but did not
    /// return yet. Deliveries already returned stay yours to settle. Idempotent.
    public func cancel() async throws {
        let reply = PendingReply<Void>()
        Self.stop(buffer: buffer, mailbox: mailbox, consumerTag: consumerTag, reply: reply)
        try await reply.value("cancelling consumer '\(consumerTag)'")
    }

    private static func stop(buffer: DeliveryBuffer, mailbox: AMQPMailbox, consumerTag: String, reply: PendingReply<Void>?) {
        // Without a caller to answer, a consumer that already stopped needs no second cancel.
        guard buffer.stop() || reply != nil else { return }
        mailbox.submit(AMQPCommand(
            execute: { connection in
                do throws(GantryError) {
                    try connection.cancelConsumer(consumerTag, buffer: buffer)
                    reply?.succeed(())
                } catch {
                    reply?.fail(error)
                }
            },
            abandon: { _ in
                // A closed or failed connection has no consumer left to cancel.
                reply?.succeed(())
            }
        ))
    }

    /// Creates the iterator; it reads the consumer's shared buffer.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(consumer: self)
    }

    /// Iterates an ``AMQPConsumer``.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let consumer: AMQPConsumer

        /// The next delivery, or `nil` when the consumer has ended.
        public mutating func next() async throws -> AMQPDelivery? {
            try await consumer.next()
        }
    }
}
