// Internal: no hiredis type may appear in this module's API.
internal import CHiredis
import GantryCore
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One connection of the pool: a hiredis `redisContext` and the thread that owns it.
///
/// `@unchecked Sendable` is honest here: the mutable hiredis state below is touched only by
/// jobs on ``worker``'s thread, which runs them one at a time. Everything else is immutable.
final class RedisConnection: @unchecked Sendable {
    let id: Int
    private let configuration: RedisConfiguration
    private let logger: Logger
    private let worker: RedisWorkerThread

    // MARK: Confined to the worker thread

    /// The live context, or `nil` when not connected (never yet, or broken and freed).
    private var context: UnsafeMutablePointer<redisContext>?
    /// Failed connect attempts in a row; drives the backoff.
    private var failedConnects = 0
    /// No reconnect attempt before this instant (set after a failed attempt).
    private var nextConnectAttempt: ContinuousClock.Instant?
    /// Why the last connect attempt failed, repeated while waiting out the backoff.
    private var lastConnectError: GantryError?
    /// Whether this connection ever worked: a later connect is a *re*connect, worth a log line.
    private var hasConnected = false

    init(id: Int, configuration: RedisConfiguration, logger: Logger) {
        self.id = id
        self.configuration = configuration
        self.logger = logger
        self.worker = RedisWorkerThread(name: "gantry-redis-\(id)")
    }

    deinit {
        // The last reference goes away only after the worker ran its last job, so nothing
        // else can be using the context. redisFree closes the socket and frees all buffers.
        if let context { redisFree(context) }
    }

    /// Queues `job` on this connection's thread; `false` if the connection was shut down.
    func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        worker.submit(job)
    }

    /// Closes the socket and ends the thread once queued work is done.
    func shutdown() {
        _ = worker.submit { [self] in disconnect() }
        worker.stop()
    }

    // MARK: Commands (worker thread only)

    /// Sends the commands of every request in one write, reads the replies, and resumes each
    /// request's continuation with exactly its own replies (or the error that stopped it).
    ///
    /// `EVALSHA`s answered with `NOSCRIPT` are retried after loading their scripts, once all
    /// replies of the group are read (until then the reply stream belongs to the group).
    /// Once sent, a request is not interrupted by task cancellation: hiredis cannot abandon
    /// a command half-way; ``RedisConfiguration/commandTimeout`` bounds the wait.
    func serve(_ requests: [RedisConnectionPool.Request]) {
        let context: UnsafeMutablePointer<redisContext>
        do {
            context = try readyContext()
            for request in requests {
                try append(request.batch.encoded, to: context)
            }
        } catch {
            for request in requests { request.continuation.resume(throwing: Self.labeled(error, request.batch)) }
            return
        }

        var needsRetry: [(request: RedisConnectionPool.Request, replies: [RedisValue])] = []
        for (position, request) in requests.enumerated() {
            let batch = request.batch
            var replies: [RedisValue] = []
            replies.reserveCapacity(batch.count)
            var sawError = false
            do {
                for _ in 0..<batch.count {
                    let reply = try readReply(from: context)
                    if case .error = reply { sawError = true }
                    replies.append(reply)
                }
            } catch {
                // The stream is broken: this request and every later one fail, and so do the
                // earlier ones still waiting for a script retry.
                for pending in needsRetry { pending.request.continuation.resume(throwing: Self.labeled(error, pending.request.batch)) }
                for failed in requests[position...] { failed.continuation.resume(throwing: Self.labeled(error, failed.batch)) }
                return
            }
            // Only an error reply can be a NOSCRIPT: skip the scan in the common case.
            if sawError && batch.scriptCalls.contains(where: { replies[$0.command].isNoScript }) {
                needsRetry.append((request, replies))
            } else {
                request.continuation.resume(returning: replies)
            }
        }

        for (index, pending) in needsRetry.enumerated() {
            var replies = pending.replies
            do {
                try reloadScriptsAndRetry(pending.request.batch, replies: &replies, context: context)
                pending.request.continuation.resume(returning: replies)
            } catch {
                for failed in needsRetry[index...] { failed.request.continuation.resume(throwing: Self.labeled(error, failed.request.batch)) }
                return
            }
        }
    }

    /// Prefixes the failed batch's name: `GET failed: …`, `EVALSHA claim_task failed: …`.
    private static func labeled(_ error: any Error, _ batch: RedisPipeline) -> any Error {
        guard var error = error as? GantryError else { return error }
        error.message = "\(batch.label) failed: \(error.message)"
        return error
    }

    /// After a `NOSCRIPT`, loads the missing scripts and re-sends the failed calls, all in
    /// one more round trip.
    private func reloadScriptsAndRetry(
        _ batch: RedisPipeline,
        replies: inout [RedisValue],
        context: UnsafeMutablePointer<redisContext>
    ) throws {
        let missing = batch.scriptCalls.filter { replies[$0.command].isNoScript }
        guard !missing.isEmpty else { return }
        var scriptsToLoad: [Int] = []
        for call in missing where !scriptsToLoad.contains(call.script) {
            scriptsToLoad.append(call.script)
        }
        logger.debug(
            "Redis lost cached scripts; loading them again",
            metadata: ["scripts": "\(scriptsToLoad.map { batch.scripts[$0].name })", "retries": "\(missing.count)"]
        )

        var request = RESPBuffer()
        for index in scriptsToLoad {
            request.appendCommandHeader(argumentCount: 3)
            request.appendString("SCRIPT")
            request.appendString("LOAD")
            request.appendString(batch.scripts[index].source)
        }
        for call in missing {
            request.append(batch.encoded, range: batch.commandRange(call.command))
        }
        try append(request, to: context)

        var loadErrors: [Int: String] = [:]
        for index in scriptsToLoad {
            let reply = try readReply(from: context)
            if let message = reply.errorMessage {
                loadErrors[index] = "SCRIPT LOAD of \(batch.scripts[index].name) failed: \(message)"
            } else if reply.string != batch.scripts[index].sha1 {
                loadErrors[index] = "SCRIPT LOAD of \(batch.scripts[index].name) returned SHA1 \(reply) instead of \(batch.scripts[index].sha1)"
            }
        }
        for call in missing {
            let reply = try readReply(from: context)
            // A script that does not compile answers NOSCRIPT again: say why instead.
            if reply.isNoScript, let loadError = loadErrors[call.script] {
                replies[call.command] = .error(loadError)
            } else {
                replies[call.command] = reply
            }
        }
    }

    // MARK: Connection management (worker thread only)

    /// The connected context, (re)connecting first if needed.
    private func readyContext() throws -> UnsafeMutablePointer<redisContext> {
        if let context {
            guard peerHasClosed(context) else { return context }
            // Redis restarted or dropped an idle client: reconnect before sending rather
            // than fail a command that never reached the server.
            logger.info("Redis closed an idle connection; reconnecting", metadata: metadata)
            disconnect()
        }
        let now = ContinuousClock.now
        if let nextConnectAttempt, now < nextConnectAttempt, var error = lastConnectError {
            error.message += "; next reconnect attempt in \(Self.milliseconds(nextConnectAttempt - now)) ms"
            throw error
        }
        do {
            let context = try connect()
            self.context = context
            if hasConnected {
                logger.info("reconnected to Redis", metadata: metadata)
            }
            hasConnected = true
            failedConnects = 0
            nextConnectAttempt = nil
            lastConnectError = nil
            return context
        } catch let error as GantryError {
            failedConnects += 1
            let delay = backoff(afterFailures: failedConnects)
            nextConnectAttempt = now + delay
            lastConnectError = error
            logger.warning(
                "cannot connect to Redis",
                metadata: metadata.merging(["error": "\(error)", "retryIn": "\(delay)"]) { $1 }
            )
            throw error
        }
    }

    /// Opens a socket, sets the timeouts, and authenticates and selects the database in one
    /// round trip.
    private func connect() throws -> UnsafeMutablePointer<redisContext> {
        let address = configuration.address
        // redisConnectWithTimeout returns NULL only when it cannot allocate; otherwise the
        // context is ours to redisFree, also when `err` is set.
        guard let context = redisConnectWithTimeout(configuration.host, Int32(configuration.port), timeval(configuration.connectTimeout)) else {
            throw GantryError(.connectionFailed, "cannot allocate a hiredis context for Redis at \(address)")
        }
        guard context.pointee.err == 0 else {
            let reason = Self.errorString(context)
            redisFree(context)
            throw unreachable(reason: reason)
        }
        do {
            // SO_RCVTIMEO/SO_SNDTIMEO: a blocking read or write gives up after commandTimeout.
            guard redisSetTimeout(context, timeval(configuration.commandTimeout)) == REDIS_OK else {
                throw unreachable(reason: "cannot set the socket timeout: \(Self.errorString(context))")
            }
            // Keepalive finds a peer that vanished without closing (host gone, network cut).
            _ = redisEnableKeepAlive(context)
            try handshake(context)
        } catch {
            redisFree(context)
            throw error
        }
        return context
    }

    /// `AUTH` and `SELECT`, pipelined; a refusal is a configuration problem, not worth retrying.
    private func handshake(_ context: UnsafeMutablePointer<redisContext>) throws {
        var request = RESPBuffer()
        var steps: [String] = []
        if let password = configuration.password {
            if let username = configuration.username {
                request.appendCommandHeader(argumentCount: 3)
                request.appendString("AUTH")
                request.appendString(username)
                steps.append("AUTH as user '\(username)'")
            } else {
                request.appendCommandHeader(argumentCount: 2)
                request.appendString("AUTH")
                steps.append("AUTH")
            }
            request.appendString(password)
        }
        if configuration.database != 0 {
            request.appendCommandHeader(argumentCount: 2)
            request.appendString("SELECT")
            request.appendInteger(configuration.database)
            steps.append("SELECT \(configuration.database)")
        }
        guard !steps.isEmpty else { return }
        try append(request, to: context)
        var failure: String?
        for step in steps {
            let reply = try readReply(from: context)
            if failure == nil, let message = reply.errorMessage {
                failure = "\(step) failed: \(message)" + (message.hasSuffix(".") ? "" : ".")
            }
        }
        if let failure {
            throw GantryError(
                .configuration,
                "Redis at \(configuration.address) refused the connection setup: \(failure) "
                    + "Check the user, password and database in GANTRY_REDIS_URL (now \(configuration.redactedURL)).",
                isRetriable: false
            )
        }
    }

    private func disconnect() {
        if let context {
            redisFree(context)
            self.context = nil
        }
    }

    /// Whether the server closed (or reset) an idle connection, seen without blocking.
    private func peerHasClosed(_ context: UnsafeMutablePointer<redisContext>) -> Bool {
        // An idle RESP2 connection never has anything to read: readiness means EOF or an
        // error. One poll(2) with timeout 0 per batch is cheap next to the round trip.
        var descriptor = pollfd(fd: context.pointee.fd, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) > 0
    }

    /// Exponential backoff with jitter, so a fleet of workers does not reconnect in lockstep.
    private func backoff(afterFailures failures: Int) -> Duration {
        let exponent = min(failures - 1, 30)
        var delay = configuration.reconnectBackoffInitial * (1 << exponent)
        if delay > configuration.reconnectBackoffMax { delay = configuration.reconnectBackoffMax }
        return delay * Double.random(in: 0.5...1.0)
    }

    // MARK: Wire (worker thread only)

    private func append(_ bytes: RESPBuffer, to context: UnsafeMutablePointer<redisContext>) throws {
        // hiredis copies the bytes into its output buffer; the first redisGetReply writes them.
        let status = bytes.withUnsafeBytes { buffer in
            redisAppendFormattedCommand(context, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), buffer.count)
        }
        guard status == REDIS_OK else { throw brokenConnection(context, errno: 0) }
    }

    private func readReply(from context: UnsafeMutablePointer<redisContext>) throws -> RedisValue {
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(context, &raw) == REDIS_OK, let raw else {
            // errno still holds the cause of the failed read or write (EAGAIN = timeout).
            let savedErrno = errno
            throw brokenConnection(context, errno: savedErrno)
        }
        // Every reply object handed out by redisGetReply is ours to free, with its children.
        defer { freeReplyObject(raw) }
        return RedisValue(raw.assumingMemoryBound(to: redisReply.self))
    }

    /// Turns a failed hiredis call into an error and drops the context: after a failed read
    /// or write the reply stream is out of step, so the next use must reconnect.
    private func brokenConnection(_ context: UnsafeMutablePointer<redisContext>, errno savedErrno: Int32) -> GantryError {
        let code = context.pointee.err
        let reason = Self.errorString(context)
        disconnect()
        let address = configuration.address
        let error: GantryError
        if code == REDIS_ERR_IO && (savedErrno == EAGAIN || savedErrno == EWOULDBLOCK) {
            error = GantryError(
                .timeout,
                "no reply from Redis at \(address) within the command timeout of \(configuration.commandTimeout); "
                    + "it may or may not have run. The server may be overloaded or the command slow "
                    + "(raise commandTimeout / GANTRY_REDIS_COMMAND_TIMEOUT_MS for blocking commands)."
            )
        } else if code == REDIS_ERR_PROTOCOL {
            error = GantryError(.protocolError, "Redis at \(address) sent an invalid reply (\(reason)); is that port really Redis?")
        } else if code == REDIS_ERR_OOM {
            error = GantryError(.commandFailed, "out of memory in hiredis (\(reason))")
        } else {
            error = GantryError(
                .connectionFailed,
                "the connection to Redis at \(address) broke (\(reason)); the command may or may not have run. "
                    + "If Redis is down, start it with ops/stack up or set GANTRY_REDIS_URL (now \(configuration.redactedURL)).",
                isRetriable: true
            )
        }
        logger.warning("Redis connection broken", metadata: metadata.merging(["error": "\(error)"]) { $1 })
        return error
    }

    private func unreachable(reason: String) -> GantryError {
        GantryError(
            .connectionFailed,
            "Redis at \(configuration.address) is unreachable (\(reason)); "
                + "start it with ops/stack up or set GANTRY_REDIS_URL (now \(configuration.redactedURL))",
            isRetriable: true
        )
    }

    private var metadata: Logger.Metadata {
        ["redis": "\(configuration.address)", "connection": "\(id)"]
    }

    private static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    private static func errorString(_ context: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: &context.pointee.errstr) { bytes in
            String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}

extension timeval {
    /// A `timeval` for hiredis timeouts, rounded up to whole microseconds.
    fileprivate init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        let microseconds = (attoseconds + 999_999_999_999) / 1_000_000_000_000
        self.init(tv_sec: Int(seconds) + Int(microseconds / 1_000_000), tv_usec: Int(microseconds % 1_000_000))
    }
}
