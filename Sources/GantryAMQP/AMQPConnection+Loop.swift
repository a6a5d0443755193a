import CRabbitMQ
import GantryCore
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The connection thread: its entry point, its loop, and how it reads what the broker sends.
extension AMQPConnection {
    /// Body of the dedicated connection thread: open, report to the caller of `connect`,
    /// then serve commands and frames until closed or failed.
    static func threadMain(configuration: AMQPConfiguration, logger: Logger, mailbox: AMQPMailbox, startup: PendingReply<Void>) {
        serve(configuration: configuration, logger: logger, mailbox: mailbox, startup: startup)
        // Last action of the thread: `close()` joins only after this, so the join never blocks.
        mailbox.threadDidExit()
    }

    /// Everything the thread does; the connection (and its C state) is freed when this returns.
    private static func serve(configuration: AMQPConfiguration, logger: Logger, mailbox: AMQPMailbox, startup: PendingReply<Void>) {
        let connection: AMQPConnection
        do {
            connection = try AMQPConnection(configuration: configuration, logger: logger)
            try connection.open()
        } catch {
            for command in mailbox.markFailed(error) { command.abandon(error) }
            startup.fail(error)
            return
        }
        guard !startup.isSettled, mailbox.markRunning() else {
            // The caller stopped waiting (cancelled) or closed meanwhile: leave politely.
            connection.shutDown(mailbox)
            startup.fail(mailbox.closedError)
            return
        }
        startup.succeed(())
        connection.run(mailbox)
    }

    /// Alternates between running queued commands and reading frames. Commands run between
    /// frames, never inside a half-read message, and frames queued by librabbitmq while a
    /// command waited for its reply (deliveries, confirms) are handled on the next pass.
    private func run(_ mailbox: AMQPMailbox) {
        while true {
            let (commands, closeRequested) = mailbox.take()
            for command in commands {
                if let failure {
                    command.abandon(failure)
                } else {
                    command.execute(self)
                    amqp_maybe_release_buffers(state)
                }
            }
            flushAcks()
            if let failure { return tearDown(failure, mailbox) }
            if closeRequested { return shutDown(mailbox) }
            pumpFrames(mailbox)
            if let failure { return tearDown(failure, mailbox) }
        }
    }

    /// Waits (bounded) for the socket or the mailbox, then handles the frames that are ready.
    private func pumpFrames(_ mailbox: AMQPMailbox) {
        if amqp_frames_enqueued(state) == 0, amqp_data_in_buffer(state) == 0, !mailbox.hasWork {
            waitForInput(mailbox)
        }
        // Bounded, so a busy consumer cannot starve queued acks and publishes.
        for _ in 0..<64 {
            guard failure == nil, let frame = readFrame() else { return }
            handle(frame)
            amqp_maybe_release_buffers(state)
        }
    }

    /// Blocks in poll on the AMQP socket and the mailbox pipe. The timeout is short enough
    /// that librabbitmq, which sends heartbeats only from inside its read calls, is never late.
    private func waitForInput(_ mailbox: AMQPMailbox) {
        let heartbeat = Int(amqp_get_heartbeat(state))
        let timeoutMilliseconds = Int32(heartbeat > 0 ? min(1000, heartbeat * 250) : 1000)
        var fds = [
            pollfd(fd: amqp_get_sockfd(state), events: Int16(POLLIN), revents: 0),
            pollfd(fd: mailbox.wakeReadFD, events: Int16(POLLIN), revents: 0),
        ]
        // A timeout, EINTR or readiness all lead to the same non-blocking read next.
        _ = poll(&fds, nfds_t(fds.count), timeoutMilliseconds)
    }

    /// The next complete frame without blocking, or nil. This call also sends a due
    /// heartbeat and notices a missed one.
    private func readFrame() -> amqp_frame_t? {
        var frame = amqp_frame_t()
        var immediately = timeval(tv_sec: 0, tv_usec: 0)
        let status = amqp_simple_wait_frame_noblock(state, &frame, &immediately)
        if status == AMQP_STATUS_TIMEOUT.rawValue { return nil }
        guard status == AMQP_STATUS_OK.rawValue else {
            fail(libraryError(status, while: "reading from the broker"))
            return nil
        }
        return frame
    }

    private func handle(_ frame: amqp_frame_t) {
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else {
            // Content frames are read together with their method; a lone one is left over
            // from a message whose method we could not use.
            logger.debug("ignoring a stray AMQP content frame", metadata: ["amqp.channel": "\(frame.channel)", "amqp.frame_type": "\(frame.frame_type)"])
            return
        }
        let method = frame.payload.method
        let channel = frame.channel
        switch method.id {
        case AMQP_BASIC_DELIVER_METHOD:
            receiveDelivery(method, channel: channel)
        case AMQP_BASIC_ACK_METHOD:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            handleConfirm(deliveryTag: ack.delivery_tag, multiple: ack.multiple != 0, nack: false)
        case AMQP_BASIC_NACK_METHOD:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            handleConfirm(deliveryTag: nack.delivery_tag, multiple: nack.multiple != 0, nack: true)
        case AMQP_BASIC_RETURN_METHOD:
            receiveReturn(method, channel: channel)
        case AMQP_BASIC_CANCEL_METHOD:
            let cancel = method.decoded.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            let tag = swiftString(cancel.consumer_tag)
            if cancel.nowait == 0 {
                withScratch { pool in
                    var cancelOK = amqp_basic_cancel_ok_t(consumer_tag: pool.bytes(tag))
                    _ = amqp_send_method(state, channel, AMQP_BASIC_CANCEL_OK_METHOD, &cancelOK)
                }
            }
            brokerCancelled(tag)
        case AMQP_CHANNEL_CLOSE_METHOD:
            let close = acknowledgeChannelClose(method, channel: channel)
            if channel == Self.controlChannel {
                logger.warning("RabbitMQ closed the AMQP control channel; reopening it", metadata: ["amqp.reply": "\(close.code) \(close.text)"])
                reopenControlChannel()
            } else {
                fail(dataChannelClosedError(close, channel: channel))
            }
        case AMQP_CONNECTION_CLOSE_METHOD:
            fail(connectionClosedError(acknowledgeConnectionClose(method)))
        case AMQP_CONNECTION_BLOCKED_METHOD:
            let blocked = method.decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
            blockedReason = swiftString(blocked.reason)
            logger.warning("RabbitMQ blocked publishing on this connection (resource alarm); publishes wait until it is lifted", metadata: ["amqp.reason": "\(blockedReason ?? "")"])
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            blockedReason = nil
            logger.info("RabbitMQ unblocked publishing on this connection")
        case AMQP_CHANNEL_FLOW_METHOD:
            let flow = method.decoded.assumingMemoryBound(to: amqp_channel_flow_t.self).pointee
            var flowOK = amqp_channel_flow_ok_t(active: flow.active)
            _ = amqp_send_method(state, channel, AMQP_CHANNEL_FLOW_OK_METHOD, &flowOK)
        default:
            logger.debug("ignoring an unexpected AMQP method", metadata: ["amqp.channel": "\(channel)", "amqp.method": "0x\(String(method.id, radix: 16))"])
        }
    }

    /// basic.deliver: copy the method fields, read the content that follows, hand it over.
    private func receiveDelivery(_ method: amqp_method_t, channel: amqp_channel_t) {
        // Copy before reading on: the decoded method lives in librabbitmq's frame pool.
        let fields = method.decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
        let deliveryTag = fields.delivery_tag
        let redelivered = fields.redelivered != 0
        let consumerTag = swiftString(fields.consumer_tag)
        let exchange = swiftString(fields.exchange)
        let routingKey = swiftString(fields.routing_key)

        guard let (body, properties) = readContent(channel: channel, what: "the content of delivery \(deliveryTag)") else { return }
        guard channel == Self.dataChannel else {
            logger.warning("ignoring a delivery on an unexpected AMQP channel", metadata: ["amqp.channel": "\(channel)"])
            return
        }
        deliver(AMQPDelivery(
            deliveryTag: deliveryTag,
            redelivered: redelivered,
            exchange: exchange,
            routingKey: routingKey,
            consumerTag: consumerTag,
            body: body,
            properties: properties
        ))
    }

    /// basic.return: an unroutable mandatory message; read and drop its content.
    private func receiveReturn(_ method: amqp_method_t, channel: amqp_channel_t) {
        let fields = method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
        let replyCode = fields.reply_code
        let replyText = swiftString(fields.reply_text)
        let exchange = swiftString(fields.exchange)
        let routingKey = swiftString(fields.routing_key)
        guard readContent(channel: channel, what: "a returned message") != nil else { return }
        handleReturn(replyCode: replyCode, replyText: replyText, exchange: exchange, routingKey: routingKey)
    }

    /// Reads the content header and body frames that follow a deliver or return method.
    private func readContent(channel: amqp_channel_t, what: String) -> ([UInt8], AMQPProperties)? {
        var message = amqp_message_t()
        let reply = amqp_read_message(state, channel, &message, 0)
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
            // amqp_read_message frees a partial message itself on failure.
            _ = replyError(reply, what: "reading \(what)", channel: channel)
            return nil
        }
        // On success the message (body and property pool) is ours to destroy.
        defer { amqp_destroy_message(&message) }
        return (swiftBytes(message.body), AMQPProperties(message.properties))
    }

    /// The connection failed: refuse new work, fail everything waiting, end consumers.
    private func tearDown(_ error: GantryError, _ mailbox: AMQPMailbox) {
        logger.warning("AMQP connection failed", metadata: ["amqp.endpoint": "\(endpoint)", "error": "\(error)"])
        for command in mailbox.markFailed(error) { command.abandon(error) }
        failPendingConfirms(error)
        finishConsumers(error: error)
        // After a channel-level failure the socket still works: say goodbye properly.
        closeGracefully()
    }

    /// A requested close: commands queued before it already ran; later ones are refused.
    func shutDown(_ mailbox: AMQPMailbox) {
        // Acks accepted before the close must reach the broker before the channel closes.
        flushAcks()
        let closed = mailbox.closedError
        for command in mailbox.markClosing() { command.abandon(closed) }
        failPendingConfirms(GantryError(
            .closed,
            "the RabbitMQ connection to \(endpoint) was closed before the broker confirmed the publish; it may or may not have been stored",
            isRetriable: true
        ))
        // Unread deliveries need no requeue: closing the channel returns them to their queues.
        finishConsumers(error: nil)
        closeGracefully()
        mailbox.markClosed()
        logger.debug("AMQP connection closed", metadata: ["amqp.endpoint": "\(endpoint)"])
    }
}
