import Foundation
import GantryCore
import GantryRedis
import GantryRuntime
import GantryStore

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

/// Runs `body` with a fresh private Redis server (AOF on, so a stop and start keeps the data;
/// `extraArguments` go to `redis-server`), then stops it and deletes its data. Tests that stop,
/// restart or reconfigure Redis use one: the shared server on 6390 is used by other tests at
/// the same time and must never be disturbed.
func withRedisTestServer<T>(
    extraArguments: [String] = [],
    isolation: isolated (any Actor)? = #isolation,
    _ body: (PrivateRedis) async throws -> T
) async throws -> T {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-redis-test-\(UUID().uuidString)").path
    let server = try PrivateRedis(directory: directory, options: PrivateRedis.Options(arguments: extraArguments, stopGrace: .seconds(15)))
    do {
        try await server.start()
        let result = try await body(server)
        await server.shutDown()
        return result
    } catch {
        await server.shutDown()
        throw error
    }
}
