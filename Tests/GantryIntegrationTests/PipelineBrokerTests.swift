import Foundation
import GantryCore
import GantryCoordinator
import GantryRedis
import GantryStore
import GantryTasks
import GantryWorker
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Pipelines scheduled end to end over the real brokers: workers and coordinators on real Redis
/// and RabbitMQ or the Kafka dev broker, each test on its own queue and namespace.
@Suite(.serialized) struct PipelineBrokerTests {
    /// The built-in tasks plus `boom`, which always fails for good.
    static let registry: TaskRegistry = {
        var registry = BuiltinTasks.registry
        registry.register("boom", kind: .io, summary: "always fails, not retriable") { _, _ in
            throw GantryError(.taskFailed, "boom: this stage always fails")
        }
        return registry
    }()

    @Test(arguments: WorkerBroker.allCases)
    func aDiamondWithAMappedBranchFinishes(broker: WorkerBroker) async throws {
        let cluster = try await BrokerCluster.make(broker)
        defer { Task { await cluster.close() } }
        let run = try await cluster.submit("""
              - { name: lines, task: split }
              - { name: hash, task: sha256, after: [lines], map: lines, max_parallel: 2 }
              - { name: count, task: wordcount, after: [lines] }
              - { name: report, task: report, after: [hash, count] }
            """, input: "alpha beta\ngamma\ndelta alpha\n", registry: Self.registry)
        let worker = try cluster.worker(Self.registry) { $0.concurrency = 16 }
        let state = try await withWorkerServices([worker, cluster.coordinator()]) { try await cluster.waitForEnd(run) }
        #expect(state == .succeeded)
        let hashes = try #require(try await cluster.store.upstreamResults(run, stages: ["hash"])["hash"])
        #expect(try JSONValue(parsing: hashes) == .array(["alpha beta", "gamma", "delta alpha"].map { .string(BuiltinTasks.sha256(Array($0.utf8))) }))
        let report = try JSONValue(parsing: try #require(try await cluster.store.result(run, NodeID(stage: "report"))))
        #expect(report["inputs"]?["count"]?["words"] == .int(5))
    }

    @Test(arguments: WorkerBroker.allCases)
    func aChainOfTwoHundredStagesPassesItsValueThrough(broker: WorkerBroker) async throws {
        let cluster = try await BrokerCluster.make(broker)
        defer { Task { await cluster.close() } }
        var stages = "  - { name: s0, task: echo }\n"
        for index in 1..<200 { stages += "  - { name: s\(index), task: echo, after: [s\(index - 1)] }\n" }
        let run = try await cluster.submit(stages, input: "carried along", registry: Self.registry)
        let worker = try cluster.worker(Self.registry) { $0.concurrency = 8 }
        let state = try await withWorkerServices([worker, cluster.coordinator()]) { try await cluster.waitForEnd(run, timeout: .seconds(90)) }
        #expect(state == .succeeded)
        #expect(try await cluster.store.result(run, NodeID(stage: "s199")) == Array("carried along".utf8))
        let status = try await cluster.store.status(run)
        #expect(status.stages.count == 200)
        #expect(status.stages.allSatisfy { $0.state == .succeeded })
    }

    @Test(arguments: WorkerBroker.allCases)
    func aThousandWayFanOutJoinsIntoOneStage(broker: WorkerBroker) async throws {
        let cluster = try await BrokerCluster.make(broker)
        defer { Task { await cluster.close() } }
        let input = (0..<1000).map { "line \($0)" }.joined(separator: "\n")
        let run = try await cluster.submit("""
              - { name: lines, task: split }
              - { name: each, task: echo, after: [lines], map: lines }
              - { name: join, task: echo, after: [each] }
            """, input: input, registry: Self.registry)
        let worker = try cluster.worker(Self.registry) { $0.concurrency = 64 }
        let state = try await withWorkerServices([worker, cluster.coordinator()]) { try await cluster.waitForEnd(run, timeout: .seconds(90)) }
        #expect(state == .succeeded)
        // The join received the list of every element's result, in element order.
        let joined = try JSONValue(parsing: try #require(try await cluster.store.result(run, NodeID(stage: "join"))))
        #expect(joined == .array((0..<1000).map { .string("line \($0)") }))
        #expect(worker.counters.succeeded == 1002)
    }

    @Test(arguments: WorkerBroker.allCases)
    func aFailingStageFailsTheRunAndStopsWhatDependsOnIt(broker: WorkerBroker) async throws {
        let cluster = try await BrokerCluster.make(broker)
        defer { Task { await cluster.close() } }
        let run = try await cluster.submit("""
              - { name: bad, task: boom }
              - { name: after_bad, task: echo, after: [bad] }
              - { name: slow, task: sleep, args: { duration: 5s } }
            """, registry: Self.registry)
        let worker = try cluster.worker(Self.registry)
        let state = try await withWorkerServices([worker, cluster.coordinator()]) { try await cluster.waitForEnd(run) }
        #expect(state == .failed)
        let status = try await cluster.store.status(run)
        #expect(status.node("bad")?.state == .failed)
        #expect(status.node("bad")?.error?.contains("always fails") == true)
        #expect(status.node("after_bad")?.state != .succeeded)
        // The run failed at once, without waiting for the independent 5 s stage.
        #expect(status.node("slow")?.state != .succeeded)
    }

    @Test(arguments: WorkerBroker.allCases)
    func aFailingStageWithContinueLetsIndependentStagesFinish(broker: WorkerBroker) async throws {
        let cluster = try await BrokerCluster.make(broker)
        defer { Task { await cluster.close() } }
        let run = try await cluster.submit("""
              - { name: bad, task: boom, on_failure: continue }
              - { name: after_bad, task: echo, after: [bad] }
              - { name: fine, task: echo }
              - { name: after_fine, task: echo, after: [fine] }
            """, input: "ok", registry: Self.registry)
        let worker = try cluster.worker(Self.registry)
        let state = try await withWorkerServices([worker, cluster.coordinator()]) { try await cluster.waitForEnd(run) }
        // Every stage that did not need the failed one ran; the run still reports the failure.
        #expect(state == .failed)
        let status = try await cluster.store.status(run)
        #expect(status.node("bad")?.state == .failed)
        #expect(status.node("after_bad")?.state == .skipped)
        #expect(status.node("after_fine")?.state == .succeeded)
        #expect(try await cluster.store.result(run, NodeID(stage: "after_fine")) == Array("ok".utf8))
    }

    @Test(arguments: WorkerBroker.allCases)
    func cancellingMidRunStopsTheRunningStageAndEverythingAfterIt(broker: WorkerBroker) async throws {
        let cluster = try await BrokerCluster.make(broker)
        defer { Task { await cluster.close() } }
        let run = try await cluster.submit("""
              - { name: long, task: sleep, args: { duration: 30s } }
              - { name: next, task: echo, after: [long] }
            """, registry: Self.registry)
        let worker = try cluster.worker(Self.registry)
        try await withWorkerServices([worker, cluster.coordinator()]) {
            _ = try await cluster.waitUntilRunning(run)
            #expect(try await cluster.store.cancel(run, reason: "test cancels") == .cancelled)
            // The worker learns it at its next renewal and drops the attempt.
            try await redisWaitUntil("the worker to drop the cancelled attempt", timeout: .seconds(10)) { worker.counters.dropped == 1 }
        }
        let status = try await cluster.store.status(run)
        #expect(status.state == .cancelled)
        #expect(status.node("long")?.state == .cancelled)
        #expect(status.node("next")?.state == .cancelled)
        #expect(try await cluster.store.result(run, NodeID(stage: "long")) == nil)
    }

    /// Two `gantry-coordinator` processes; the leader is killed with SIGKILL while the run waits
    /// for a retry only a coordinator publishes. The standby takes over and the run finishes.
    @Test(arguments: WorkerBroker.allCases)
    func aStandbyCoordinatorFinishesARunWhenTheLeaderIsKilled(broker: WorkerBroker) async throws {
        let cluster = try await BrokerCluster.make(broker)
        defer { Task { await cluster.close() } }
        let config = try cluster.workerConfigFile()
        defer { try? FileManager.default.removeItem(atPath: config) }
        try """
            coordinator: { leader_lease: 2s, sweep_interval: 50ms }
            observability: { coordinator_listen: "127.0.0.1:0" }
            """.appendLine(toFile: config)
        let first = try await SpawnedWorker.start("gantry-coordinator", config: config)
        let second = try await SpawnedWorker.start("gantry-coordinator", config: config)
        defer { Task { await first.cleanUp(); await second.cleanUp() } }
        let lease = LeaderLease(store: cluster.store, holder: "test")
        var leaderPID: Int32 = 0
        do {
            try await redisWaitUntil("a coordinator to lead", timeout: .seconds(30)) {
                guard first.process.isRunning, second.process.isRunning else { throw GantryError(.closed, "a coordinator exited") }
                guard let holder = try await lease.currentHolder() else { return false }
                leaderPID = [first, second].first { holder.contains(":\($0.pid):") }?.pid ?? 0
                return leaderPID != 0
            }
        } catch {
            throw GantryError(.timeout, "\(error); the coordinators' logs end:\n\(first.logTail)\n\(second.logTail)")
        }

        // The first attempt fails retriably; its retry is due 1.5 s later and only the leading
        // coordinator publishes it. The leader dies before that.
        let attempts = AttemptCounter()
        var registry = Self.registry
        registry.register("flaky", kind: .io, summary: "fails once, then succeeds") { input, _ in
            await attempts.increment()
            if await attempts.value == 1 { throw GantryError(.taskFailed, "first attempt fails", isRetriable: true) }
            return input
        }
        let run = try await cluster.submit("""
              - { name: flaky, task: flaky, retry: { max_attempts: 3, initial_backoff: 1500ms, jitter: 0 } }
            """, input: "done", registry: registry)
        let worker = try cluster.worker(registry)
        let state = try await withWorkerServices([worker]) {
            try await redisWaitUntil("the first attempt to fail", timeout: .seconds(20)) { await attempts.value == 1 }
            kill(leaderPID, SIGKILL)
            let standby = leaderPID == first.pid ? second : first
            try await redisWaitUntil("the standby to lead", timeout: .seconds(15)) {
                try await lease.currentHolder()?.contains(":\(standby.pid):") == true
            }
            return try await cluster.waitForEnd(run, timeout: .seconds(30))
        }
        #expect(state == .succeeded)
        #expect(await attempts.value == 2)
        #expect(try await cluster.store.result(run, NodeID(stage: "flaky")) == Array("done".utf8))
    }
}

private extension RunStatus {
    /// The status of the stage named `name`.
    func node(_ name: String) -> NodeStatus? {
        stages.first { $0.node.stage.rawValue == name }
    }
}

private extension String {
    /// Appends this text on lines of its own to the file at `path`.
    func appendLine(toFile path: String) throws {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(("\n" + self + "\n").utf8))
    }
}
