import CRdKafka
import GantryCore
import Logging
import Synchronization

/// Owns one `rd_kafka_t` and the event queue Gantry polls it through.
///
/// librdkafka's handle and queue functions are thread-safe, so the pointers may be used from
/// the polling thread and from callers at once; the only state Swift keeps, whether the
/// handle was destroyed, is behind a `Mutex`. That is why `@unchecked Sendable` is honest
/// here.
final class RDKafkaClient: @unchecked Sendable {
    /// The librdkafka handle; valid until ``destroy()``.
    let handle: OpaquePointer
    /// The queue every event of this client arrives on (delivery reports, fetched records,
    /// rebalances, commit results, errors and logs).
    let queue: OpaquePointer
    private let destroyed = Mutex(false)

    /// Creates a producer or consumer handle from `conf`.
    ///
    /// - Parameter conf: consumed on every path: librdkafka takes it over on success, and it
    ///   is destroyed here on failure.
    init(type: rd_kafka_type_t, conf: OpaquePointer, events: Int32, consumer: Bool) throws {
        // Events go to a queue Swift polls instead of to C callbacks that would have to call
        // back into Swift from librdkafka's own threads.
        rd_kafka_conf_set_events(conf, events)
        var errstr = [CChar](repeating: 0, count: 512)
        // rd_kafka_new takes ownership of conf only when it succeeds.
        guard let handle = rd_kafka_new(type, conf, &errstr, errstr.count) else {
            rd_kafka_conf_destroy(conf)
            let reason = String(decoding: errstr.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw GantryError(.configuration, "could not create the Kafka client: \(reason)")
        }
        self.handle = handle
        let queue: OpaquePointer?
        if consumer {
            // One queue for everything: the main queue (errors, logs, rebalances) is
            // redirected into the consumer queue that fetched records arrive on.
            rd_kafka_poll_set_consumer(handle)
            queue = rd_kafka_queue_get_consumer(handle)
        } else {
            queue = rd_kafka_queue_get_main(handle)
        }
        guard let queue else {
            rd_kafka_destroy(handle)
            throw GantryError(.configuration, "librdkafka gave no event queue for the new client (is group.id set for a consumer?)")
        }
        self.queue = queue
        // log.queue=true (set by the callers) holds logs until a queue is named: this one.
        rd_kafka_set_log_queue(handle, queue)
    }

    /// Wakes a thread blocked in `rd_kafka_queue_poll` on ``queue`` so it notices a state
    /// change (close requested) without waiting out its poll timeout.
    ///
    /// Safe to call at any time: after ``destroy()`` it does nothing.
    func wakeUp() {
        // Under the lock so that destroy() cannot free the queue during the call.
        destroyed.withLock { done in
            if !done { rd_kafka_queue_yield(queue) }
        }
    }

    /// Releases the queue and the handle. Blocks while librdkafka stops its threads, so it is
    /// called from the client's own polling thread, never from a Swift task.
    func destroy() {
        let first = destroyed.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        // The queue holds a reference on the handle: it goes first.
        rd_kafka_queue_destroy(queue)
        rd_kafka_destroy(handle)
    }

    deinit {
        destroy()
    }

    /// Forwards one RD_KAFKA_EVENT_LOG event to swift-log.
    static func forwardLog(_ event: OpaquePointer, to logger: Logger) {
        var facility: UnsafePointer<CChar>?
        var message: UnsafePointer<CChar>?
        var level: Int32 = 0
        guard rd_kafka_event_log(event, &facility, &message, &level) == 0 else { return }
        let text = message.map { String(cString: $0) } ?? ""
        let fac = facility.map { String(cString: $0) } ?? ""
        // librdkafka uses syslog levels.
        let swiftLevel: Logger.Level
        switch level {
        case ...2: swiftLevel = .critical
        case 3: swiftLevel = .error
        case 4: swiftLevel = .warning
        case 5, 6: swiftLevel = .info
        default: swiftLevel = .debug
        }
        logger.log(level: swiftLevel, "\(text)", metadata: ["rdkafka.facility": "\(fac)"])
    }
}
