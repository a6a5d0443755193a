import Foundation
import GantryCore
import GantryRedis
import Logging

/// A `redis-server` of its own, on a free loopback port with its files under a directory of
/// its own: for `gantry dev` when no Redis answers, and for benchmarks and tests that crash,
/// stop or restart Redis (the shared server of the local stack must never be disturbed).
///
/// Port and directory stay the same across restarts, so with ``Options/appendOnly`` a
/// restarted server loads what the previous one acknowledged.
///
/// ```swift
/// let redis = try PrivateRedis(directory: "/tmp/redis-test")
/// try await redis.start()      // answers PING
/// await redis.kill()           // kill -9
/// try await redis.start()      // same port, loads its AOF
/// await redis.shutDown()       // stops it and removes the directory
/// ```
public final class PrivateRedis: Sendable {
    /// How the server runs.
    public struct Options: Sendable {
        /// AOF on with `appendfsync everysec`, as `ops/stack` runs the shared server: what it
        /// acknowledged survives a restart, and all but the last second a `kill -9`. Off: data
        /// lives in memory only. Default true.
        public var appendOnly: Bool
        /// More `redis-server` arguments, e.g. `["--requirepass", secret]` (the readiness
        /// probe authenticates with that password). Default none.
        public var arguments: [String]
        /// The `redis-server` to run. Default: the one on `PATH`.
        public var executable: String?
        /// Longest wait for the server to answer PING after a start. Default 30 s.
        public var startTimeout: Duration
        /// How long a stop waits after SIGTERM (Redis flushes its AOF) before SIGKILL. Default 30 s.
        public var stopGrace: Duration

        /// Options with the documented defaults, changed where given.
        public init(
            appendOnly: Bool = true, arguments: [String] = [], executable: String? = nil,
            startTimeout: Duration = .seconds(30), stopGrace: Duration = .seconds(30)
        ) {
            self.appendOnly = appendOnly
            self.arguments = arguments
            self.executable = executable
            self.startTimeout = startTimeout
            self.stopGrace = stopGrace
        }
    }

    /// The port it listens on (127.0.0.1), the same across restarts.
    public let port: Int
    /// Its data directory (AOF), the same across restarts; its output goes to `redis.log` there.
    public let directory: String
    /// How the server runs.
    public let options: Options
    private let executable: String
    private let server: PrivateServerProcess

    /// `redis://127.0.0.1:<port>`.
    public var url: String { "redis://127.0.0.1:\(port)" }

    /// The server's current process; nil before ``start()`` and after a stop.
    public var process: ChildProcess? { server.process }

    /// Picks a free port and creates `directory`; nothing runs until ``start()``.
    /// - Throws: `.configuration` when `redis-server` is not installed or no port is free.
    public init(directory: String, options: Options = Options(), launcher: PrivateServer.Launcher = .standalone) throws {
        executable = try options.executable ?? PrivateServer.executable(
            named: "redis-server", fix: "install it (ops/bootstrap does, or apt-get install redis-server)"
        )
        port = try TCPProbe.freeLoopbackPort()
        self.directory = directory
        self.options = options
        server = PrivateServerProcess(name: "redis", launcher: launcher)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    /// Starts the server (loading its AOF, if any) and waits until it answers PING.
    /// - Throws: `.connectionFailed` if it exits first, `.timeout` after ``Options/startTimeout``;
    ///   both show the end of its log.
    public func start() async throws {
        var arguments = [
            "--port", String(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "",
            "--protected-mode", "yes", "--daemonize", "no",
        ]
        arguments += options.appendOnly ? ["--appendonly", "yes", "--appendfsync", "everysec"] : ["--appendonly", "no"]
        arguments += options.arguments
        let what = "redis-server on 127.0.0.1:\(port)"
        _ = try server.launch(
            what, executable: executable, arguments: arguments, environment: ProcessInfo.processInfo.environment,
            logPath: directory + "/redis.log"
        )

        // One connection with a short backoff: the server may still be binding its port or
        // loading its AOF (it answers LOADING until done).
        var configuration = try RedisConfiguration(url: url)
        configuration.poolSize = 1
        configuration.connectTimeout = .seconds(1)
        configuration.reconnectBackoffInitial = .milliseconds(5)
        configuration.reconnectBackoffMax = .milliseconds(50)
        configuration.password = Self.argument(after: "--requirepass", in: options.arguments)
        var logger = Logger(label: "gantry.private-redis")
        logger.logLevel = .critical
        let probe = try RedisClient(configuration: configuration, logger: logger)
        defer { probe.close() }
        try await server.waitUntilReady(what, timeout: options.startTimeout, interval: .milliseconds(20)) {
            (try? await probe.send("PING")) == .status("PONG")
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown that flushes the AOF) and waits for it.
    /// - Throws: `.timeout` when it had to be killed after ``Options/stopGrace``.
    public func stop() async throws {
        guard await server.stop(grace: options.stopGrace) else {
            throw GantryError(.timeout, "redis-server on 127.0.0.1:\(port) did not stop within \(options.stopGrace.shortDescription) of SIGTERM; killed it")
        }
    }

    /// `kill -9` of the server: what a crash does. Writes it acknowledged more than a second
    /// ago are in its AOF.
    public func kill() async {
        await server.kill()
    }

    /// Stops the server and starts it again on the same port with the same data.
    public func restart() async throws {
        try await stop()
        try await start()
    }

    /// Stops the server if it runs and removes its directory unless `keepFiles`.
    public func shutDown(keepFiles: Bool = false) async {
        try? await stop()
        if !keepFiles { try? FileManager.default.removeItem(atPath: directory) }
    }

    private static func argument(after flag: String, in arguments: [String]) -> String? {
        guard let index = arguments.firstIndex(of: flag), index + 1 < arguments.count else { return nil }
        return arguments[index + 1]
    }
}
