import CRabbitMQ
import GantryCore
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One blocking librabbitmq connection, owned by exactly one dedicated thread.
///
/// librabbitmq is not thread safe, so this class is not `Sendable`: the connection thread
/// creates it, runs every command and reads every frame on it, and destroys it. Async code
/// reaches it only through `AMQPClient`, which queues commands in the ``AMQPMailbox``.
///
/// Two channels: channel 1 carries topology RPCs (declare, bind, delete, purge, depth), so a
/// refused declare — which makes the broker close its channel — costs nothing but a channel
/// reopen; channel 2 carries qos, consumers, acks and publishes. Delivery tags live on
/// channel 2 and are never reused, because a closed channel 2 fails the whole connection
/// instead of being reopened (an old tag acked on a new channel would settle the wrong message).
final class AMQPConnection {
    static let controlChannel: amqp_channel_t = 1
    static let dataChannel: amqp_channel_t = 2

    let configuration: AMQPConfiguration
    let logger: Logger
    let state: amqp_connection_state_t
    /// Reused scratch memory for C arguments; recycled after every call.
    let scratch = AMQPPool()

    /// Set once, by the first fatal error; the thread then tears everything down.
    private(set) var failure: GantryError?
    /// Whether librabbitmq still has a usable socket (a polite connection.close makes sense).
    var socketUsable = true
    /// Channels the broker considers open; a closed one must not be closed again, which
    /// RabbitMQ would answer with a connection error.
    var openChannels: Set<amqp_channel_t> = []

    // Channel 2 state, touched only on the connection thread.
    var confirmMode = false
    var nextPublishSequence: UInt64 = 1
    var oldestUnconfirmed: UInt64 = 1
    var pendingConfirms: [UInt64: PendingConfirm] = [:]
    var prefetchCount: UInt16 = 0
    var consumers: [String: ConsumerRecord] = [:]
    var unacknowledged: Set<UInt64> = []
    /// Acks accepted by `settle` and not written yet; `flushAcks()` sends them.
    var pendingAcks: [UInt64] = []
    var blockedReason: String?

    init(configuration: AMQPConfiguration, logger: Logger) throws(GantryError) {
        guard let state = amqp_new_connection() else {
            throw GantryError(.connectionFailed, "librabbitmq could not allocate a connection (out of memory)")
        }
        self.state = state
        self.configuration = configuration
        self.logger = logger
    }

    deinit {
        // Frees the connection state and the socket it owns (closing its file descriptor).
        amqp_destroy_connection(state)
    }

    var endpoint: String { configuration.endpoint }

    /// Records a fatal error; the first one wins, later ones are consequences.
    func fail(_ error: GantryError) {
        if failure == nil {
            failure = error
        }
    }

    // MARK: - Opening

    /// Connects the socket, performs the AMQP handshake and opens both channels.
    func open() throws(GantryError) {
        if let rpcTimeout = configuration.rpcTimeout {
            var timeout = timeval(rpcTimeout)
            // librabbitmq copies the timeval.
            amqp_set_rpc_timeout(state, &timeout)
        }
        try openSocket()
        try handshake()
        try openChannel(Self.controlChannel)
        try openChannel(Self.dataChannel)
        logger.debug("AMQP connection open", metadata: ["amqp.endpoint": "\(endpoint)", "amqp.vhost": "\(configuration.virtualHost)"])
    }

    private func openSocket() throws(GantryError) {
        // Both constructors attach the socket to `state`, which owns and frees it.
        let socket: OpaquePointer
        if let tls = configuration.tls {
            guard let ssl = amqp_ssl_socket_new(state) else {
                throw GantryError(.connectionFailed, "librabbitmq could not create a TLS socket for \(endpoint)")
            }
            amqp_ssl_socket_set_verify_peer(ssl, tls.verifyPeer ? 1 : 0)
            amqp_ssl_socket_set_verify_hostname(ssl, tls.verifyHostname ? 1 : 0)
            if let ca = tls.caCertificatePath {
                let status = amqp_ssl_socket_set_cacert(ssl, ca)
                guard status == AMQP_STATUS_OK.rawValue else {
                    throw GantryError(.configuration, "cannot load the CA certificate '\(ca)' for \(endpoint): \(Self.describe(status)); check cacertfile in GANTRY_AMQP_URL")
                }
            }
            if let certificate = tls.clientCertificatePath, let key = tls.clientKeyPath {
                let status = amqp_ssl_socket_set_key(ssl, certificate, key)
                guard status == AMQP_STATUS_OK.rawValue else {
                    throw GantryError(.configuration, "cannot load the client certificate '\(certificate)' / key '\(key)': \(Self.describe(status)); check certfile and keyfile in GANTRY_AMQP_URL")
                }
            }
            socket = ssl
        } else {
            guard let tcp = amqp_tcp_socket_new(state) else {
                throw GantryError(.connectionFailed, "librabbitmq could not create a socket for \(endpoint)")
            }
            socket = tcp
        }

        var timeout = timeval(configuration.connectTimeout)
        let status = amqp_socket_open_noblock(socket, configuration.host, Int32(configuration.port), &timeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            let key = AMQPConfiguration.environmentKey
            var reason = Self.describe(status)
            var remedy = "start it with ops/stack up or set \(key)"
            switch status {
            case AMQP_STATUS_SOCKET_ERROR.rawValue:
                if let diagnosis = diagnoseConnectFailure() { reason = diagnosis }
            case AMQP_STATUS_TIMEOUT.rawValue:
                reason = "no answer within \(configuration.connectTimeout)"
            case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED.rawValue:
                remedy = "check the host in \(key)"
            case AMQP_STATUS_SSL_ERROR.rawValue, AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue,
                 AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue, AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue:
                remedy = "check that the port speaks TLS and the TLS settings in \(key) (cacertfile, verify, verify_hostname)"
            default:
                break
            }
            throw GantryError(.connectionFailed, "cannot connect to RabbitMQ at \(endpoint): \(reason); \(remedy)", isRetriable: true)
        }
    }

    /// Why a TCP connect to the broker fails, in the operating system's words.
    ///
    /// librabbitmq reports every failed connect as "a socket error": its connect is
    /// non-blocking and it reads the real cause (SO_ERROR) into a local, leaving a stale errno.
    /// So, on this failure path only, connect once more the same way and keep the cause.
    private func diagnoseConnectFailure() -> String? {
        var hints = addrinfo()
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        var addresses: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(configuration.host, String(configuration.port), &hints, &addresses) == 0, let address = addresses else {
            return nil
        }
        // getaddrinfo allocated the list; freeaddrinfo releases all of it.
        defer { freeaddrinfo(addresses) }
        let fd = socket(address.pointee.ai_family, address.pointee.ai_socktype, address.pointee.ai_protocol)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        _ = fcntl(fd, F_SETFL, O_NONBLOCK)
        if connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 { return nil }
        guard errno == EINPROGRESS else { return String(cString: strerror(errno)).lowercased() }
        var pending = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        let milliseconds = min(configuration.connectTimeout, .seconds(2)).components.seconds * 1000
            + min(configuration.connectTimeout, .seconds(2)).components.attoseconds / 1_000_000_000_000_000
        guard poll(&pending, 1, Int32(milliseconds)) == 1 else { return nil }
        var cause: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &cause, &length) == 0, cause != 0 else { return nil }
        return String(cString: strerror(cause)).lowercased()
    }

    /// The AMQP 0-9-1 connection handshake, done with librabbitmq's non-variadic calls
    /// because Swift cannot call the variadic `amqp_login`. Mirrors what `amqp_login` does:
    /// header → start / start-ok (SASL PLAIN) → tune / tune-ok → open / open-ok.
    private func handshake() throws(GantryError) {
        let deadline = ContinuousClock.now.advanced(by: configuration.connectTimeout)

        var status = amqp_send_header(state)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw handshakeFailure("sending the protocol header", status: status)
        }

        let start = try waitForHandshakeMethod([AMQP_CONNECTION_START_METHOD], step: "connection.start", deadline: deadline)
        let startFields = start.decoded.assumingMemoryBound(to: amqp_connection_start_t.self).pointee
        guard startFields.version_major == 0, startFields.version_minor == 9 else {
            throw GantryError(.protocolError, "\(endpoint) speaks AMQP \(startFields.version_major)-\(startFields.version_minor), not 0-9-1")
        }
        let mechanisms = swiftString(startFields.mechanisms).split(separator: " ")
        guard mechanisms.contains("PLAIN") else {
            throw GantryError(.connectionFailed, "RabbitMQ at \(endpoint) offers SASL mechanisms \(mechanisms.joined(separator: ", ")) but not PLAIN", isRetriable: false)
        }
        let server = swiftTable(startFields.server_properties)
        logger.debug("AMQP server", metadata: [
            "amqp.server.product": "\(server["product"]?.stringValue ?? "?")",
            "amqp.server.version": "\(server["version"]?.stringValue ?? "?")",
        ])

        status = withScratch { pool in
            var startOK = amqp_connection_start_ok_t(
                client_properties: pool.table(clientProperties),
                mechanism: pool.bytes("PLAIN"),
                // SASL PLAIN: authzid NUL authcid NUL password.
                response: pool.bytes([0] + Array(configuration.user.utf8) + [0] + Array(configuration.password.utf8)),
                locale: pool.bytes("en_US")
            )
            return amqp_send_method(state, 0, AMQP_CONNECTION_START_OK_METHOD, &startOK)
        }
        guard status == AMQP_STATUS_OK.rawValue else {
            throw handshakeFailure("sending connection.start-ok", status: status)
        }

        // With authentication_failure_close the broker answers bad credentials with
        // connection.close (403) instead of dropping the socket.
        let tune = try waitForHandshakeMethod([AMQP_CONNECTION_TUNE_METHOD, AMQP_CONNECTION_CLOSE_METHOD], step: "connection.tune", deadline: deadline)
        if tune.id == AMQP_CONNECTION_CLOSE_METHOD {
            let close = acknowledgeConnectionClose(tune)
            throw GantryError(
                .connectionFailed,
                "RabbitMQ at \(endpoint) refused the login of user '\(configuration.user)': \(close.code) \(close.text); check the user and password in \(AMQPConfiguration.environmentKey)",
                isRetriable: false
            )
        }
        let offer = tune.decoded.assumingMemoryBound(to: amqp_connection_tune_t.self).pointee
        let (channelMax, frameMax, heartbeat) = negotiate(offer)

        status = amqp_tune_connection(state, channelMax, frameMax, heartbeat)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw handshakeFailure("tuning the connection", status: status)
        }
        var tuneOK = amqp_connection_tune_ok_t(channel_max: UInt16(channelMax), frame_max: UInt32(frameMax), heartbeat: UInt16(heartbeat))
        status = amqp_send_method(state, 0, AMQP_CONNECTION_TUNE_OK_METHOD, &tuneOK)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw handshakeFailure("sending connection.tune-ok", status: status)
        }
        amqp_maybe_release_buffers(state)

        let reply: amqp_rpc_reply_t = withScratch { pool in
            var open = amqp_connection_open_t(virtual_host: pool.bytes(configuration.virtualHost), capabilities: amqp_empty_bytes, insist: 1)
            var replies: [amqp_method_number_t] = [AMQP_CONNECTION_OPEN_OK_METHOD, 0]
            return amqp_simple_rpc(state, 0, AMQP_CONNECTION_OPEN_METHOD, &replies, &open)
        }
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            amqp_maybe_release_buffers(state)
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD:
            let close = acknowledgeConnectionClose(reply.reply)
            throw GantryError(
                .connectionFailed,
                "RabbitMQ at \(endpoint) refused to open vhost '\(configuration.virtualHost)' for user '\(configuration.user)': \(close.code) \(close.text); check the vhost in \(AMQPConfiguration.environmentKey)",
                isRetriable: false
            )
        default:
            throw handshakeFailure("opening vhost '\(configuration.virtualHost)'", status: reply.library_error)
        }
    }

    /// Our limits against the broker's offer, the way `amqp_login` settles them (0 = no limit).
    private func negotiate(_ offer: amqp_connection_tune_t) -> (channelMax: Int32, frameMax: Int32, heartbeat: Int32) {
        var channelMax = Int32(configuration.channelMax)
        if offer.channel_max != 0, channelMax == 0 || Int32(offer.channel_max) < channelMax {
            channelMax = Int32(offer.channel_max)
        } else if offer.channel_max == 0, channelMax == 0 {
            channelMax = Int32(UInt16.max)
        }
        var frameMax = Int32(clamping: configuration.frameMax)
        if offer.frame_max != 0, Int64(offer.frame_max) < Int64(frameMax) {
            frameMax = Int32(offer.frame_max)
        }
        var heartbeat = Int32(clamping: configuration.heartbeat.components.seconds)
        if offer.heartbeat != 0, Int32(offer.heartbeat) < heartbeat {
            heartbeat = Int32(offer.heartbeat)
        }
        return (channelMax, frameMax, heartbeat)
    }

    private var clientProperties: [String: AMQPFieldValue] {
        [
            "product": "gantry",
            "platform": "Swift",
            "information": .string("librabbitmq \(String(cString: amqp_version()))"),
            "connection_name": .string(configuration.connectionName),
            "capabilities": [
                "authentication_failure_close": true,
                "exchange_exchange_bindings": true,
                "consumer_cancel_notify": true,
                "connection.blocked": true,
                "basic.nack": true,
                "publisher_confirms": true,
            ],
        ]
    }

    private func waitForHandshakeMethod(
        _ expected: [amqp_method_number_t],
        step: String,
        deadline: ContinuousClock.Instant
    ) throws(GantryError) -> amqp_method_t {
        let remaining = deadline - .now
        var timeout = timeval(max(remaining, .milliseconds(1)))
        var frame = amqp_frame_t()
        let status = amqp_simple_wait_frame_noblock(state, &frame, &timeout)
        if status == AMQP_STATUS_TIMEOUT.rawValue {
            throw GantryError(.connectionFailed, "RabbitMQ at \(endpoint) did not send \(step) within \(configuration.connectTimeout); is that port an AMQP 0-9-1 listener (amqps on a plain port, or the reverse)?", isRetriable: true)
        }
        guard status == AMQP_STATUS_OK.rawValue else {
            throw handshakeFailure("waiting for \(step)", status: status)
        }
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD), frame.channel == 0,
              expected.contains(frame.payload.method.id) else {
            throw GantryError(.protocolError, "RabbitMQ at \(endpoint) sent an unexpected frame (type \(frame.frame_type), method 0x\(String(frame.payload.method.id, radix: 16))) while we waited for \(step)")
        }
        return frame.payload.method
    }

    private func handshakeFailure(_ step: String, status: Int32) -> GantryError {
        var hint = ""
        if status == AMQP_STATUS_CONNECTION_CLOSED.rawValue || status == AMQP_STATUS_SOCKET_CLOSED.rawValue {
            hint = " (the broker dropped the connection: wrong credentials, a missing vhost, or too many connections)"
        } else if status == AMQP_STATUS_SSL_ERROR.rawValue || status == AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue
            || status == AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue || status == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue {
            hint = " (check the TLS settings in \(AMQPConfiguration.environmentKey): cacertfile, verify, verify_hostname)"
        }
        return GantryError(.connectionFailed, "AMQP handshake with \(endpoint) failed while \(step): \(Self.describe(status))\(hint)", isRetriable: true)
    }

    private func openChannel(_ channel: amqp_channel_t) throws(GantryError) {
        _ = amqp_channel_open(state, channel)
        try checkReply("channel.open of channel \(channel)", channel: channel)
        openChannels.insert(channel)
    }

    // MARK: - Closing

    /// Closes both channels and the connection politely; errors are logged, not thrown,
    /// because the connection is being discarded either way.
    func closeGracefully() {
        guard socketUsable else { return }
        // A broker that stopped answering must not hold the thread: bound every close RPC.
        var timeout = timeval(.seconds(5))
        amqp_set_rpc_timeout(state, &timeout)
        for channel in [Self.dataChannel, Self.controlChannel] where openChannels.contains(channel) {
            openChannels.remove(channel)
            let reply = amqp_channel_close(state, channel, AMQP_REPLY_SUCCESS)
            if reply.reply_type != AMQP_RESPONSE_NORMAL {
                logger.debug("AMQP channel.close failed", metadata: ["amqp.channel": "\(channel)"])
                if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION { socketUsable = false; return }
            }
        }
        let reply = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        if reply.reply_type != AMQP_RESPONSE_NORMAL {
            logger.debug("AMQP connection.close failed", metadata: ["amqp.endpoint": "\(endpoint)"])
        }
        socketUsable = false
    }

    // MARK: - Replies and errors

    /// Runs `body` with the scratch pool and recycles the pool afterwards.
    func withScratch<T, Failure: Error>(_ body: (AMQPPool) throws(Failure) -> T) throws(Failure) -> T {
        defer { scratch.recycle() }
        return try body(scratch)
    }

    /// Checks the reply of the synchronous method librabbitmq ran last.
    func checkReply(_ what: @autoclosure () -> String, channel: amqp_channel_t) throws(GantryError) {
        let reply = amqp_get_rpc_reply(state)
        if reply.reply_type == AMQP_RESPONSE_NORMAL { return }
        throw replyError(reply, what: what(), channel: channel)
    }

    /// Turns a failed reply into the caller's error, answering the broker and recording a
    /// connection failure where the failure outlives the call.
    ///
    /// - A channel.close on channel 1 costs the caller this call only: the channel reopens.
    /// - A channel.close on channel 2 or a connection.close fails the connection for everyone.
    /// - A library error (socket closed, RPC timeout, heartbeat missed) fails the connection.
    func replyError(_ reply: amqp_rpc_reply_t, what: String, channel: amqp_channel_t) -> GantryError {
        switch reply.reply_type {
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD:
            let close = acknowledgeChannelClose(reply.reply, channel: channel)
            let error = GantryError(
                close.code == 404 ? .notFound : .commandFailed,
                "\(what) failed: RabbitMQ replied \(close.code) \(close.text)",
                isRetriable: false
            )
            if channel == Self.controlChannel {
                reopenControlChannel()
            } else {
                fail(dataChannelClosedError(close, channel: channel))
            }
            return error
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD:
            let close = acknowledgeConnectionClose(reply.reply)
            let connectionError = connectionClosedError(close)
            fail(connectionError)
            // 320 CONNECTION_FORCED is the broker going away, not something the call did wrong.
            if close.code == 320 { return connectionError }
            return GantryError(.commandFailed, "\(what) failed: RabbitMQ closed the connection with \(close.code) \(close.text)", isRetriable: false)
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            let error = libraryError(reply.library_error, while: what)
            fail(error)
            return error
        default:
            let error = GantryError(.protocolError, "\(what) failed: librabbitmq returned no reply (type \(reply.reply_type.rawValue), method 0x\(String(reply.reply.id, radix: 16)))")
            fail(error)
            return error
        }
    }

    /// The error for a failed librabbitmq call that took the socket with it.
    func libraryError(_ status: Int32, while what: String) -> GantryError {
        socketUsable = false
        let reason: String
        if status == AMQP_STATUS_HEARTBEAT_TIMEOUT.rawValue {
            reason = "no heartbeat from the broker within two intervals (\(configuration.heartbeat) each)"
        } else if status == AMQP_STATUS_TIMEOUT.rawValue {
            reason = "no reply within the RPC timeout (\(configuration.rpcTimeout.map { "\($0)" } ?? "none"))"
        } else {
            reason = Self.describe(status)
        }
        return GantryError(
            .connectionFailed,
            "lost the RabbitMQ connection to \(endpoint) during \(what): \(reason) (broker restarted or network failed); open a new AMQPClient",
            isRetriable: true
        )
    }

    /// Channel 2 is gone, and with it every consumer, unsettled delivery and unconfirmed publish.
    func dataChannelClosedError(_ close: CloseReason, channel: amqp_channel_t) -> GantryError {
        GantryError(
            .connectionFailed,
            "RabbitMQ closed channel \(channel) of \(endpoint)\(close.method.isEmpty ? "" : " after \(close.method)"): \(close.code) \(close.text); its consumers, unsettled deliveries and unconfirmed publishes are gone, open a new AMQPClient",
            isRetriable: true
        )
    }

    func connectionClosedError(_ close: CloseReason) -> GantryError {
        socketUsable = false
        return GantryError(
            .connectionFailed,
            "RabbitMQ closed the connection to \(endpoint) with \(close.code) \(close.text)\(close.method.isEmpty ? "" : " after \(close.method)"); open a new AMQPClient",
            isRetriable: true
        )
    }

    /// Why the broker closed a channel or the connection.
    struct CloseReason {
        var code: UInt16
        var text: String
        /// The method that caused it, like `queue.declare`, or empty.
        var method: String
    }

    /// Reads a channel.close and answers channel.close-ok, as AMQP requires before reuse.
    func acknowledgeChannelClose(_ method: amqp_method_t, channel: amqp_channel_t) -> CloseReason {
        let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
        let reason = CloseReason(code: close.reply_code, text: swiftString(close.reply_text), method: Self.methodName(classID: close.class_id, methodID: close.method_id))
        openChannels.remove(channel)
        var closeOK = amqp_channel_close_ok_t(dummy: 0)
        let status = amqp_send_method(state, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &closeOK)
        if status != AMQP_STATUS_OK.rawValue {
            fail(libraryError(status, while: "channel.close-ok"))
        }
        return reason
    }

    /// Reads a connection.close and answers connection.close-ok; the socket is done after it.
    func acknowledgeConnectionClose(_ method: amqp_method_t) -> CloseReason {
        let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
        let reason = CloseReason(code: close.reply_code, text: swiftString(close.reply_text), method: Self.methodName(classID: close.class_id, methodID: close.method_id))
        var closeOK = amqp_connection_close_ok_t(dummy: 0)
        _ = amqp_send_method(state, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &closeOK)
        socketUsable = false
        return reason
    }

    /// Channel 1 after the broker closed it over a refused RPC; failing here fails the connection.
    func reopenControlChannel() {
        guard failure == nil else { return }
        _ = amqp_channel_open(state, Self.controlChannel)
        let reply = amqp_get_rpc_reply(state)
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            openChannels.insert(Self.controlChannel)
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD:
            fail(dataChannelClosedError(acknowledgeChannelClose(reply.reply, channel: Self.controlChannel), channel: Self.controlChannel))
        default:
            // A connection.close or a library error: replyError records the failure.
            _ = replyError(reply, what: "channel.open of channel \(Self.controlChannel)", channel: Self.controlChannel)
        }
    }

    static func describe(_ status: Int32) -> String {
        guard let text = amqp_error_string2(status) else { return "librabbitmq status \(status)" }
        return String(cString: text).lowercased()
    }

    /// `queue.declare` for class 50 method 10: names the method a close reply blames.
    static func methodName(classID: UInt16, methodID: UInt16) -> String {
        let classes: [UInt16: (String, [UInt16: String])] = [
            10: ("connection", [10: "start", 11: "start-ok", 30: "tune", 31: "tune-ok", 40: "open", 50: "close", 51: "close-ok"]),
            20: ("channel", [10: "open", 20: "flow", 21: "flow-ok", 40: "close", 41: "close-ok"]),
            40: ("exchange", [10: "declare", 20: "delete", 30: "bind", 40: "unbind"]),
            50: ("queue", [10: "declare", 20: "bind", 30: "purge", 40: "delete", 50: "unbind"]),
            60: ("basic", [10: "qos", 20: "consume", 30: "cancel", 40: "publish", 70: "get", 80: "ack", 90: "reject", 100: "recover-async", 110: "recover", 120: "nack"]),
            85: ("confirm", [10: "select"]),
            90: ("tx", [10: "select", 20: "commit", 30: "rollback"]),
        ]
        guard classID != 0 else { return "" }
        guard let (className, methods) = classes[classID] else { return "method \(classID).\(methodID)" }
        return "\(className).\(methods[methodID] ?? "\(methodID)")"
    }
}

extension timeval {
    /// A `timeval` for a non-negative duration.
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: .init(max(seconds, 0)), tv_usec: .init(max(attoseconds, 0) / 1_000_000_000_000))
    }
}
