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
            var resumes: [(CheckedContinuation<KafkaDeliveryReport, any Error>, Result<KafkaDeliveryReport, GantryError>)] = []
            var results: [(UInt, Result<KafkaDeliveryReport, GantryError>)] = []
            while let message = rd_kafka_event_message_next(event) {
                let id = UInt(bitPattern: message.pointee._private)
                let topic = message.pointee.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "?"
                if message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                    let report = KafkaDeliveryReport(topic: topic, partition: message.pointee.partition, offset: message.pointee.offset)
                    results.append((id, .success(report)))
                } else {
                    let error = GantryError(kafka: message.pointee.err, "delivering a record to topic '\(topic)' failed")
                    results.append((id, .failure(error)))
                }
            }
            state.withLock { state in
                for (id, result) in results {
                    guard let delivery = state.deliveries[id] else { continue }
                    state.inFlight -= 1
                    switch delivery {
                    case .pending:
                        state.deliveries[id] = .done(result)
                    case .waiting(let continuation):
                        state.deliveries[id] = nil
                        resumes.append((continuation, result))
                    case .abandoned, .done:
                        state.deliveries[id] = nil
                    }
                }
            }
            for (continuation, result) in resumes { continuation.resume(with: result) }
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
        var deliveries: [CheckedContinuation<KafkaDeliveryReport, any Error>] = []
        var flushes: [CheckedContinuation<Void, any Error>] = []
        var purge = false
        let stopWaiters: [CheckedContinuation<Void, Never>] = state.withLock { state in
            // From here on no caller touches the handle: enqueue checks the lifecycle under
            // this lock before calling librdkafka.
            state.lifecycle = .stopped
            purge = state.inFlight > 0
            for (id, delivery) in state.deliveries {
                switch delivery {
                case .waiting(let continuation):
                    deliveries.append(continuation)
                    state.deliveries[id] = nil
                case .pending:
                    state.deliveries[id] = .done(.failure(GantryError(.closed, "the Kafka producer was closed before the record was delivered")))
                case .abandoned, .done:
                    break
                }
            }
            state.inFlight = 0
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
        for continuation in deliveries {
            continuation.resume(throwing: GantryError(.closed, "the Kafka producer was closed before the record was delivered"))
        }
        for continuation in flushes {
            continuation.resume(throwing: GantryError(.closed, "the Kafka producer was closed while flushing"))
        }
        for continuation in stopWaiters { continuation.resume() }
    }
}
