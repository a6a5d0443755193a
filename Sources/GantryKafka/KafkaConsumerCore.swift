import CRdKafka
import GantryCore
import Logging
import Synchronization

/// The consumer's state, shared between its callers and its polling thread.
///
/// All librdkafka calls except polling go through ``State/commands`` and run on the polling
/// thread, so the handle is only ever used by the thread that destroys it.
final class KafkaConsumerCore: Sendable {
    enum Command {
        case subscribe([String], CheckedContinuation<Void, any Error>)
        case commit([KafkaCommitOffset], CheckedContinuation<Void, any Error>)
    }

    enum Lifecycle {
        case running
        /// ``KafkaConsumer/close()`` asked; the thread has not started leaving yet.
        case closeRequested
        /// `rd_kafka_consumer_close_queue` is in progress.
        case closing
        /// The handle is destroyed; ``State/buffer`` is drained and the stream ends.
        case closed
    }

    struct PendingRevocation {
        var id: UInt
        var partitions: [KafkaTopicPartition]
        var cooperative: Bool
        var deadline: ContinuousClock.Instant
        var finished: Bool
    }

    struct State {
        var lifecycle = Lifecycle.running
        var commands: [Command] = []
        var nextID: UInt = 1
        var commits: [UInt: (offsets: [KafkaCommitOffset], continuation: CheckedContinuation<Void, any Error>)] = [:]
        /// Events not yet taken by the application, oldest first, from `bufferHead`.
        var buffer: [KafkaConsumerEvent] = []
        var bufferHead = 0
        var bufferedRecords = 0
        /// The application asked to pause fetching (``KafkaConsumer/pauseFetching(_:)``).
        var applicationPaused = false
        /// The buffer reached its capacity and has not been read down to half yet.
        var bufferFull = false
        /// The application's `next()` waiting for an event.
        var waiter: CheckedContinuation<KafkaConsumerEvent?, any Error>?
        /// A fatal error, thrown once by `next()` after the buffer is drained.
        var terminalError: GantryError?
        var assignment: Set<KafkaTopicPartition> = []
        var revoking: Set<KafkaTopicPartition> = []
        var revocation: PendingRevocation?
        var paused = false
        var closeWaiters: [CheckedContinuation<Void, Never>] = []

        var bufferIsEmpty: Bool { bufferHead >= buffer.count }

        mutating func popEvent() -> KafkaConsumerEvent? {
            guard bufferHead < buffer.count else { return nil }
            let event = buffer[bufferHead]
            bufferHead += 1
            // Compacts once the consumed prefix dominates, keeping pops O(1) amortised.
            if bufferHead > 64 && bufferHead * 2 > buffer.count {
                buffer.removeFirst(bufferHead)
                bufferHead = 0
            }
            if case .records(let records) = event { bufferedRecords -= records.count }
            return event
        }
    }

    let client: RDKafkaClient
    let configuration: KafkaConsumerConfiguration
    let logger: Logger
    /// Where records and events go instead of the buffer, if set (see
    /// `KafkaConsumer.init(…sink:)`).
    let sink: (any KafkaConsumerSink)?
    let state = Mutex(State())

    init(client: RDKafkaClient, configuration: KafkaConsumerConfiguration, logger: Logger, sink: (any KafkaConsumerSink)?) {
        self.sink = sink
        self.client = client
        self.configuration = configuration
        self.logger = logger
    }

    // MARK: Called by the application

    /// Queues a command for the polling thread and waits for its result.
    func run(_ makeCommand: (CheckedContinuation<Void, any Error>) -> Command) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let accepted: Bool = state.withLock { state in
                guard state.lifecycle != .closed else { return false }
                state.commands.append(makeCommand(continuation))
                return true
            }
            if accepted {
                client.wakeUp()
            } else {
                continuation.resume(throwing: GantryError(.closed, "the Kafka consumer is closed"))
            }
        }
    }

    func nextEvent() async throws -> KafkaConsumerEvent? {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<KafkaConsumerEvent?, any Error>) in
                var wake = false
                let ready: Result<KafkaConsumerEvent?, GantryError>? = state.withLock { state in
                    if let event = state.popEvent() {
                        // Resumes fetching now rather than at the next poll timeout.
                        wake = state.bufferFull && state.bufferedRecords <= configuration.bufferCapacity / 2
                        return .success(event)
                    }
                    if let error = state.terminalError {
                        state.terminalError = nil
                        return .failure(error)
                    }
                    if state.lifecycle == .closed { return .success(nil) }
                    if state.waiter != nil {
                        return .failure(GantryError(.invalidArgument, "KafkaConsumer.events is being iterated by two tasks at once; use one iterator"))
                    }
                    // The cancellation handler may have run before the waiter was stored; it
                    // found nothing to resume, so this must not wait.
                    if Task.isCancelled {
                        return .failure(GantryError(.cancelled, "waiting for Kafka records was cancelled"))
                    }
                    state.waiter = continuation
                    return nil
                }
                if wake { client.wakeUp() }
                if let ready { continuation.resume(with: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(throwing: GantryError(.cancelled, "waiting for Kafka records was cancelled"))
        }
    }

    /// Sets the application's pause; wakes the polling thread to apply a change at once.
    func setApplicationPaused(_ paused: Bool) {
        let changed: Bool = state.withLock { state in
            defer { state.applicationPaused = paused }
            return state.applicationPaused != paused
        }
        if changed { client.wakeUp() }
    }

    func finishRevocation(_ id: UInt) {
        let changed: Bool = state.withLock { state in
            guard state.revocation?.id == id else { return false }
            state.revocation?.finished = true
            return true
        }
        if changed { client.wakeUp() }
    }

    func requestClose() {
        state.withLock { state in
            if state.lifecycle == .running { state.lifecycle = .closeRequested }
        }
        client.wakeUp()
    }

    func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let closed: Bool = state.withLock { state in
                if state.lifecycle == .closed { return true }
                if state.lifecycle == .running { state.lifecycle = .closeRequested }
                state.closeWaiters.append(continuation)
                return false
            }
            if closed { continuation.resume() } else { client.wakeUp() }
        }
    }
}
