import GantryCore
import Logging

/// An async Redis client over hiredis: a pool of connections, each owned by its own thread.
///
/// hiredis blocks on its socket, so every command runs on the dedicated thread of the
/// connection that serves it, never on Swift's cooperative pool; the caller suspends until
/// the reply is in. Connections are made on first use and remade after Redis restarts.
///
/// ```swift
/// let client = try RedisClient(configuration: .fromEnvironment())
/// _ = try await client.send("SET", key, payload)
/// let value = try await client.send("GET", key).bytes
/// let replies = try await client.pipeline([["INCR", "a"], ["INCR", "b"]])
/// let claimed = try await client.evalsha(claimTask, keys: [.string(key)], args: [.integer(epoch)])
/// ```
///
/// Requests wait in line, first come first served, while every connection is busy; a
/// waiting request can be cancelled. Requests waiting together are sent together, in one
/// round trip, each still getting exactly its own replies (never together with a blocking
/// command such as `BLPOP` or `XREAD … BLOCK`). Once sent, a request runs to completion or
/// to ``RedisConfiguration/commandTimeout``; cancellation cannot recall it.
///
/// Every request may go to a different connection, so commands that change the state of a
/// connection (`SELECT`, `MULTI` split over several calls, `CLIENT SETNAME`) do not belong
/// in ``send(_:)``: use ``RedisConfiguration/database``, or put `MULTI … EXEC` in one
/// pipeline. Pub/sub (`SUBSCRIBE`) and `MONITOR` are not supported.
///
/// Errors are ``GantryCore/GantryError``s:
/// - `.commandFailed`: Redis answered a single command with an error reply, e.g.
///   `EVALSHA claim_task failed: ERR …` (inside a pipeline that reply is a
///   ``RedisValue/error(_:)`` instead);
/// - `.connectionFailed` (retriable): Redis cannot be reached or the connection broke; the
///   message names the address and how to fix it. The next use reconnects, with backoff;
///   ``retrying(until:isolation:_:)`` retries an operation until a deadline;
/// - `.timeout` (retriable): no reply within ``RedisConfiguration/commandTimeout``;
/// - `.configuration`: Redis refused `AUTH` or `SELECT`;
/// - `.cancelled`: the task was cancelled while waiting for a free connection;
/// - `.closed`: the client was closed.
public final class RedisClient: Sendable {
    /// The configuration the client was made with.
    public let configuration: RedisConfiguration
    private let pool: RedisConnectionPool

    /// Creates a client. No connection is opened until the first command.
    /// - Throws: ``GantryCore/GantryError`` `.configuration` if the configuration cannot work.
    public init(configuration: RedisConfiguration, logger: Logger = Logger(label: "gantry.redis")) throws {
        try configuration.validate()
        self.configuration = configuration
        self.pool = RedisConnectionPool(configuration: configuration, logger: logger)
    }

    /// Creates a client for a `redis://[user:password@]host[:port][/db]` URL with default settings.
    public convenience init(url: String, logger: Logger = Logger(label: "gantry.redis")) throws {
        try self.init(configuration: RedisConfiguration(url: url), logger: logger)
    }

    deinit {
        pool.close()
    }

    /// Sends one command, e.g. `["SET", .string(key), .bytes(value)]`, and returns its reply.
    /// - Throws: `.commandFailed` if Redis answers with an error; see ``RedisClient`` for the rest.
    public func send(_ command: [RedisArgument]) async throws -> RedisValue {
        guard !command.isEmpty else { throw GantryError(.invalidArgument, "a Redis command needs at least its name") }
        var batch = RedisPipeline()
        batch.append(command)
        return try await single(batch)
    }

    /// Sends one command given as separate arguments, e.g. `send("SET", key, bytes)`, and
    /// returns its reply.
    /// - Throws: `.commandFailed` if Redis answers with an error; see ``RedisClient`` for the rest.
    public func send<each Argument: RedisArgumentConvertible>(_ arguments: repeat each Argument) async throws -> RedisValue {
        var argumentCount = 0
        for _ in repeat each arguments { argumentCount += 1 }
        guard argumentCount > 0 else { throw GantryError(.invalidArgument, "a Redis command needs at least its name") }
        var batch = RedisPipeline()
        batch.append(repeat each arguments)
        return try await single(batch)
    }

    /// Sends all commands in one round trip and returns one reply per command, in order.
    ///
    /// An error reply of one command is its ``RedisValue/error(_:)`` entry; the call throws
    /// only if the batch as a whole failed (connection, timeout), in which case any of the
    /// commands may or may not have run.
    public func pipeline(_ commands: [[RedisArgument]]) async throws -> [RedisValue] {
        var batch = RedisPipeline(reservingCapacity: commands.count)
        for command in commands {
            guard !command.isEmpty else {
                throw GantryError(.invalidArgument, "command \(batch.count) of the pipeline is empty; a Redis command needs at least its name")
            }
            batch.append(command)
        }
        return try await pipeline(batch)
    }

    /// Sends a prepared batch in one round trip and returns one reply per command, in order.
    ///
    /// See ``RedisPipeline`` for how `EVALSHA`s missing from the server's script cache are
    /// retried, and ``pipeline(_:)-([[RedisArgument]])`` for how errors are reported.
    public func pipeline(_ batch: RedisPipeline) async throws -> [RedisValue] {
        guard !batch.isEmpty else { return [] }
        return try await pool.execute(batch)
    }

    /// Runs a Lua script by its SHA-1 and returns its reply, loading the script first if the
    /// server does not have it cached.
    /// - Throws: `.commandFailed` naming the script, e.g. `EVALSHA claim_task failed: ERR …`.
    public func evalsha(_ script: RedisScript, keys: [RedisArgument] = [], args: [RedisArgument] = []) async throws -> RedisValue {
        var batch = RedisPipeline()
        batch.evalsha(script, keys: keys, args: args)
        return try await single(batch)
    }

    /// Loads a script into the server's cache (`SCRIPT LOAD`) and returns the SHA-1 the
    /// server computed. Never needed for correctness: ``evalsha(_:keys:args:)`` loads on
    /// demand; loading at startup just reports a script that does not compile early.
    @discardableResult
    public func load(_ script: RedisScript) async throws -> String {
        let reply = try await send("SCRIPT", "LOAD", script.source)
        guard let sha1 = reply.string else {
            throw GantryError(.protocolError, "SCRIPT LOAD of \(script.name) returned \(reply) instead of a SHA1")
        }
        return sha1
    }

    /// Closes the client: waiting callers get `.closed`, idle connections close now, busy
    /// ones when their command finishes. Later calls throw `.closed`.
    public func close() {
        pool.close()
    }

    /// The number of requests waiting for a free connection (for tests and metrics).
    public var waitingForConnection: Int { pool.waiterCount }

    // MARK: Internals

    private func single(_ batch: RedisPipeline) async throws -> RedisValue {
        let reply = try await pool.execute(batch)[0]
        if let message = reply.errorMessage {
            throw GantryError(.commandFailed, "\(batch.label) failed: \(message)")
        }
        return reply
    }
}
