import Foundation
import GantryCore
import GantryStore
import GantryTasks
import GantryWorker
import Logging
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The worker end to end on real Redis and each real broker: child processes, crashes of a
/// child and of a whole worker process, SIGTERM drain, timeouts, poison messages, task limits.
///
/// Serialized: several tests run real worker processes and pool children, and the machine's
/// two cores are shared with other suites.
@Suite(.serialized)
struct WorkerBrokerTests {
    private typealias Pool = ProcessPoolTestSupport

    /// The built-ins with `exec` allowed to run `sh`, plus the names the pool's test child serves.
    private static var registry: TaskRegistry {
        var registry = BuiltinTasks.registry(configuration: BuiltinTaskConfiguration(execAllow: ["sh"]), http: .shared)
        registry.merge(poolOnlyTasks(["pid", "wait-first", "hang"]))
        return registry
    }

    private func withCluster(_ broker: WorkerBroker, _ body: (BrokerCluster) async throws -> Void) async throws {
        let cluster = try await BrokerCluster.make(broker)
        do {
            try await body(cluster)
        } catch {
            await cluster.close()
            throw error
        }
        await cluster.close()
    }

    private func pool(size: Int = 1) throws -> ChildProcessPool {
        var logger = Logger(label: "test-pool")
        logger.logLevel = .error
        return try ChildProcessPool(configuration: Pool.configuration(size: size), logger: logger)
    }

    @Test(arguments: WorkerBroker.allCases)
    func aCPUStageRunsInAChildProcess(broker: WorkerBroker) async throws {
        try await withCluster(broker) { cluster in
            let registry = Self.registry
            let run = try await cluster.submit("  - { name: where, task: pid, kind: cpu }\n  - { name: hash, task: sha256, kind: cpu, after: [where] }\n", registry: registry)
            let pool = try pool()
            let worker = try cluster.worker(registry, pool: pool)
            let (state, children) = try await withWorkerServices([pool, worker]) {
                (try await cluster.waitForEnd(run), pool.children.compactMap(\.pid))
            }
            #expect(state == .succeeded)
            let bytes = try #require(try await cluster.store.result(run, NodeID(stage: "where")))
            let pid = try #require(Int32(String(decoding: bytes, as: UTF8.self)))
            #expect(pid != getpid())
            #expect(children.contains(pid))
            #expect(pool.counters.tasksRun == 2)
            let hash = try await cluster.store.result(run, NodeID(stage: "hash"))
            #expect(hash == JSONValue.string(BuiltinTasks.sha256(Array(String(pid).utf8))).jsonBytes)
        }
    }

    @Test(arguments: WorkerBroker.allCases)
    func aChildKilledMidTaskIsRetriedAndTheWorkerCarriesOn(broker: WorkerBroker) async throws {
        try await withCluster(broker) { cluster in
            let registry = Self.registry
            let run = try await cluster.submit("  - { name: a, task: wait-first, kind: cpu, retry: { max_attempts: 3, initial_backoff: 50ms, jitter: 0 } }\n", registry: registry)
            let pool = try pool()
            let worker = try cluster.worker(registry, pool: pool)
            let killed = try await withWorkerServices([pool, worker, cluster.coordinator()]) {
                let victim = try await Pool.busyChild(pool, running: "wait-first")
                kill(victim, SIGKILL)
                #expect(try await cluster.waitForEnd(run) == .succeeded)
                // The same worker goes on to run more work.
                let next = try await cluster.submit("  - { name: b, task: echo }\n", input: "still serving", registry: registry)
                #expect(try await cluster.waitForEnd(next) == .succeeded)
                #expect(try await cluster.store.result(next, NodeID(stage: "b")) == Array("still serving".utf8))
                return victim
            }
            let status = try await cluster.store.status(run)
            #expect(status.stages[0].attempt == 2)
            let survivor = Int32(String(decoding: try #require(try await cluster.store.result(run, NodeID(stage: "a"))), as: UTF8.self))
            #expect(survivor != nil && survivor != killed)
            #expect(pool.counters.respawnedAfterCrash >= 1)
            #expect(worker.counters.retried == 1)
            #expect(worker.counters.succeeded == 2)
        }
    }

    @Test(arguments: WorkerBroker.allCases)
    func aKilledWorkerProcessesTaskIsFinishedOnceByAnotherAfterItsLeaseExpires(broker: WorkerBroker) async throws {
        try await withCluster(broker) { cluster in
            let registry = Self.registry
            let config = try cluster.workerConfigFile()
            defer { try? FileManager.default.removeItem(atPath: config) }
            // The result names the process that ran it: $PPID of the shell is the worker.
            let run = try await cluster.submit("  - { name: a, task: exec, args: { command: [sh, -c, 'cat >/dev/null; sleep 2; echo $PPID'] } }\n", input: "x", registry: registry)
            let doomed = try await SpawnedWorker.start(config: config)
            do {
                let owner = try await cluster.waitUntilRunning(run)
                #expect(owner.contains(":\(doomed.pid):"), "the spawned worker should hold the task; its log ends:\n\(doomed.logTail)")
                doomed.signal(SIGKILL)
                #expect(try await doomed.waitForExit() == nil)
            } catch {
                await doomed.cleanUp()
                throw error
            }
            await doomed.cleanUp()
            // A second worker (this process) and the coordinator take over once the lease expires.
            let survivor = try cluster.worker(registry)
            #expect(try await withWorkerServices([survivor, cluster.coordinator()]) { try await cluster.waitForEnd(run) } == .succeeded)
            let result = String(decoding: try #require(try await cluster.store.result(run, NodeID(stage: "a"))), as: UTF8.self)
            #expect(result == "\(getpid())\n")
            let status = try await cluster.store.status(run)
            #expect(status.stages[0].epoch == 2)  // re-queued once, after the lease expired
            #expect(status.stages[0].leasesLost == 1)
            #expect(status.staleCommitsRefused == 0)
            #expect(survivor.counters.succeeded == 1)
        }
    }

    @Test(arguments: WorkerBroker.allCases)
    func sigtermDrainsInFlightWorkAndExitsZero(broker: WorkerBroker) async throws {
        try await withCluster(broker) { cluster in
            let registry = Self.registry
            let config = try cluster.workerConfigFile()
            defer { try? FileManager.default.removeItem(atPath: config) }
            let worker = try await SpawnedWorker.start(config: config)
            do {
                try await worker.waitUntilRegistered(in: cluster)
                let run = try await cluster.submit(
                    "  - { name: a, task: sleep, args: { duration: 1500ms } }\n  - { name: b, task: sha256, kind: cpu }\n", input: "drain me", registry: registry
                )
                var started: [NodeState] = []
                try await redisWaitUntil("both stages to start") {
                    started = try await cluster.store.status(run).stages.map(\.state)
                    return started.allSatisfy { $0 == .running || $0 == .succeeded } && started[0] == .running
                }
                worker.signal(SIGTERM)
                let status = try await worker.waitForExit()
                #expect(status == 0, "the worker should exit 0 after draining; its log ends:\n\(worker.logTail)")
                // It finished what it held before exiting: nothing was handed back.
                #expect(try await cluster.store.runState(run) == .succeeded)
                #expect(try await cluster.store.result(run, NodeID(stage: "a")) == Array("drain me".utf8))
                #expect(try await cluster.store.status(run).stages.map(\.epoch) == [1, 1])
                #expect(try await cluster.store.workers().allSatisfy { !$0.id.contains(":\(worker.pid):") })
            } catch {
                await worker.cleanUp()
                throw error
            }
            await worker.cleanUp()
        }
    }

    @Test(arguments: WorkerBroker.allCases)
    func stageTimeoutsStopInProcessAndChildTasks(broker: WorkerBroker) async throws {
        try await withCluster(broker) { cluster in
            let registry = Self.registry
            let run = try await cluster.submit("""
                  - { name: stuck, task: hang, kind: cpu, timeout: 500ms, retry: 1, on_failure: continue }
                  - { name: slow, task: sleep, args: { duration: 30s }, timeout: 300ms, retry: 1, on_failure: continue }
                  - { name: command, task: exec, args: { command: [sh, -c, 'exec sleep 30'] }, timeout: 300ms, retry: 1, on_failure: continue }

                """, registry: registry)
            let pool = try pool()
            let worker = try cluster.worker(registry, pool: pool)
            _ = try await withWorkerServices([pool, worker]) { try await cluster.waitForEnd(run) }
            let stages = try await cluster.store.status(run).stages
            #expect(stages.map(\.state) == [.failed, .failed, .failed])
            #expect(stages[0].error?.contains("timeout of 500ms") == true)
            #expect(stages[1].error?.contains("timeout of 300ms") == true)
            #expect(stages[2].error?.contains("timeout of 300ms") == true)
            #expect(pool.counters.killed >= 1)
        }
    }

    @Test(arguments: WorkerBroker.allCases)
    func poisonIsDeadLetteredWithItsReason(broker: WorkerBroker) async throws {
        try await withCluster(broker) { cluster in
            let registry = Self.registry
            // An undecodable message on the queue, and a task that fails for good: a command
            // this worker does not allow.
            try await cluster.transport.publish(OutgoingMessage(body: Array("not an envelope".utf8)), to: cluster.queue)
            let run = try await cluster.submit("  - { name: a, task: exec, args: { command: [rm, -rf, /] }, retry: 5 }\n  - { name: b, task: echo, after: [a] }\n", registry: registry)
            let worker = try cluster.worker(registry)
            let state = try await withWorkerServices([worker, cluster.coordinator()]) {
                let state = try await cluster.waitForEnd(run)
                // On Kafka the two messages may sit on different partitions, fetched in either
                // order: the run can end before the undecodable one is read.
                try await ProcessPoolTestSupport.waitUntil("the undecodable message dead-lettered", limit: .seconds(20)) { worker.counters.deadLettered >= 1 }
                return state
            }
            #expect(state == .failed)
            let status = try await cluster.store.status(run)
            #expect(status.stages[0].deadLettered)
            #expect(status.stages[0].attempt == 1)  // not retriable: refused once, not five times
            #expect(status.stages[0].error?.contains("'rm' is not allowed") == true)
            #expect(status.stages[0].error?.contains("tasks.exec_allow") == true)
            #expect(status.stages[1].state == .cancelled)
            let dead = DeliveryCollector(try await cluster.transport.consume(queues: [cluster.transport.deadLetterQueue(of: cluster.queue)], credit: 10))
            let reasons = try await dead.wait(for: 1).compactMap { $0.headers[deadLetterReasonHeader] }
            #expect(reasons.contains { $0.contains("bad magic bytes") }, "\(reasons)")
            await dead.stop()
            #expect(worker.counters.deadLettered == 1)
        }
    }

    @Test func anOversizedResultFailsTheTaskInsteadOfLooping() async throws {
        try await withCluster(.rabbitmq) { cluster in
            var registry = Self.registry
            let limit = cluster.store.configuration.maxResultBytes
            registry.register("huge", kind: .io) { _, _ in [UInt8](repeating: 0x61, count: limit + 1) }
            let run = try await cluster.submit("  - { name: a, task: huge, retry: 3 }\n", registry: registry)
            let worker = try cluster.worker(registry)
            #expect(try await withWorkerServices([worker, cluster.coordinator()]) { try await cluster.waitForEnd(run) } == .failed)
            let stage = try await cluster.store.status(run).stages[0]
            #expect(stage.attempt == 1)
            #expect(stage.deadLettered)
            #expect(stage.error?.contains("over store.max_result_bytes") == true)
            #expect(worker.counters.handedBack == 0)
        }
    }

    @Test(arguments: WorkerBroker.allCases)
    func taskLimitsCapOneTaskTypeOnBothPaths(broker: WorkerBroker) async throws {
        try await withCluster(broker) { cluster in
            let gauge = ConcurrencyGauge()
            var registry = Self.registry
            registry.register("gate", kind: .io) { input, _ in
                gauge.enter()
                defer { gauge.leave() }
                try await Task.sleep(for: .milliseconds(150))
                return input
            }
            registry.merge(poolOnlyTasks(["spin"]))
            let run = try await cluster.submit("""
                  - { name: lines, task: split }
                  - { name: gated, task: gate, after: [lines], map: lines }
                  - { name: spun, task: spin, kind: cpu, after: [lines], map: lines, args: { ms: 100 } }

                """, input: (1...6).map { "line \($0)" }.joined(separator: "\n"), registry: registry)
            let pool = try pool(size: 2)
            let worker = try cluster.worker(registry, pool: pool) { configuration in
                configuration.concurrency = 12
                configuration.taskLimits = ["gate": 2, "spin": 1]
            }
            #expect(try await withWorkerServices([pool, worker]) { try await cluster.waitForEnd(run) } == .succeeded)
            #expect(gauge.peak == 2)  // 6 gate tasks, 12 slots, limit 2
            // Two children were free, yet spin ran one at a time: the intervals do not overlap.
            let spins = try JSONValue(parsing: try #require(try await cluster.store.upstreamResults(run, stages: ["spun"])["spun"])).arrayValue ?? []
            let intervals = spins.compactMap { spin -> (Int64, Int64)? in
                guard let start = spin["start"]?.intValue, let end = spin["end"]?.intValue else { return nil }
                return (start, end)
            }.sorted { $0.0 < $1.0 }
            #expect(intervals.count == 6)
            for (earlier, later) in zip(intervals, intervals.dropFirst()) { #expect(earlier.1 <= later.0) }
        }
    }

    @Test func anExecStageInAPoolChildDiesWithTheChildOnTimeout() async throws {
        try await withCluster(.rabbitmq) { cluster in
            let config = try cluster.workerConfigFile()
            defer { try? FileManager.default.removeItem(atPath: config) }
            let pidFile = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-exec-\(UUID().uuidString).pid").path
            defer { try? FileManager.default.removeItem(atPath: pidFile) }
            // kind: cpu puts the command in the worker's pool child; the pool stops the child's
            // process group on timeout, and the command with it.
            let run = try await cluster.submit(
                "  - { name: a, task: exec, kind: cpu, args: { command: [sh, -c, 'echo $$ > \(pidFile); exec sleep 30'] }, timeout: 800ms, retry: 1 }\n",
                registry: Self.registry
            )
            let worker = try await SpawnedWorker.start(config: config)
            do {
                #expect(try await cluster.waitForEnd(run) == .failed, "its log ends:\n\(worker.logTail)")
                #expect(try await cluster.store.status(run).stages[0].error?.contains("timeout of 800ms") == true)
                let pid = try #require(Int32(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
                try await redisWaitUntil("the command to be gone", timeout: .seconds(10)) { kill(pid, 0) != 0 }
            } catch {
                await worker.cleanUp()
                throw error
            }
            worker.signal(SIGTERM)
            #expect(try await worker.waitForExit() == 0)
            await worker.cleanUp()
        }
    }

    @Test func anExampleWorkerWithItsOwnTaskRunsIt() async throws {
        try await withCluster(.rabbitmq) { cluster in
            var registry = Self.registry
            registry.register("shout", kind: .io) { _, _ in [] }
            let config = try cluster.workerConfigFile()
            defer { try? FileManager.default.removeItem(atPath: config) }
            let run = try await cluster.submit("  - { name: a, task: shout, args: { suffix: '!!' } }\n  - { name: b, task: sha256, kind: cpu, after: [a] }\n", input: "hello", registry: registry)
            let worker = try await SpawnedWorker.start("gantry-example-worker", config: config)
            do {
                let state = try await cluster.waitForEnd(run)
                #expect(state == .succeeded, "its log ends:\n\(worker.logTail)")
                #expect(try await cluster.store.result(run, NodeID(stage: "a")) == Array("HELLO!!".utf8))
                #expect(try await cluster.store.result(run, NodeID(stage: "b")) == JSONValue.string(BuiltinTasks.sha256(Array("HELLO!!".utf8))).jsonBytes)
                worker.signal(SIGTERM)
                #expect(try await worker.waitForExit() == 0)
            } catch {
                await worker.cleanUp()
                throw error
            }
            await worker.cleanUp()
        }
    }
}

/// Counts how many callers are inside at once, and the most there ever were.
final class ConcurrencyGauge: Sendable {
    private let state = Mutex((current: 0, peak: 0))

    func enter() {
        state.withLock {
            $0.current += 1
            $0.peak = max($0.peak, $0.current)
        }
    }

    func leave() {
        state.withLock { $0.current -= 1 }
    }

    var peak: Int { state.withLock { $0.peak } }
}
