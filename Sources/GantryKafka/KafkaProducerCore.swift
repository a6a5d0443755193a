import CRdKafka
import GantryCore
import Logging
import Synchronization

/// The producer's state, shared between the callers and the polling thread.
final class KafkaProducerCore: Sendable {
    /// Where one record's delivery stands.
    enum Delivery {
        /// Enqueued; nobody waits yet and no report came.
        case pending
        /// A sender waits for the report.
        case waiting(CheckedContinuation<KafkaDeliveryReport, any Error>)
        /// The report came before anybody waited.
        case done(Result<KafkaDeliveryReport, GantryError>)
        /// The sender gave up (cancelled); the report is dropped when it comes.
        case abandoned
    }

    enum Lifecycle {
        case running
        /// ``KafkaProducer/close(timeout:)`` began: no new records, the thread still polls.
        case closing
        /// The thread should exit.
        case stopping
        /// The handle is destroyed.
        case stopped
    }

    struct FlushWaiter {
        var deadline: ContinuousClock.Instant
        var timeout: Duration
        var continuation: CheckedContinuation<Void, any Error>
    }

    struct State {
        var lifecycle = Lifecycle.running
        var nextID: UInt = 1
        var deliveries: [UInt: Delivery] = [:]
        /// Records enqueued in librdkafka whose delivery report has not come.
        var inFlight = 0
        var nextWaiterID: UInt = 1
        var flushWaiters: [UInt: FlushWaiter] = [:]
        var stopWaiters: [CheckedContinuation<Void, Never>] = []
        /// A fatal error (idempotence broken beyond repair): every later send fails with it.
        var fatal: GantryError?
    }

    let client: RDKafkaClient
    let logger: Logger
    let state = Mutex(State())

    init(client: RDKafkaClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    // MARK: Sending

    /// Hands one record to librdkafka and returns its id; waits (without blocking) while
    /// librdkafka's queue is full.
    func enqueue(_ message: KafkaOutgoingMessage) async throws -> UInt {
        while true {
            let outcome: Result<UInt, GantryError>? = state.withLock { state in
                switch state.lifecycle {
                case .running: break
                case .closing, .stopping, .stopped:
                    return .failure(GantryError(.closed, "the Kafka producer is closed; create a new one to send to topic '\(message.topic)'"))
                }
                if let fatal = state.fatal { return .failure(fatal) }
                let id = state.nextID
                state.nextID += 1
                // Registered before librdkafka sees the record: its report may come at once.
                state.deliveries[id] = .pending
                // Called under the lock so that the polling thread cannot destroy the handle
                // meanwhile; rd_kafka_produceva does not block without RD_KAFKA_MSG_F_BLOCK.
                let error = Self.produce(client.handle, message, id: id)
                guard let error else {
                    state.inFlight += 1
                    return .success(id)
                }
                state.deliveries[id] = nil
                let code = rd_kafka_error_code(error)
                if code == RD_KAFKA_RESP_ERR__QUEUE_FULL {
                    rd_kafka_error_destroy(error)
                    return nil
                }
                return .failure(GantryError(consuming: error, "could not enqueue a record for topic '\(message.topic)'"))
            }
            switch outcome {
            case .success(let id): return id
            case .failure(let error): throw error
            case nil:
                // librdkafka's local queue (queue.buffering.max.messages) is full: wait for the
                // polling thread to drain delivery reports rather than fail the send.
                do {
                    try await Task.sleep(for: .milliseconds(5))
                } catch {
                    throw GantryError(.cancelled, "sending to topic '\(message.topic)' was cancelled while the producer queue was full")
                }
            }
        }
    }

    /// Calls `rd_kafka_produceva`; returns its error, or nil when the record was enqueued.
    private static func produce(_ handle: OpaquePointer, _ message: KafkaOutgoingMessage, id: UInt) -> OpaquePointer? {
        var headers: OpaquePointer?
        if !message.headers.isEmpty {
            headers = rd_kafka_headers_new(message.headers.count)
            for header in message.headers {
                // rd_kafka_header_add copies the name and the value.
                if let value = header.value {
                    value.withUnsafeBytes { bytes in
                        _ = rd_kafka_header_add(headers, header.key, -1, bytes.baseAddress, bytes.count)
                    }
                } else {
                    _ = rd_kafka_header_add(headers, header.key, -1, nil, 0)
                }
            }
        }
        let error: OpaquePointer? = message.topic.withCString { topic in
            message.value.withUnsafeBytes { value in
                withOptionalBytes(message.key) { key in
                    var args = [rd_kafka_vu_t](repeating: rd_kafka_vu_t(), count: 6)
                    var count = 0
                    args[count].vtype = RD_KAFKA_VTYPE_TOPIC
                    args[count].u.cstr = topic
                    count += 1
                    // F_COPY: librdkafka copies key and value, so the Swift buffers may go away
                    // as soon as this call returns.
                    args[count].vtype = RD_KAFKA_VTYPE_MSGFLAGS
                    args[count].u.i = RD_KAFKA_MSG_F_COPY
                    count += 1
                    args[count].vtype = RD_KAFKA_VTYPE_VALUE
                    args[count].u.mem.ptr = UnsafeMutableRawPointer(mutating: value.baseAddress)
                    args[count].u.mem.size = value.count
                    count += 1
                    if let key {
                        args[count].vtype = RD_KAFKA_VTYPE_KEY
                        args[count].u.mem.ptr = UnsafeMutableRawPointer(mutating: key.baseAddress)
                        args[count].u.mem.size = key.count
                        count += 1
                    }
                    // The id comes back in the delivery report as the message's _private.
                    args[count].vtype = RD_KAFKA_VTYPE_OPAQUE
                    args[count].u.ptr = UnsafeMutableRawPointer(bitPattern: id)
                    count += 1
                    if let headers {
                        args[count].vtype = RD_KAFKA_VTYPE_HEADERS
                        args[count].u.headers = headers
                        count += 1
                    }
                    return rd_kafka_produceva(handle, args, count)
                }
            }
        }
        // The message owns the headers only when produceva succeeded.
        if error != nil, let headers { rd_kafka_headers_destroy(headers) }
        return error
    }

    /// Waits for the delivery report of record `id`.
    func awaitDelivery(_ id: UInt) async throws -> KafkaDeliveryReport {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<KafkaDeliveryReport, any Error>) in
                let ready: Result<KafkaDeliveryReport, GantryError>? = state.withLock { state in
                    switch state.deliveries[id] {
                    case .pending:
                        state.deliveries[id] = .waiting(continuation)
                        return nil
                    case .done(let result):
                        state.deliveries[id] = nil
                        return result
                    case .abandoned, .waiting, nil:
                        state.deliveries[id] = nil
                        return .failure(GantryError(.cancelled, "waiting for a delivery report was cancelled"))
                    }
                }
                if let ready { continuation.resume(with: ready) }
            }
        } onCancel: {
            let continuation: CheckedContinuation<KafkaDeliveryReport, any Error>? = state.withLock { state in
                switch state.deliveries[id] {
                case .waiting(let continuation):
                    state.deliveries[id] = .abandoned
                    return continuation
                case .pending:
                    state.deliveries[id] = .abandoned
                    return nil
                case .done:
                    state.deliveries[id] = nil
                    return nil
                case .abandoned, nil:
                    return nil
                }
            }
            continuation?.resume(throwing: GantryError(.cancelled, "waiting for a delivery report was cancelled; the record may still be delivered"))
        }
    }

    /// Forgets records whose sender will not wait for them.
    func abandon(_ ids: [UInt]) {
        state.withLock { state in
            for id in ids {
                switch state.deliveries[id] {
                case .pending: state.deliveries[id] = .abandoned
                case .done: state.deliveries[id] = nil
                default: break
                }
            }
        }
    }

    // MARK: Flush and close

    func flush(timeout: Duration) async throws {
        let waiterID = state.withLock { state in
            defer { state.nextWaiterID += 1 }
            return state.nextWaiterID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let done: Bool = state.withLock { state in
                    if state.inFlight == 0 || state.lifecycle == .stopped { return true }
                    state.flushWaiters[waiterID] = FlushWaiter(
                        deadline: .now + timeout, timeout: timeout, continuation: continuation
                    )
                    return false
                }
                if done { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.flushWaiters.removeValue(forKey: waiterID) }
            waiter?.continuation.resume(throwing: GantryError(.cancelled, "flushing the Kafka producer was cancelled"))
        }
    }

    func beginClosing() {
        state.withLock { state in
            if state.lifecycle == .running { state.lifecycle = .closing }
        }
    }

    /// Asks the polling thread to stop without waiting (used by `deinit`).
    func requestStop() {
        state.withLock { state in
            if state.lifecycle == .running || state.lifecycle == .closing { state.lifecycle = .stopping }
        }
        client.wakeUp()
    }

    /// Asks the polling thread to stop and waits until it destroyed the handle.
    func stop() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let stopped: Bool = state.withLock { state in
                if state.lifecycle == .stopped { return true }
                state.lifecycle = .stopping
                state.stopWaiters.append(continuation)
                return false
            }
            if stopped { continuation.resume() } else { client.wakeUp() }
        }
    }
}

/// Runs `body` with the bytes of `bytes`, or with nil.
private func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeRawBufferPointer?) -> R) -> R {
    guard let bytes else { return body(nil) }
    return bytes.withUnsafeBytes { body($0) }
}
