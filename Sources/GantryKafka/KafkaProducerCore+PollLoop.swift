#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CRdKafka
import GantryCore
import Logging
import Synchronization

extension KafkaProducerCore {
    /// The polling thread's body: serves the event queue until asked to stop.
    func pollLoop() {
        while true {
            if var event = rd_kafka_queue_poll(client.queue, 100) {
                // Drain what is already queued before looking at the clock and the flags.
                var served = 0
                while true {
                    handle(event: event)
                    rd_kafka_event_destroy(event)
                    served += 1
                    guard served < 1000, let next = rd_kafka_queue_poll(client.queue, 0) else { break }
                    event = next
                }
            }
            serviceFlushWaiters()
            if state.withLock({ $0.lifecycle == .stopping }) { break }
        }
        finish()
    }

    private func handle(event: OpaquePointer) {
        switch rd_kafka_event_type(event) {
        case RD_KAFKA_EVENT_DR:
            var results: [(UInt, Result<KafkaDeliveryReport, GantryError>)] = []
            results.reserveCapacity(rd_kafka_event_message_count(event))
            // The records of one event mostly share a topic: its name is read once per change.
            var lastTopic: OpaquePointer?
            var topicName = "?"
            while let message = rd_kafka_event_message_next(event) {
                let opaque = UInt(bitPattern: message.pointee._private)
                if message.pointee.rkt != lastTopic {
                    lastTopic = message.pointee.rkt
                    topicName = lastTopic.map { String(cString: rd_kafka_topic_name($0)) } ?? "?"
                }
                if message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                    let report = KafkaDeliveryReport(topic: topicName, partition: message.pointee.partition, offset: message.pointee.offset)
                    results.append((opaque, .success(report)))
                } else {
                    let error = GantryError(kafka: message.pointee.err, "delivering a record to topic '\(topicName)' failed")
                    results.append((opaque, .failure(error)))
                }
            }
            let completed = state.withLock { $0.report(results) }
            for (continuation, result) in completed { continuation.resume(with: result) }
        case RD_KAFKA_EVENT_ERROR:
            let code = rd_kafka_event_error(event)
            let reason = String(cString: rd_kafka_event_error_string(event))
            if rd_kafka_event_error_is_fatal(event) != 0 {
                var buffer = [CChar](repeating: 0, count: 512)
                let fatalCode = rd_kafka_fatal_error(client.handle, &buffer, buffer.count)
                let fatalReason = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                let error = GantryError(kafka: fatalCode, "the Kafka producer hit a fatal error and must be recreated: \(fatalReason)", retriable: false)
                logger.critical("\(error)")
                state.withLock { $0.fatal = error }
            } else {
                // librdkafka retries these itself (a broker went away, a request timed out).
                logger.warning("Kafka producer: \(reason)", metadata: ["rdkafka.error": "\(String(cString: rd_kafka_err2name(code)))"])
            }
        case RD_KAFKA_EVENT_LOG:
            RDKafkaClient.forwardLog(event, to: logger)
        default:
            break
        }
    }

    private func serviceFlushWaiters() {
        let now = ContinuousClock.now
        var done: [(CheckedContinuation<Void, any Error>, (any Error)?)] = []
        state.withLock { state in
            guard !state.flushWaiters.isEmpty else { return }
            for (id, waiter) in state.flushWaiters {
                if state.inFlight == 0 {
                    done.append((waiter.continuation, nil))
                } else if now >= waiter.deadline {
                    let error = GantryError(.timeout, "\(state.inFlight) Kafka records still had no delivery report after \(waiter.timeout); is the broker reachable?")
                    done.append((waiter.continuation, error))
                } else {
                    continue
                }
                state.flushWaiters[id] = nil
            }
        }
        for (continuation, error) in done {
            if let error { continuation.resume(throwing: error) } else { continuation.resume() }
        }
    }

    /// Destroys the handle and fails everything still waiting.
    private func finish() {
        // No sender claims a chunk once the producer is stopping (the loop ended on that); the
        // ones handing records to librdkafka now finish their chunk (at most a few hundred
        // non-blocking calls) before the handle may go.
        while state.withLock({ $0.enqueuing > 0 }) { usleep(100) }
        var waiters: [CheckedContinuation<[KafkaDeliveryReport], any Error>] = []
        var flushes: [CheckedContinuation<Void, any Error>] = []
        var purge = false
        let stopWaiters: [CheckedContinuation<Void, Never>] = state.withLock { state in
            // From here on no caller touches the handle: enqueue checks the lifecycle under
            // this lock before calling librdkafka.
            state.lifecycle = .stopped
            purge = state.inFlight > 0
            for (id, batch) in state.batches {
                if let waiter = batch.waiter {
                    waiters.append(waiter)
                    state.batches[id] = nil
                } else if batch.abandoned {
                    state.batches[id] = nil
                } else {
                    // Its sender has not waited yet: it will find the batch complete and failed.
                    state.batches[id]!.failures += batch.outstanding
                    state.batches[id]!.outstanding = 0
                    if batch.firstError == nil {
                        state.batches[id]!.firstError = GantryError(.closed, "the Kafka producer was closed before the record was delivered")
                    }
                }
            }
            state.inFlight = 0
            // Topic handles hold references on the client, so they go before it; destroying one
            // only drops a reference, which is fine under the lock.
            for topic in state.topics.values { rd_kafka_topic_destroy(topic) }
            state.topics = [:]
            flushes = state.flushWaiters.values.map(\.continuation)
            state.flushWaiters = [:]
            defer { state.stopWaiters = [] }
            return state.stopWaiters
        }
        if purge {
            // Without this, rd_kafka_destroy would wait for in-flight requests to time out.
            _ = rd_kafka_purge(client.handle, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
        }
        client.destroy()
        for continuation in waiters {
            continuation.resume(throwing: GantryError(.closed, "the Kafka producer was closed before the record was delivered"))
        }
        for continuation in flushes {
            continuation.resume(throwing: GantryError(.closed, "the Kafka producer was closed while flushing"))
        }
        for continuation in stopWaiters { continuation.resume() }
    }
}
