import Foundation
import GantryCore
import GantryTasks
import GantryWorker
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The child-process pool against a real child executable (Sources/GantryPoolTestChild).
///
/// Serialized: several tests count children or compare task intervals, and a second pool
/// competing for the two cores would only make them slower.
@Suite(.serialized)
struct ProcessPoolTests {
    private typealias Support = ProcessPoolTestSupport

    @Test func taskRunsInAnotherProcess() async throws {
        try await Support.withPool(Support.configuration()) { pool in
            let outcome = try await pool.execute(task: "pid", input: [], context: Support.context())
            let childPID = Int32(String(decoding: outcome.output, as: UTF8.self))
            #expect(childPID != nil)
            #expect(childPID != getpid())
            #expect(outcome.childPID == childPID)
            #expect(pool.counters.tasksRun == 1)
        }
    }

    @Test func builtinResultsMatchInProcess() async throws {
        // Larger than a pipe buffer many times over, so requests and results cross in pieces.
        var generator = SystemRandomNumberGenerator()
        let input = (0..<(3 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let text = Array(String(repeating: "the quick brown fox jumps over the lazy dog\n", count: 5000).utf8)
        try await Support.withPool(Support.configuration()) { pool in
            let registry = BuiltinTasks.registry
            for (task, bytes, args) in [("sha256", input, JSONValue.object(["rounds": .int(3)])), ("wordcount", text, .null), ("split", text, .object(["lines": .int(100)]))] {
                let context = Support.context(args: args)
                let expected = try await registry.require(task).function(bytes, context)
                let actual = try await pool.run(task: task, input: bytes, context: context, timeout: .seconds(60))
                #expect(actual == expected, "\(task) in a child differs from in-process")
            }
        }
    }

    @Test func contextAndNoisyOutputCrossIntact() async throws {
        try await Support.withPool(Support.configuration()) { pool in
            var context = Support.context(args: .object(["title": .string("x")]), upstream: ["a": Array("one".utf8), "b": Array("two".utf8)], attempt: 3)
            context.node = NodeID(stage: "cpu", index: 7)
            context.deadlineMilliseconds = 1_234_567
            let seen = try JSONValue(parsing: try await pool.run(task: "context", input: [], context: context))
            #expect(seen == .object([
                "run": .string(context.runID.rawValue), "node": .string("cpu[7]"), "attempt": .int(3),
                "args": .object(["title": .string("x")]), "upstream": .object(["a": .string("one"), "b": .string("two")]),
                "deadline": .int(1_234_567),
            ]))
            // A task that prints to stdout must not corrupt the frames: the child moves fd 1 to stderr.
            let echoed = try await pool.run(task: "noisy", input: Array("payload".utf8), context: Support.context())
            #expect(echoed == Array("payload".utf8))
            #expect(pool.counters.respawnedAfterCrash == 0)
        }
    }

    @Test func taskErrorsKeepCodeMessageAndRetriable() async throws {
        try await Support.withPool(Support.configuration()) { pool in
            let first = try await pool.execute(task: "pid", input: [], context: Support.context()).childPID
            let failed = await Support.gantryError {
                try await pool.run(task: "fail", input: [], context: Support.context(args: .object(["message": .string("disk on fire")])))
            }
            #expect(failed?.code == .taskFailed)
            #expect(failed?.message == "disk on fire")
            #expect(failed?.isRetriable == true)
            let unknown = await Support.gantryError { try await pool.run(task: "no-such-task", input: [], context: Support.context()) }
            #expect(unknown?.code == .unknownTask)
            #expect(unknown?.isRetriable == false)
            // A task error is an answer, not a crash: the same child serves on.
            #expect(try await pool.execute(task: "pid", input: [], context: Support.context()).childPID == first)
            #expect(pool.counters.respawnedAfterCrash == 0)
        }
    }

    @Test func framesOverTheLimitAreRefusedWithoutHarmingTheChild() async throws {
        try await Support.withPool(Support.configuration { $0.maxFrameBytes = 64 << 10 }) { pool in
            let child = try await pool.execute(task: "pid", input: [], context: Support.context()).childPID
            let request = await Support.gantryError { try await pool.run(task: "echo", input: Array(repeating: 1, count: 100 << 10), context: Support.context()) }
            #expect(request?.code == .payloadTooLarge)
            let result = await Support.gantryError {
                try await pool.run(task: "bloat", input: [], context: Support.context(args: .object(["bytes": .int(100 << 10)])))
            }
            #expect(result?.code == .payloadTooLarge)
            #expect(result?.message.contains("pool.max_frame_bytes") == true, "\(String(describing: result))")
            #expect(try await pool.execute(task: "pid", input: [], context: Support.context()).childPID == child)
        }
    }

    @Test func childKilledMidTaskFailsRetriablyAndIsReplaced() async throws {
        try await Support.withPool(Support.configuration()) { pool in
            let call = Task { try await pool.run(task: "hang", input: [], context: Support.context()) }
            let victim = try await Support.busyChild(pool, running: "hang")
            #expect(kill(victim, SIGKILL) == 0)
            let error = await Support.gantryError { try await call.value }
            #expect(error?.code == .taskFailed)
            #expect(error?.isRetriable == true)
            #expect(error?.message.contains("child process \(victim) died with signal 9 while running hang") == true, "\(String(describing: error))")
            let next = try await pool.execute(task: "pid", input: [], context: Support.context())
            #expect(next.childPID != victim)
            #expect(pool.counters.respawnedAfterCrash == 1)
            #expect(pool.counters.alive == 1)
        }
    }

    @Test func taskThatKillsItsChildFailsRetriably() async throws {
        try await Support.withPool(Support.configuration()) { pool in
            let error = await Support.gantryError { try await pool.run(task: "crash", input: [], context: Support.context()) }
            #expect(error?.code == .taskFailed)
            #expect(error?.isRetriable == true)
            #expect(error?.message.contains("died with signal 9 while running crash") == true, "\(String(describing: error))")
            _ = try await pool.run(task: "pid", input: [], context: Support.context())
        }
    }

    @Test func timeoutStopsTheChildWithSIGTERMThenSIGKILL() async throws {
        try await Support.withPool(Support.configuration()) { pool in
            // SIGTERM suffices: the child was spawned with an empty signal mask.
            let terminated = await Support.gantryError {
                try await Support.bounded("a timed-out call") {
                    try await pool.run(task: "hang", input: [], context: Support.context(), timeout: .milliseconds(300))
                }
            }
            #expect(terminated?.code == .timeout)
            #expect(terminated?.isRetriable == true)
            #expect(terminated?.message.contains("died with signal 15") == true, "\(String(describing: terminated))")

            // A child that ignores SIGTERM gets SIGKILL after the grace.
            let killed = await Support.gantryError {
                try await Support.bounded("a timed-out call whose child ignores SIGTERM") {
                    try await pool.run(task: "hang", input: [], context: Support.context(args: .object(["ignore_term": .int(1)])), timeout: .milliseconds(300))
                }
            }
            #expect(killed?.code == .timeout)
            #expect(killed?.message.contains("died with signal 9") == true, "\(String(describing: killed))")
            #expect(pool.counters.killed == 2)
            _ = try await pool.run(task: "pid", input: [], context: Support.context())
        }
    }

    @Test func cancellingTheCallerStopsTheChild() async throws {
        try await Support.withPool(Support.configuration()) { pool in
            let call = Task { try await pool.run(task: "hang", input: [], context: Support.context()) }
            let child = try await Support.busyChild(pool, running: "hang")
            call.cancel()
            let error = await Support.gantryError { try await call.value }
            #expect(error?.code == .cancelled)
            // The error is delivered after the child was reaped.
            #expect(!Support.processExists(child))
            #expect(try await pool.execute(task: "pid", input: [], context: Support.context()).childPID != child)
        }
    }

    @Test func waitingForABusyPoolIsBoundedAndCancellable() async throws {
        try await Support.withPool(Support.configuration { $0.acquireTimeout = .milliseconds(300) }) { pool in
            let blocker = Task { try await pool.run(task: "hang", input: [], context: Support.context()) }
            _ = try await Support.busyChild(pool, running: "hang")
            let waited = await Support.gantryError { try await pool.run(task: "pid", input: [], context: Support.context()) }
            #expect(waited?.code == .timeout)
            #expect(waited?.message.contains("no child process became free") == true, "\(String(describing: waited))")

            let queued = Task { try await pool.run(task: "pid", input: [], context: Support.context()) }
            try await Support.waitUntil("a waiting call") { pool.counters.waiting == 1 }
            queued.cancel()
            let cancelled = await Support.gantryError { try await queued.value }
            #expect(cancelled?.code == .cancelled)
            #expect(pool.counters.waiting == 0)
            blocker.cancel()
            _ = try? await blocker.value
        }
    }

    @Test func childIsRecycledAfterMaxTasks() async throws {
        try await Support.withPool(Support.configuration { $0.maxTasksPerChild = 3 }) { pool in
            var pids: [Int32] = []
            for _ in 0..<4 {
                pids.append(try await pool.execute(task: "pid", input: [], context: Support.context()).childPID)
            }
            #expect(Set(pids[0..<3]).count == 1)
            #expect(pids[3] != pids[0])
            #expect(pool.counters.recycled == 1)
            #expect(pool.counters.respawnedAfterCrash == 0)
        }
    }

    @Test func childIsRecycledAboveTheMemoryLimit() async throws {
        try await Support.withPool(Support.configuration { $0.rssLimitBytes = 150 << 20 }) { pool in
            let first = try await pool.execute(task: "pid", input: [], context: Support.context()).childPID
            // Below the limit the child stays; the next task runs in the same process.
            #expect(try await pool.execute(task: "pid", input: [], context: Support.context()).childPID == first)
            let grown = try await pool.execute(task: "grow", input: [], context: Support.context(args: .object(["bytes": .int(250 << 20)])))
            #expect(grown.childPID == first)
            let after = try await pool.execute(task: "pid", input: [], context: Support.context()).childPID
            #expect(after != first)
            #expect(pool.counters.recycled == 1)
        }
    }

    @Test func poolOfTwoRunsFourTasksInTwoWaves() async throws {
        struct Interval: Sendable {
            var pid: Int64
            var start: Int64
            var end: Int64
        }
        let intervals = try await Support.withPool(Support.configuration(size: 2)) { pool in
            // Both children up first, so that the first wave is not waiting for a spawn.
            try await Support.waitUntil("two children") { pool.counters.alive == 2 }
            return try await withThrowingTaskGroup(of: Interval.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        let output = try await pool.run(task: "spin", input: [], context: Support.context(args: .object(["ms": .int(300)])))
                        let value = try JSONValue(parsing: output)
                        return Interval(pid: value["pid"]!.intValue!, start: value["start"]!.intValue!, end: value["end"]!.intValue!)
                    }
                }
                return try await group.reduce(into: [Interval]()) { $0.append($1) }
            }
        }
        #expect(Set(intervals.map(\.pid)).count == 2)
        #expect(!intervals.map(\.pid).contains(Int64(getpid())))
        // Never more than two at once (the pool's size), and at some moment exactly two (parallel).
        let overlaps = intervals.map { probe in intervals.filter { $0.start <= probe.start && probe.start < $0.end }.count }
        #expect(overlaps.max() == 2)
        // Each child ran two tasks, one after the other.
        for pid in Set(intervals.map(\.pid)) {
            let mine = intervals.filter { $0.pid == pid }.sorted { $0.start < $1.start }
            #expect(mine.count == 2)
            #expect(mine[0].end <= mine[1].start)
        }
    }

    @Test func shutdownStopsAHungChildAndReturns() async throws {
        var logger = Logger(label: "pool-test")
        logger.logLevel = .warning
        let pool = try ChildProcessPool(configuration: Support.configuration(), logger: logger)
        let runner = Task { try await pool.run() }
        let call = Task { try await pool.run(task: "hang", input: [], context: Support.context(args: .object(["ignore_term": .int(1)]))) }
        let child = try await Support.busyChild(pool, running: "hang")
        try await Support.bounded("shutdown with a hung child") { await pool.shutdown() }
        let error = await Support.gantryError { try await call.value }
        #expect(error?.code == .closed)
        #expect(error?.isRetriable == true)
        #expect(!Support.processExists(child))
        #expect(pool.counters.alive == 0)
        try await runner.value
        let late = await Support.gantryError { try await pool.run(task: "pid", input: [], context: Support.context()) }
        #expect(late?.code == .closed)
    }

    @Test func defaultsRespawnTheParentsOwnExecutable() async throws {
        // The test child started as a parent: its pool uses the production defaults, so its child
        // is /proc/self/exe with the hidden argument, dispatched first thing in main.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Support.childExecutable)
        process.arguments = ["--as-parent"]
        let output = Pipe()
        process.standardOutput = output
        try await Support.bounded("the parent process") {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                process.terminationHandler = { _ in continuation.resume() }
                do { try process.run() } catch { continuation.resume(throwing: error) }
            }
        }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let pids = text.split(whereSeparator: \.isWhitespace).compactMap { Int32($0) }
        #expect(process.terminationStatus == 0, "\(text)")
        #expect(pids.count == 2, "\(text)")
        #expect(pids.first == process.processIdentifier)
        #expect(pids.last != process.processIdentifier)
    }

    @Test func aProgramThatIsNotAPoolChildFailsCallsInsteadOfHanging() async throws {
        let configuration = Support.configuration { $0.executablePath = "/bin/true"; $0.arguments = [] }
        try await Support.withPool(configuration) { pool in
            let error = await Support.gantryError {
                try await Support.bounded("a call to a broken pool") { try await pool.run(task: "pid", input: [], context: Support.context()) }
            }
            #expect(error?.code == .configuration)
            #expect(error?.message.contains("ChildProcessMain.run") == true, "\(String(describing: error))")
        }
    }
}
