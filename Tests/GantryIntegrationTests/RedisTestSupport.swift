import Foundation
import GantryCore
import GantryRedis
import GantryRuntime
import GantryStore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Where the Redis tests find the shared server, and UUID-named keys so tests never collide.
enum RedisTestEnvironment {
    /// `GANTRY_REDIS_URL`, or the local stack's Redis.
    static var url: String {
        ProcessInfo.processInfo.environment["GANTRY_REDIS_URL"] ?? "redis://127.0.0.1:6390"
    }

    /// The shared server's configuration with test-friendly timeouts.
    static func configuration(poolSize: Int = 4) throws -> RedisConfiguration {
        var configuration = try RedisConfiguration(url: url)
        configuration.poolSize = poolSize
        return configuration
    }

    /// A client of the shared server.
    static func client(poolSize: Int = 4) throws -> RedisClient {
        try RedisClient(configuration: configuration(poolSize: poolSize))
    }

    /// A key no other test uses.
    static func key(_ purpose: String) -> String {
        "gantry-test:redis:\(purpose):\(UUID().uuidString)"
    }
}

/// Polls `condition` until it holds, failing once `timeout` has passed.
func redisWaitUntil(
    _ what: String,
    timeout: Duration = .seconds(15),
    isolation: isolated (any Actor)? = #isolation,
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else {
            throw GantryError(.timeout, "timed out after \(timeout) waiting for \(what)")
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}

/// Starts `process` from a fresh thread whose signal mask is empty.
///
/// Threads of the cooperative pool (and Dispatch) block nearly every signal, and a child
/// spawned by Foundation inherits the spawning thread's mask: a server or worker would
/// then never see our SIGTERM.
func launchWithSignalsUnblocked(_ process: Process) async throws {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
        let thread = Thread {
            var none = sigset_t()
            sigemptyset(&none)
            pthread_sigmask(SIG_SETMASK, &none, nil)
            do {
                try process.run()
                continuation.resume()
            } catch {
                continuation.resume(throwing: error)
            }
        }
        thread.start()
    }
}

/// Waits until `run` has ended and returns its final state.
func waitForRunEnd(_ run: RunID, in store: RedisStateStore, timeout: Duration = .seconds(30)) async throws -> RunState {
    var state: RunState?
    try await redisWaitUntil("run \(run) to finish", timeout: timeout) {
        state = try await store.runState(run)
        return state?.isFinal == true
    }
    return state!
}

/// A private `redis-server` for tests that stop, restart or reconfigure Redis: the shared
/// server on 6390 is used by other tests at the same time and must never be disturbed.
actor RedisTestServer {
    /// The port it listens on, the same across restarts.
    let port: Int
    /// Its data directory (AOF), the same across restarts.
    let directory: URL
    private let extraArguments: [String]
    private var process: Process?

    init(extraArguments: [String] = []) throws {
        port = try TCPProbe.freeLoopbackPort()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-redis-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        self.extraArguments = extraArguments
    }

    /// `redis://127.0.0.1:<port>`.
    nonisolated var url: String { "redis://127.0.0.1:\(port)" }

    /// Starts the server and waits until it answers PING (after loading its AOF).
    func start() async throws {
        precondition(process == nil, "already running")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.redisServerPath())
        process.arguments = [
            "--port", "\(port)", "--bind", "127.0.0.1",
            "--appendonly", "yes", "--appendfsync", "everysec",
            "--dir", directory.path, "--save", "",
            "--logfile", directory.appendingPathComponent("redis.log").path,
        ] + extraArguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try await launchWithSignalsUnblocked(process)
        self.process = process

        // A probe with a short backoff: the server may still be binding or loading its AOF.
        var probeConfiguration = try RedisConfiguration(url: url)
        probeConfiguration.poolSize = 1
        probeConfiguration.reconnectBackoffInitial = .milliseconds(5)
        probeConfiguration.reconnectBackoffMax = .milliseconds(20)
        let password = Self.argument(after: "--requirepass", in: extraArguments)
        probeConfiguration.password = password
        let probe = try RedisClient(configuration: probeConfiguration)
        defer { probe.close() }
        try await redisWaitUntil("redis-server on port \(port) to answer PING") {
            guard process.isRunning else {
                throw GantryError(.connectionFailed, "redis-server on port \(port) exited with \(process.terminationStatus); see \(directory.path)/redis.log")
            }
            return (try? await probe.send("PING")) == .status("PONG")
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown that flushes the AOF) and waits for it to exit.
    func stop() async throws {
        guard let process else { return }
        self.process = nil
        process.terminate()
        do {
            try await redisWaitUntil("redis-server on port \(port) to exit") { !process.isRunning }
        } catch {
            kill(process.processIdentifier, SIGKILL)
            throw error
        }
    }

    /// Stops the server if it runs and deletes its directory.
    func destroy() async {
        try? await stop()
        try? FileManager.default.removeItem(at: directory)
    }

    private static func redisServerPath() -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/redis-server"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return "/usr/bin/redis-server"
    }

    private static func argument(after flag: String, in arguments: [String]) -> String? {
        guard let index = arguments.firstIndex(of: flag), index + 1 < arguments.count else { return nil }
        return arguments[index + 1]
    }
}

/// Runs `body` with a fresh private Redis server, then stops it and deletes its data.
func withRedisTestServer<T>(
    extraArguments: [String] = [],
    isolation: isolated (any Actor)? = #isolation,
    _ body: (RedisTestServer) async throws -> T
) async throws -> T {
    let server = try RedisTestServer(extraArguments: extraArguments)
    do {
        try await server.start()
        let result = try await body(server)
        await server.destroy()
        return result
    } catch {
        await server.destroy()
        throw error
    }
}
