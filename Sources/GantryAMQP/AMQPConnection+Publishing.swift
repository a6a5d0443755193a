import CRabbitMQ
import GantryCore

/// The messages of one `publish` call whose confirms are still outstanding.
final class ConfirmGroup {
    let reply: PendingReply<Void>
    let total: Int
    var outstanding: Int
    var nacked: [String] = []
    var unroutable: [String] = []

    init(reply: PendingReply<Void>, total: Int) {
        self.reply = reply
        self.total = total
        self.outstanding = total
    }

    /// Answers the caller once the last confirm arrived.
    func confirmOne() {
        outstanding -= 1
        guard outstanding == 0 else { return }
        if !nacked.isEmpty {
            reply.fail(GantryError(
                .commandFailed,
                "RabbitMQ refused \(nacked.count) of \(total) published messages (basic.nack: \(nacked.prefix(3).joined(separator: "; "))); the broker could not take them (queue overflow with reject-publish, or an internal error); publish them again",
                isRetriable: true
            ))
        } else if !unroutable.isEmpty {
            reply.fail(GantryError(
                .notFound,
                "RabbitMQ could not route \(unroutable.count) of \(total) mandatory messages (\(unroutable.prefix(3).joined(separator: "; "))); declare and bind the queue before publishing",
                isRetriable: false
            ))
        } else {
            reply.succeed(())
        }
    }
}

/// One published message waiting for its confirm.
struct PendingConfirm {
    var group: ConfirmGroup
    var exchange: String
    var routingKey: String
    var mandatory: Bool
    var returned: String?

    var target: String { "exchange '\(exchange)' routing key '\(routingKey)'" }
}

/// Publishing and publisher confirms, on channel 2.
extension AMQPConnection {
    func confirmSelect() throws(GantryError) {
        guard !confirmMode else { return }
        _ = amqp_confirm_select(state, Self.dataChannel)
        try checkReply("confirm.select", channel: Self.dataChannel)
        confirmMode = true
        // Confirm sequence numbers start at 1 with confirm.select.
        nextPublishSequence = 1
        oldestUnconfirmed = 1
    }

    /// Sends every message, then answers `reply` once all are confirmed (or at once without
    /// confirm mode). Nothing is sent if any message is invalid.
    func publish(_ messages: [AMQPOutboundMessage], reply: PendingReply<Void>) {
        do {
            for message in messages {
                try validate(message)
            }
        } catch {
            reply.fail(error)
            return
        }
        let group = confirmMode && !messages.isEmpty ? ConfirmGroup(reply: reply, total: messages.count) : nil
        for message in messages {
            let status = withScratch { pool in
                var properties = pool.properties(message.properties)
                return message.body.withUnsafeBytes { body in
                    // librabbitmq only reads the body while writing frames; it never keeps it.
                    amqp_basic_publish(
                        state, Self.dataChannel,
                        pool.bytes(message.exchange), pool.bytes(message.routingKey),
                        message.mandatory ? 1 : 0, 0, &properties,
                        amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress))
                    )
                }
            }
            guard status == AMQP_STATUS_OK.rawValue else {
                // Frames may be half written: the channel is unusable, the connection too.
                let error = libraryError(status, while: "basic.publish to \(message.exchange.isEmpty ? "the default exchange" : "exchange '\(message.exchange)'")")
                fail(error)
                reply.fail(error)
                return
            }
            if let group {
                pendingConfirms[nextPublishSequence] = PendingConfirm(group: group, exchange: message.exchange, routingKey: message.routingKey, mandatory: message.mandatory)
                nextPublishSequence += 1
            }
        }
        if group == nil {
            reply.succeed(())
        }
    }

    /// basic.ack / basic.nack from the broker for our publishes.
    func handleConfirm(deliveryTag: UInt64, multiple: Bool, nack: Bool) {
        if multiple {
            var sequence = oldestUnconfirmed
            // Bounded by what we published, whatever tag the broker sends.
            let last = min(deliveryTag, nextPublishSequence &- 1)
            while sequence <= last {
                resolveConfirm(sequence, nack: nack)
                sequence += 1
            }
            oldestUnconfirmed = max(oldestUnconfirmed, deliveryTag &+ 1)
        } else {
            resolveConfirm(deliveryTag, nack: nack)
        }
        while oldestUnconfirmed < nextPublishSequence && pendingConfirms[oldestUnconfirmed] == nil {
            oldestUnconfirmed += 1
        }
    }

    private func resolveConfirm(_ sequence: UInt64, nack: Bool) {
        guard let pending = pendingConfirms.removeValue(forKey: sequence) else { return }
        if nack {
            pending.group.nacked.append(pending.target)
        } else if let returned = pending.returned {
            pending.group.unroutable.append(returned)
        }
        pending.group.confirmOne()
    }

    /// basic.return: a mandatory message matched no queue. The broker sends it before the
    /// message's basic.ack and in publish order, so it belongs to the oldest unconfirmed
    /// mandatory message with the same exchange and routing key not yet marked returned.
    func handleReturn(replyCode: UInt16, replyText: String, exchange: String, routingKey: String) {
        var sequence = oldestUnconfirmed
        while sequence < nextPublishSequence {
            if var pending = pendingConfirms[sequence], pending.mandatory, pending.returned == nil,
               pending.exchange == exchange, pending.routingKey == routingKey {
                pending.returned = "\(pending.target): \(replyCode) \(replyText)"
                pendingConfirms[sequence] = pending
                return
            }
            sequence += 1
        }
        logger.warning("RabbitMQ returned an unroutable message (enable confirm mode to have publish report it)", metadata: [
            "amqp.exchange": "\(exchange)", "amqp.routing_key": "\(routingKey)", "amqp.reply": "\(replyCode) \(replyText)",
        ])
    }

    /// Fails every publish still waiting for a confirm.
    func failPendingConfirms(_ error: GantryError) {
        let groups = pendingConfirms.values.map(\.group)
        pendingConfirms = [:]
        for group in groups {
            group.reply.fail(error)
        }
    }

    /// Rejects what librabbitmq would fail on only after the publish method frame is out,
    /// which would leave the channel half way through a message.
    private func validate(_ message: AMQPOutboundMessage) throws(GantryError) {
        try Self.validateName(message.exchange, what: "exchange name", allowEmpty: true)
        try Self.validateName(message.routingKey, what: "routing key", allowEmpty: true)
        let properties = message.properties
        let shortStrings: [(String, String?)] = [
            ("content type", properties.contentType), ("content encoding", properties.contentEncoding),
            ("correlation id", properties.correlationID), ("reply-to", properties.replyTo),
            ("expiration", properties.expiration), ("message id", properties.messageID),
            ("type", properties.type), ("user id", properties.userID), ("app id", properties.appID),
        ]
        for (what, value) in shortStrings {
            if let value { try Self.validateName(value, what: what, allowEmpty: true) }
        }
        // The content header must fit in one frame, or librabbitmq fails after the method
        // frame is already out. Frame: 7-byte header + payload + end octet; the payload is
        // class, weight, body size, flags (14 bytes) and the present properties.
        try Self.validateKeys(properties.headers)
        var size = 14 + 1 + 1 + 8
        for (_, value) in shortStrings { if let value { size += 1 + value.utf8.count } }
        if !properties.headers.isEmpty { size += Self.encodedSize(properties.headers) }
        let limit = Int(amqp_get_frame_max(state)) - 8
        if size > limit {
            throw GantryError(.payloadTooLarge, "the properties of a message to exchange '\(message.exchange)' routing key '\(message.routingKey)' encode to \(size) bytes, more than one \(limit + 8)-byte AMQP frame; move data from the headers into the body")
        }
    }

    /// Table keys are short strings too, at every nesting level.
    private static func validateKeys(_ table: [String: AMQPFieldValue]) throws(GantryError) {
        for (key, value) in table {
            try validateName(key, what: "header name", allowEmpty: true)
            switch value {
            case .table(let nested): try validateKeys(nested)
            case .array(let values):
                for case .table(let nested) in values { try validateKeys(nested) }
            default: break
            }
        }
    }

    /// Bytes an AMQP field table takes on the wire.
    static func encodedSize(_ table: [String: AMQPFieldValue]) -> Int {
        4 + table.reduce(0) { $0 + 1 + $1.key.utf8.count + encodedSize($1.value) }
    }

    /// Bytes an AMQP field value takes on the wire, its type octet included.
    static func encodedSize(_ value: AMQPFieldValue) -> Int {
        switch value {
        case .bool, .int8, .uint8: 2
        case .int16, .uint16: 3
        case .int32, .uint32, .float: 5
        case .int64, .uint64, .double, .timestamp: 9
        case .decimal: 6
        case .string(let text): 5 + text.utf8.count
        case .bytes(let bytes): 5 + bytes.count
        case .array(let values): 5 + values.reduce(0) { $0 + encodedSize($1) }
        case .table(let table): 1 + encodedSize(table)
        case .void: 1
        }
    }
}
