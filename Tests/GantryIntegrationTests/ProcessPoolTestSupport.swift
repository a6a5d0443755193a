import Foundation
import GantryCore
import GantryWorker
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Pools over the test child (Sources/GantryPoolTestChild), and waits with deadlines.
enum ProcessPoolTestSupport {
    /// The test child: SwiftPM puts every product of the build, this test bundle included, in
    /// one directory.
    static let childExecutable: String = {
        let bundle = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return bundle.deletingLastPathComponent().appendingPathComponent("GantryPoolTestChild").path
    }()

    /// A pool configuration for the test child: short grace and backoff so tests stay quick.
    static func configuration(size: Int = 1, _ configure: (inout PoolConfiguration) -> Void = { _ in }) -> PoolConfiguration {
        var configuration = PoolConfiguration(
            size: size,
            executablePath: childExecutable,
            initialRespawnBackoff: .milliseconds(20),
            maxRespawnBackoff: .milliseconds(200),
            terminationGrace: .milliseconds(500),
            startupTimeout: .seconds(20)
        )
        configure(&configuration)
        return configuration
    }

    /// Runs a pool over `configuration` while `body` runs, then shuts it down; the pool's own
    /// `run()` must return too.
    static func withPool<T: Sendable>(
        _ configuration: PoolConfiguration,
        _ body: @Sendable (ChildProcessPool) async throws -> T
    ) async throws -> T {
        var logger = Logger(label: "pool-test")
        logger.logLevel = .warning
        let pool = try ChildProcessPool(configuration: configuration, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await pool.run() }
            do {
                let result = try await body(pool)
                try await bounded("shutdown") { await pool.shutdown() }
                try await group.waitForAll()
                return result
            } catch {
                await pool.shutdown()
                throw error
            }
        }
    }

    static func context(args: JSONValue = .null, upstream: [StageName: [UInt8]] = [:], attempt: UInt32 = 1) -> TaskContext {
        TaskContext(runID: RunID.make(), node: NodeID(stage: "cpu"), attempt: attempt, args: args, upstream: upstream)
    }

    /// Runs `operation`, failing if it has not returned within `limit`: a hang detector, not a
    /// speed check (the limit is far above the expected time).
    static func bounded<T: Sendable>(_ what: String, limit: Duration = .seconds(60), _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await operation() }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            guard let first = try await group.next(), let value = first else {
                group.cancelAll()
                throw GantryError(.timeout, "\(what) did not return within \(limit)")
            }
            group.cancelAll()
            return value
        }
    }

    /// Waits until `condition` holds, checking every 10 ms, for at most `limit`.
    static func waitUntil(_ what: String, limit: Duration = .seconds(30), _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + limit
        while !condition() {
            guard ContinuousClock.now < deadline else { throw GantryError(.timeout, "gave up waiting for \(what) after \(limit)") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Waits until some child is running `task`, and returns its pid.
    static func busyChild(_ pool: ChildProcessPool, running task: String) async throws -> Int32 {
        var pid: Int32?
        try await waitUntil("a child running \(task)") {
            pid = pool.children.first { $0.task == task }?.pid
            return pid != nil
        }
        return pid!
    }

    /// Whether a process with this pid exists (a reaped child does not).
    static func processExists(_ pid: Int32) -> Bool {
        kill(pid, 0) == 0 || errno != ESRCH
    }

    /// The error `operation` throws, as a GantryError.
    static func gantryError<T>(_ operation: () async throws -> T) async -> GantryError? {
        do {
            _ = try await operation()
            return nil
        } catch {
            return error as? GantryError
        }
    }
}
