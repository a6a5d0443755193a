import CRdKafka
import GantryCore
import Logging
import Synchronization

/// The producer's state, shared between the callers and the polling thread.
final class KafkaProducerCore: Sendable {
    /// The records of one ``send(_:reports:)`` call and their delivery reports.
    struct Batch {
        /// The number of records.
        let count: Int
        /// Reports by record index, nil until each comes; empty when the sender does not want
        /// them.
        var reports: [KafkaDeliveryReport?]
        /// Records handed to librdkafka whose report has not come.
        var outstanding = 0
        /// Every record was handed to librdkafka (or the sender gave up on the rest).
        var sealed = false
        var failures = 0
        var firstError: GantryError?
        /// The sender waiting for the last report.
        var waiter: CheckedContinuation<[KafkaDeliveryReport], any Error>?
        /// The sender gave up (cancelled, or enqueueing failed): reports are dropped as they
        /// come, and the batch goes with the last.
        var abandoned = false

        init(count: Int, keepReports: Bool) {
            self.count = count
            reports = keepReports ? [KafkaDeliveryReport?](repeating: nil, count: count) : []
        }

        /// Records one report.
        mutating func record(_ index: Int, _ result: Result<KafkaDeliveryReport, GantryError>) {
            outstanding -= 1
            switch result {
            case .success(let report):
                if !reports.isEmpty { reports[index] = report }
            case .failure(let error):
                failures += 1
                if firstError == nil { firstError = error }
            }
        }

        var isComplete: Bool { sealed && outstanding == 0 }

        /// What the sender gets once the batch is complete.
        var result: Result<[KafkaDeliveryReport], any Error> {
            guard let firstError else { return .success(reports.map { $0! }) }
            if failures == 1 { return .failure(firstError) }
            return .failure(GantryError(
                firstError.code, "\(failures) of \(count) records were not delivered; first: \(firstError.message)",
                underlying: firstError))
        }
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
        var nextBatch: UInt32 = 1
        var batches: [UInt32: Batch] = [:]
        /// Records enqueued in librdkafka (or about to be) whose delivery report has not come.
        var inFlight = 0
        /// Senders handing records to librdkafka outside the lock: the handle must outlive
        /// their calls.
        var enqueuing = 0
        var nextWaiterID: UInt = 1
        var flushWaiters: [UInt: FlushWaiter] = [:]
        var stopWaiters: [CheckedContinuation<Void, Never>] = []
        /// A fatal error (idempotence broken beyond repair): every later send fails with it.
        var fatal: GantryError?
        /// librdkafka topic handles by name, destroyed with the client. Creating one makes
        /// librdkafka ask for the topic's leaders at once; a topic known only by the name given
        /// to `rd_kafka_produceva` waits for librdkafka's one-second topic scan, so the first
        /// record to every new topic would take a second.
        var topics: [String: OpaquePointer] = [:]

        /// A new batch of `count` records, registered before librdkafka sees any of them: a
        /// report may come at once.
        mutating func register(count: Int, keepReports: Bool) -> UInt32 {
            while batches[nextBatch] != nil || nextBatch == 0 { nextBatch &+= 1 }
            let id = nextBatch
            nextBatch &+= 1
            batches[id] = Batch(count: count, keepReports: keepReports)
            return id
        }

        mutating func topicHandle(_ name: String, client: OpaquePointer) -> OpaquePointer? {
            if let known = topics[name] { return known }
            guard let created = rd_kafka_topic_new(client, name, nil) else { return nil }
            topics[name] = created
            return created
        }

        /// Seals the batch; returns its result when complete, or parks `continuation`.
        mutating func wait(for id: UInt32, _ continuation: CheckedContinuation<[KafkaDeliveryReport], any Error>) -> Result<[KafkaDeliveryReport], any Error>? {
            guard var batch = batches[id], !batch.abandoned else {
                return .failure(GantryError(.cancelled, "waiting for delivery reports was cancelled"))
            }
            batch.sealed = true
            if batch.isComplete {
                batches[id] = nil
                return batch.result
            }
            batch.waiter = continuation
            batches[id] = batch
            return nil
        }

        /// The sender gives up on the batch; returns its waiter, to resume with an error.
        mutating func abandon(_ id: UInt32) -> CheckedContinuation<[KafkaDeliveryReport], any Error>? {
            guard var batch = batches[id] else { return nil }
            let waiter = batch.waiter
            batch.waiter = nil
            batch.abandoned = true
            batch.sealed = true
            batches[id] = batch.outstanding == 0 ? nil : batch
            return waiter
        }

        /// Records delivery reports (their opaques and results); returns the senders to resume
        /// because their batch completed.
        ///
        /// Consecutive reports of one batch are recorded with one dictionary access, so the
        /// work under the lock is per batch rather than per record.
        mutating func report(_ results: [(UInt, Result<KafkaDeliveryReport, GantryError>)]) -> [(CheckedContinuation<[KafkaDeliveryReport], any Error>, Result<[KafkaDeliveryReport], any Error>)] {
            var completed: [(CheckedContinuation<[KafkaDeliveryReport], any Error>, Result<[KafkaDeliveryReport], any Error>)] = []
            var start = 0
            while start < results.count {
                let id = UInt32(truncatingIfNeeded: results[start].0 >> 32)
                var end = start + 1
                while end < results.count, UInt32(truncatingIfNeeded: results[end].0 >> 32) == id { end += 1 }
                defer { start = end }
                // Moved out of the dictionary, so that its report array is changed in place.
                guard var batch = batches.removeValue(forKey: id) else { continue }
                for (opaque, result) in results[start..<end] {
                    batch.record(Int(UInt32(truncatingIfNeeded: opaque)), result)
                }
                inFlight -= end - start
                guard batch.isComplete else {
                    batches[id] = batch
                    continue
                }
                if !batch.abandoned, let waiter = batch.waiter { completed.append((waiter, batch.result)) }
            }
            return completed
        }

        /// Takes back the count of records that were claimed for enqueueing but not enqueued.
        mutating func withdraw(_ count: Int, from id: UInt32) {
            guard count > 0 else { return }
            inFlight -= count
            guard var batch = batches.removeValue(forKey: id) else { return }
            batch.outstanding -= count
            if !(batch.abandoned && batch.outstanding == 0) { batches[id] = batch }
        }
    }

    let client: RDKafkaClient
    let logger: Logger
    let state = Mutex(State())

    init(client: RDKafkaClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    // MARK: Sending

    /// Enqueues `messages` and returns their delivery reports, in order, once every one came
    /// (an empty array when `reports` is false: the caller only needs to know that all were
    /// delivered).
    ///
    /// Records are handed to librdkafka in chunks, outside the lock (so that concurrent
    /// senders and the polling thread recording reports do not wait for each other), and the
    /// caller waits once for the whole batch, so a large batch costs little more than
    /// librdkafka's own work. Waits (without blocking) while librdkafka's queue is full.
    ///
    /// - Throws: the failure of a record (or a summary when several failed), after every
    ///   report came; `closed`, `cancelled`, or an enqueue error at once, leaving the records
    ///   already enqueued to be delivered or not.
    func send(_ messages: [KafkaOutgoingMessage], reports: Bool = true) async throws -> [KafkaDeliveryReport] {
        guard !messages.isEmpty else { return [] }
        guard messages.count < Int(UInt32.max) else {
            throw GantryError(.invalidArgument, "\(messages.count) Kafka records in one batch is too many; send fewer than 4 billion at once")
        }
        let batch = state.withLock { $0.register(count: messages.count, keepReports: reports) }
        var next = 0
        do {
            while next < messages.count {
                let (enqueued, outcome) = enqueueChunk(messages, from: next, batch: batch)
                next += enqueued
                switch outcome {
                case .enqueued:
                    break
                case .failed(let error):
                    throw error
                case .queueFull:
                    // librdkafka's local queue (queue.buffering.max.messages) is full: wait for
                    // the polling thread to drain delivery reports rather than fail the send.
                    do {
                        try await Task.sleep(for: .milliseconds(5))
                    } catch {
                        throw GantryError(.cancelled, "sending to topic '\(messages[next].topic)' was cancelled while the producer queue was full")
                    }
                }
            }
        } catch {
            // Nobody waits yet, so there is no waiter to resume.
            _ = state.withLock { $0.abandon(batch) }
            throw error
        }
        return try await wait(for: batch)
    }

    private enum ChunkOutcome {
        case enqueued
        case queueFull
        case failed(GantryError)
    }

    /// The most records handed to librdkafka per chunk; the lifecycle is checked between
    /// chunks, so a close does not wait for a long batch.
    private static let chunkSize = 256

    /// Produces up to ``chunkSize`` records of one topic of `messages` from `start`.
    ///
    /// The chunk is claimed under the lock: the producer must be running, the records count
    /// as outstanding before librdkafka sees them (a report may come at once), and
    /// ``State/enqueuing`` keeps the polling thread from destroying the handle meanwhile.
    /// librdkafka is called outside the lock (rd_kafka_produceva does not block without
    /// RD_KAFKA_MSG_F_BLOCK); records it refused are withdrawn afterwards.
    private func enqueueChunk(_ messages: [KafkaOutgoingMessage], from start: Int, batch: UInt32) -> (Int, ChunkOutcome) {
        let topicName = messages[start].topic
        var count = 1
        while count < Self.chunkSize, start + count < messages.count, messages[start + count].topic == topicName { count += 1 }
        let claim: Result<OpaquePointer, GantryError> = state.withLock { state in
            switch state.lifecycle {
            case .running: break
            case .closing, .stopping, .stopped:
                return .failure(GantryError(.closed, "the Kafka producer is closed; create a new one to send to topic '\(topicName)'"))
            }
            if let fatal = state.fatal { return .failure(fatal) }
            guard let topic = state.topicHandle(topicName, client: client.handle) else {
                return .failure(GantryError(kafka: rd_kafka_last_error(), "could not use Kafka topic '\(topicName)'"))
            }
            state.enqueuing += 1
            state.inFlight += count
            state.batches[batch]?.outstanding += count
            return .success(topic)
        }
        let topic: OpaquePointer
        switch claim {
        case .success(let handle): topic = handle
        case .failure(let error): return (0, .failed(error))
        }
        var produced = 0
        var outcome = ChunkOutcome.enqueued
        while produced < count {
            let index = start + produced
            if let error = Self.produce(client.handle, topic, messages[index], opaque: UInt(batch) << 32 | UInt(index)) {
                if rd_kafka_error_code(error) == RD_KAFKA_RESP_ERR__QUEUE_FULL {
                    rd_kafka_error_destroy(error)
                    outcome = .queueFull
                } else {
                    outcome = .failed(GantryError(consuming: error, "could not enqueue a record for topic '\(topicName)'"))
                }
                break
            }
            produced += 1
        }
        state.withLock { state in
            state.enqueuing -= 1
            state.withdraw(count - produced, from: batch)
        }
        return (produced, outcome)
    }

    /// Calls `rd_kafka_produceva`; returns its error, or nil when the record was enqueued.
    private static func produce(_ handle: OpaquePointer, _ topic: OpaquePointer, _ message: KafkaOutgoingMessage, opaque: UInt) -> OpaquePointer? {
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
        let error: OpaquePointer? = message.value.withUnsafeBytes { value in
            withOptionalBytes(message.key) { key in
                withUnsafeTemporaryAllocation(of: rd_kafka_vu_t.self, capacity: 6) { args in
                    var count = 0
                    func add(_ set: (inout rd_kafka_vu_t) -> Void) {
                        var arg = rd_kafka_vu_t()
                        set(&arg)
                        args.initializeElement(at: count, to: arg)
                        count += 1
                    }
                    add { $0.vtype = RD_KAFKA_VTYPE_RKT; $0.u.rkt = topic }
                    // F_COPY: librdkafka copies key and value, so the Swift buffers may go away
                    // as soon as this call returns.
                    add { $0.vtype = RD_KAFKA_VTYPE_MSGFLAGS; $0.u.i = RD_KAFKA_MSG_F_COPY }
                    add {
                        $0.vtype = RD_KAFKA_VTYPE_VALUE
                        $0.u.mem.ptr = UnsafeMutableRawPointer(mutating: value.baseAddress)
                        $0.u.mem.size = value.count
                    }
                    if let key {
                        add {
                            $0.vtype = RD_KAFKA_VTYPE_KEY
                            $0.u.mem.ptr = UnsafeMutableRawPointer(mutating: key.baseAddress)
                            $0.u.mem.size = key.count
                        }
                    }
                    // Comes back in the delivery report as the message's _private: which batch
                    // and which record of it.
                    add { $0.vtype = RD_KAFKA_VTYPE_OPAQUE; $0.u.ptr = UnsafeMutableRawPointer(bitPattern: opaque) }
                    if let headers {
                        add { $0.vtype = RD_KAFKA_VTYPE_HEADERS; $0.u.headers = headers }
                    }
                    // rd_kafka_vu_t is a plain C struct: nothing to deinitialize.
                    return rd_kafka_produceva(handle, args.baseAddress, count)
                }
            }
        }
        // The message owns the headers only when produceva succeeded.
        if error != nil, let headers { rd_kafka_headers_destroy(headers) }
        return error
    }

    /// Waits until every record of `batch` has its report.
    private func wait(for batch: UInt32) async throws -> [KafkaDeliveryReport] {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[KafkaDeliveryReport], any Error>) in
                let ready = state.withLock { $0.wait(for: batch, continuation) }
                if let ready { continuation.resume(with: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.abandon(batch) }
            waiter?.resume(throwing: GantryError(.cancelled, "waiting for delivery reports was cancelled; the records may still be delivered"))
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
