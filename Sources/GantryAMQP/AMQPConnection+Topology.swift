import CRabbitMQ
import GantryCore

/// Queue and exchange RPCs. They all run on channel 1, where a refusal only costs a reopen.
extension AMQPConnection {
    func declareQueue(
        _ name: String,
        passive: Bool,
        durable: Bool,
        exclusive: Bool,
        autoDelete: Bool,
        arguments: [String: AMQPFieldValue]
    ) throws(GantryError) -> AMQPQueueStatus {
        try Self.validateName(name, what: "queue name", allowEmpty: !passive)
        let what = passive ? "queue.declare (passive) of queue '\(name)'" : "queue.declare of queue '\(name)'"
        return try withScratch { pool throws(GantryError) in
            let ok = amqp_queue_declare(
                state, Self.controlChannel, pool.bytes(name),
                passive ? 1 : 0, durable ? 1 : 0, exclusive ? 1 : 0, autoDelete ? 1 : 0,
                pool.table(arguments)
            )
            try checkReply(what, channel: Self.controlChannel)
            guard let ok else { throw GantryError(.protocolError, "\(what) returned no declare-ok") }
            return AMQPQueueStatus(name: swiftString(ok.pointee.queue), messageCount: ok.pointee.message_count, consumerCount: ok.pointee.consumer_count)
        }
    }

    func declareExchange(
        _ name: String,
        type: AMQPExchangeType,
        passive: Bool,
        durable: Bool,
        autoDelete: Bool,
        isInternal: Bool,
        arguments: [String: AMQPFieldValue]
    ) throws(GantryError) {
        try Self.validateName(name, what: "exchange name", allowEmpty: false)
        try withScratch { pool throws(GantryError) in
            _ = amqp_exchange_declare(
                state, Self.controlChannel, pool.bytes(name), pool.bytes(type.rawValue),
                passive ? 1 : 0, durable ? 1 : 0, autoDelete ? 1 : 0, isInternal ? 1 : 0,
                pool.table(arguments)
            )
            try checkReply("exchange.declare of \(type.rawValue) exchange '\(name)'", channel: Self.controlChannel)
        }
    }

    func deleteExchange(_ name: String, ifUnused: Bool) throws(GantryError) {
        try Self.validateName(name, what: "exchange name", allowEmpty: false)
        try withScratch { pool throws(GantryError) in
            _ = amqp_exchange_delete(state, Self.controlChannel, pool.bytes(name), ifUnused ? 1 : 0)
            try checkReply("exchange.delete of exchange '\(name)'", channel: Self.controlChannel)
        }
    }

    func bindQueue(_ queue: String, exchange: String, routingKey: String, arguments: [String: AMQPFieldValue], unbind: Bool) throws(GantryError) {
        try Self.validateName(queue, what: "queue name", allowEmpty: false)
        try Self.validateName(exchange, what: "exchange name", allowEmpty: false)
        try Self.validateName(routingKey, what: "routing key", allowEmpty: true)
        let verb = unbind ? "queue.unbind" : "queue.bind"
        try withScratch { pool throws(GantryError) in
            if unbind {
                _ = amqp_queue_unbind(state, Self.controlChannel, pool.bytes(queue), pool.bytes(exchange), pool.bytes(routingKey), pool.table(arguments))
            } else {
                _ = amqp_queue_bind(state, Self.controlChannel, pool.bytes(queue), pool.bytes(exchange), pool.bytes(routingKey), pool.table(arguments))
            }
            try checkReply("\(verb) of queue '\(queue)' to exchange '\(exchange)' with routing key '\(routingKey)'", channel: Self.controlChannel)
        }
    }

    func deleteQueue(_ name: String, ifUnused: Bool, ifEmpty: Bool) throws(GantryError) -> UInt32 {
        try Self.validateName(name, what: "queue name", allowEmpty: false)
        return try withScratch { pool throws(GantryError) in
            let ok = amqp_queue_delete(state, Self.controlChannel, pool.bytes(name), ifUnused ? 1 : 0, ifEmpty ? 1 : 0)
            try checkReply("queue.delete of queue '\(name)'", channel: Self.controlChannel)
            return ok?.pointee.message_count ?? 0
        }
    }

    func purgeQueue(_ name: String) throws(GantryError) -> UInt32 {
        try Self.validateName(name, what: "queue name", allowEmpty: false)
        return try withScratch { pool throws(GantryError) in
            let ok = amqp_queue_purge(state, Self.controlChannel, pool.bytes(name))
            try checkReply("queue.purge of queue '\(name)'", channel: Self.controlChannel)
            return ok?.pointee.message_count ?? 0
        }
    }

    /// AMQP short strings (names, keys, most properties) are at most 255 bytes; checking
    /// before sending keeps librabbitmq from failing halfway through a frame.
    static func validateName(_ value: String, what: String, allowEmpty: Bool) throws(GantryError) {
        if !allowEmpty && value.isEmpty {
            throw GantryError(.invalidArgument, "the \(what) is empty")
        }
        if value.utf8.count > 255 {
            throw GantryError(.invalidArgument, "the \(what) '\(value.prefix(40))…' is \(value.utf8.count) bytes; AMQP allows at most 255")
        }
    }
}
