import CRabbitMQ
import GantryCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A consumer registered on channel 2.
struct ConsumerRecord {
    var queue: String
    var buffer: DeliveryBuffer
}

/// qos, consumers and settling deliveries, all on channel 2.
extension AMQPConnection {
    func qos(prefetchCount: UInt16, global: Bool) throws(GantryError) {
        guard prefetchCount > 0 else {
            throw GantryError(.invalidArgument, "a prefetch count of 0 means unlimited deliveries and unbounded buffering; pass 1 or more")
        }
        _ = amqp_basic_qos(state, Self.dataChannel, 0, prefetchCount, global ? 1 : 0)
        try checkReply("basic.qos with prefetch \(prefetchCount)", channel: Self.dataChannel)
        self.prefetchCount = prefetchCount
    }

    func consume(queue: String, consumerTag: String, exclusive: Bool, arguments: [String: AMQPFieldValue], buffer: DeliveryBuffer) throws(GantryError) {
        try Self.validateName(consumerTag, what: "consumer tag", allowEmpty: false)
        guard consumers[consumerTag] == nil else {
            throw GantryError(.invalidArgument, "consumer tag '\(consumerTag)' is already in use on this connection")
        }
        // A passive declare on channel 1 first: a missing queue then fails this call alone,
        // instead of closing channel 2, which every consumer and publisher here shares.
        _ = try declareQueue(queue, passive: true, durable: false, exclusive: false, autoDelete: false, arguments: [:])
        if prefetchCount == 0 {
            // Never consume without a prefetch: it is what bounds the delivery buffers.
            try qos(prefetchCount: configuration.defaultPrefetchCount, global: false)
        }
        try withScratch { pool throws(GantryError) in
            _ = amqp_basic_consume(
                state, Self.dataChannel, pool.bytes(queue), pool.bytes(consumerTag),
                0, 0, exclusive ? 1 : 0, pool.table(arguments)
            )
            try checkReply("basic.consume on queue '\(queue)'", channel: Self.dataChannel)
        }
        consumers[consumerTag] = ConsumerRecord(queue: queue, buffer: buffer)
        logger.debug("AMQP consumer started", metadata: ["amqp.queue": "\(queue)", "amqp.consumer": "\(consumerTag)"])
    }

    /// basic.cancel, then requeue what the consumer buffered but never handed out.
    /// Deliveries still in flight arrive for an unknown tag and are requeued on arrival.
    ///
    /// Only cancels the consumer that owns `buffer`: a failed `consume` with a tag already in
    /// use must not cancel the consumer that holds it.
    func cancelConsumer(_ consumerTag: String, buffer: DeliveryBuffer) throws(GantryError) {
        guard let record = consumers[consumerTag], record.buffer === buffer else { return }
        defer {
            consumers[consumerTag] = nil
            for delivery in record.buffer.finish(error: nil, keepUnread: false) where failure == nil {
                requeueUnread(delivery.deliveryTag)
            }
        }
        try withScratch { pool throws(GantryError) in
            _ = amqp_basic_cancel(state, Self.dataChannel, pool.bytes(consumerTag))
            try checkReply("basic.cancel of consumer '\(consumerTag)'", channel: Self.dataChannel)
        }
        logger.debug("AMQP consumer cancelled", metadata: ["amqp.queue": "\(record.queue)", "amqp.consumer": "\(consumerTag)"])
    }

    /// The broker cancelled a consumer (its queue was deleted, or a quorum queue lost its
    /// leader); the channel is fine, so buffered deliveries can still be read and acked.
    func brokerCancelled(_ consumerTag: String) {
        guard let record = consumers.removeValue(forKey: consumerTag) else { return }
        logger.warning("RabbitMQ cancelled an AMQP consumer", metadata: ["amqp.queue": "\(record.queue)", "amqp.consumer": "\(consumerTag)"])
        let error = GantryError(
            .connectionFailed,
            "RabbitMQ cancelled consumer '\(consumerTag)' on queue '\(record.queue)' (queue deleted, or its leader moved); consume again once the queue exists",
            isRetriable: true
        )
        for delivery in record.buffer.finish(error: error, keepUnread: true) {
            requeueUnread(delivery.deliveryTag)
        }
    }

    /// Sends a delivery nobody will read back to its queue, right away.
    func requeueUnread(_ deliveryTag: UInt64) {
        guard unacknowledged.remove(deliveryTag) != nil else { return }
        let status = amqp_basic_nack(state, Self.dataChannel, deliveryTag, 0, 1)
        if status != AMQP_STATUS_OK.rawValue {
            fail(libraryError(status, while: "basic.nack (requeue) of an unread delivery"))
        }
    }

    enum Settlement {
        case ack
        case nack(requeue: Bool)
        case reject(requeue: Bool)

        var methodName: String {
            switch self {
            case .ack: "basic.ack"
            case .nack: "basic.nack"
            case .reject: "basic.reject"
            }
        }
    }

    /// Acks, nacks or rejects deliveries.
    ///
    /// Checks the tag first: settling an unknown tag makes RabbitMQ close channel 2
    /// (406 PRECONDITION_FAILED), which would fail every consumer on the connection.
    ///
    /// A single ack is only recorded here and written by ``flushAcks()`` once the commands
    /// queued beside it have run, so that acks arriving together cost one write (and, where
    /// the tags allow, one multiple-ack). Anything else first flushes the acks recorded before it.
    func settle(_ settlement: Settlement, deliveryTag: UInt64, multiple: Bool) throws(GantryError) {
        if multiple && deliveryTag == 0 {
            flushAcks()
            try send(settlement, deliveryTag: deliveryTag, multiple: true)
            unacknowledged.removeAll()
            return
        }
        guard unacknowledged.contains(deliveryTag) else {
            throw GantryError(
                .invalidArgument,
                "\(settlement.methodName) of delivery tag \(deliveryTag): no such unsettled delivery on this connection (already settled, or delivered by an earlier connection whose deliveries the broker has requeued)"
            )
        }
        if case .ack = settlement, !multiple {
            unacknowledged.remove(deliveryTag)
            pendingAcks.append(deliveryTag)
            return
        }
        flushAcks()
        try send(settlement, deliveryTag: deliveryTag, multiple: multiple)
        if multiple {
            unacknowledged = unacknowledged.filter { $0 > deliveryTag }
        } else {
            unacknowledged.remove(deliveryTag)
        }
    }

    /// Writes the acks ``settle(_:deliveryTag:multiple:)`` recorded: one multiple-ack for those
    /// below every delivery still unsettled, one basic.ack each for the rest, in one TCP segment
    /// where they fit. Called after each batch of commands and before a close.
    func flushAcks() {
        guard !pendingAcks.isEmpty else { return }
        defer { pendingAcks.removeAll(keepingCapacity: true) }
        // A failed connection is being torn down: the broker requeues what was never acked.
        guard failure == nil else { return }
        pendingAcks.sort()
        // A multiple-ack of tag T settles every delivery up to T; the ones below the lowest
        // still-unsettled tag are exactly those, so one frame covers them.
        let lowestOpen = unacknowledged.min() ?? .max
        var covered = 0
        while covered < pendingAcks.count, pendingAcks[covered] < lowestOpen { covered += 1 }
        let frames = (covered > 1 ? 1 : covered) + pendingAcks.count - covered
        let fd = amqp_get_sockfd(state)
        if frames > 1 { setCork(fd, true) }
        defer { if frames > 1 { setCork(fd, false) } }
        do throws(GantryError) {
            if covered > 1 {
                try send(.ack, deliveryTag: pendingAcks[covered - 1], multiple: true)
            } else if covered == 1 {
                try send(.ack, deliveryTag: pendingAcks[0], multiple: false)
            }
            for tag in pendingAcks[covered...] {
                try send(.ack, deliveryTag: tag, multiple: false)
            }
        } catch {
            // `send` failed the connection; its consumers learn it from the teardown.
        }
    }

    /// Holds (or releases) partial TCP segments, so frames written one by one leave together.
    private func setCork(_ fd: Int32, _ on: Bool) {
        #if os(Linux)
        guard fd >= 0 else { return }
        var value: Int32 = on ? 1 : 0
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_CORK, &value, socklen_t(MemoryLayout<Int32>.size))
        #endif
    }

    /// Writes one basic.ack, basic.nack or basic.reject; a failed write fails the connection.
    private func send(_ settlement: Settlement, deliveryTag: UInt64, multiple: Bool) throws(GantryError) {
        let status: Int32
        switch settlement {
        case .ack:
            status = amqp_basic_ack(state, Self.dataChannel, deliveryTag, multiple ? 1 : 0)
        case .nack(let requeue):
            status = amqp_basic_nack(state, Self.dataChannel, deliveryTag, multiple ? 1 : 0, requeue ? 1 : 0)
        case .reject(let requeue):
            status = amqp_basic_reject(state, Self.dataChannel, deliveryTag, requeue ? 1 : 0)
        }
        guard status == AMQP_STATUS_OK.rawValue else {
            let error = libraryError(status, while: settlement.methodName)
            fail(error)
            throw error
        }
    }

    /// Hands a basic.deliver (already read with its content) to its consumer.
    func deliver(_ delivery: AMQPDelivery) {
        unacknowledged.insert(delivery.deliveryTag)
        if let record = consumers[delivery.consumerTag], record.buffer.push(delivery) {
            return
        }
        // The consumer is gone or stopped: nobody would ever settle this delivery.
        requeueUnread(delivery.deliveryTag)
    }

    /// Ends every consumer stream: with `error` when the connection failed, normally on close.
    func finishConsumers(error: GantryError?) {
        let records = consumers
        consumers = [:]
        for record in records.values {
            record.buffer.finish(error: error, keepUnread: false)
        }
    }
}
