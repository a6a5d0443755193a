import Foundation
import GantryCore
import GantryCoordinator
import GantryRedis
import GantryStore
import GantryTasks
import GantryWorker
import Logging
import ServiceLifecycle
import Testing

/// A store, an in-memory transport and a dispatcher, on the shared Redis under a private namespace.
private struct Cluster {
    let store: RedisStateStore
    let transport: InMemoryTransport
    let dispatcher: TaskDispatcher

    init() throws {
        var redis = try RedisConfiguration(url: RedisTestEnvironment.url)
        redis.poolSize = 8
        store = RedisStateStore(client: try RedisClient(configuration: redis), configuration: StoreConfiguration(namespace: "gantry-test-\(UUID().uuidString.prefix(8))"))
        transport = InMemoryTransport()
        dispatcher = TaskDispatcher(store: store, transport: transport)
    }

    func worker(_ registry: TaskRegistry = BuiltinTasks.registry, configure: (inout WorkerConfiguration) -> Void = { _ in }) throws -> Worker {
        var configuration = WorkerConfiguration(concurrency: 8, lease: .seconds(2), renewInterval: .milliseconds(300), heartbeatInterval: .milliseconds(200), drainTimeout: .seconds(5))
        configure(&configuration)
        return try Worker(configuration: configuration, registry: registry, store: store, transport: transport, dispatcher: dispatcher)
    }

    func coordinator() -> Coordinator {
        Coordinator(configuration: CoordinatorConfiguration(leaderLease: .seconds(2), sweepInterval: .milliseconds(50)), store: store, dispatcher: dispatcher)
    }

    func submit(_ yaml: String, input: String = "", registry: TaskRegistry = BuiltinTasks.registry) async throws -> RunID {
        let plan = try PipelinePlan(PipelineSpec.parse(yaml: yaml, knownTasks: registry.names))
        return try await dispatcher.submit(plan, input: Array(input.utf8)).runID
    }

    func waitForEnd(_ run: RunID, timeout: Duration = .seconds(30)) async throws -> RunState {
        try await waitForRunEnd(run, in: store, timeout: timeout)
    }
}

@Suite struct WorkerTests {
    @Test func aWorkerRunsADiamondWithFanOutToCompletion() async throws {
        let cluster = try Cluster()
        let run = try await cluster.submit("""
            name: diamond
            stages:
              - { name: lines, task: split, kind: cpu }
              - { name: hash, task: sha256, kind: cpu, after: [lines], map: lines, max_parallel: 3 }
              - { name: count, task: wordcount, kind: cpu, after: [lines] }
              - { name: report, task: report, after: [hash, count] }
            """, input: "alpha beta\ngamma\ndelta alpha\n")
        let worker = try cluster.worker()
        let state = try await withWorkerServices([worker]) { try await cluster.waitForEnd(run) }
        #expect(state == .succeeded)
        let hashes = try #require(try await cluster.store.upstreamResults(run, stages: ["hash"])["hash"])
        #expect(try JSONValue(parsing: hashes) == .array(["alpha beta", "gamma", "delta alpha"].map { .string(BuiltinTasks.sha256(Array($0.utf8))) }))
        let report = try JSONValue(parsing: try #require(try await cluster.store.result(run, NodeID(stage: "report"))))
        #expect(report["inputs"]?["count"]?["words"] == .int(5))
        #expect(worker.counters.succeeded == 6)
        #expect(worker.counters.dropped == 0)
    }

    @Test func undecodableMessagesAreDeadLetteredAndTheWorkerCarriesOn() async throws {
        let cluster = try Cluster()
        try await cluster.transport.declare(queues: ["default"])
        try await cluster.transport.publish([OutgoingMessage(body: Array("{\"not\": \"an envelope\"}".utf8)), OutgoingMessage(body: [0x47, 0x54, 1])], to: "default")
        let run = try await cluster.submit("name: p\nstages:\n  - { name: a, task: echo }\n", input: "still works")
        let worker = try cluster.worker()
        let state = try await withWorkerServices([worker]) { try await cluster.waitForEnd(run) }
        #expect(state == .succeeded)
        #expect(try await cluster.store.result(run, NodeID(stage: "a")) == Array("still works".utf8))
        #expect(try await cluster.transport.depth(of: "default.dlq") == 2)
        let dead = DeliveryCollector(try await cluster.transport.consume(queues: ["default.dlq"], credit: 10))
        let reasons = try await dead.wait(for: 2).compactMap { $0.headers[deadLetterReasonHeader] }
        #expect(reasons.contains { $0.contains("bad magic bytes") })
        #expect(reasons.contains { $0.contains("truncated") })
        await dead.stop()
    }

    @Test func retriableFailuresAreRetriedThroughTheCoordinatorThenTheRunFails() async throws {
        let cluster = try Cluster()
        var registry = BuiltinTasks.registry
        let attempts = AttemptCounter()
        registry.register("flaky", kind: .io) { _, context in
            await attempts.increment()
            if context.attempt < 2 { throw GantryError(.timeout, "upstream service timed out") }
            return Array("ok on attempt \(context.attempt)".utf8)
        }
        registry.register("broken", kind: .io) { _, _ in throw GantryError(.taskFailed, "input is corrupt") }
        let flakyRun = try await cluster.submit("name: p\nstages:\n  - { name: a, task: flaky, retry: { max_attempts: 3, initial_backoff: 50ms, jitter: 0 } }\n", registry: registry)
        let brokenRun = try await cluster.submit("name: p\nstages:\n  - { name: a, task: broken, retry: 5 }\n  - { name: b, task: echo, after: [a] }\n", registry: registry)
        let worker = try cluster.worker(registry)
        let (flaky, broken) = try await withWorkerServices([worker, cluster.coordinator()]) {
            (try await cluster.waitForEnd(flakyRun), try await cluster.waitForEnd(brokenRun))
        }
        #expect(flaky == .succeeded)
        #expect(await attempts.value == 2)
        #expect(try await cluster.store.result(flakyRun, NodeID(stage: "a")) == Array("ok on attempt 2".utf8))
        #expect(broken == .failed)
        let status = try await cluster.store.status(brokenRun)
        #expect(status.stages[0].attempt == 1)  // not retriable: one attempt only
        #expect(status.stages[0].error == "input is corrupt")
        #expect(status.stages[1].state == .cancelled)
    }

    @Test func aStageTimeoutCancelsTheTask() async throws {
        let cluster = try Cluster()
        let run = try await cluster.submit("name: p\nstages:\n  - { name: slow, task: sleep, args: { duration: 30s }, timeout: 100ms, retry: 1 }\n")
        let state = try await withWorkerServices([try cluster.worker()]) { try await cluster.waitForEnd(run, timeout: .seconds(10)) }
        #expect(state == .failed)
        #expect(try await cluster.store.status(run).stages[0].error?.contains("timeout of 100ms") == true)
    }

    @Test func aLostWorkersTaskIsFinishedByAnotherAfterItsLeaseExpires() async throws {
        let cluster = try Cluster()
        let run = try await cluster.submit("name: p\nstages:\n  - { name: a, task: echo }\n", input: "payload")
        // A worker that claims the task and then vanishes: its message is taken and never settled.
        let stream = try await cluster.transport.consume(queues: ["default"], credit: 1)
        var iterator = stream.makeAsyncIterator()
        let delivery = try #require(try await iterator.next())
        let envelope = try TaskEnvelope(decoding: delivery.body)
        #expect(try await cluster.store.claim(run, envelope.node, epoch: envelope.epoch, owner: "doomed", lease: .milliseconds(300)) == .claimed(epoch: 1, attempt: 1))
        // The coordinator re-queues after the lease expires; a healthy worker finishes the task.
        let healthy = try cluster.worker()
        let state = try await withWorkerServices([healthy, cluster.coordinator()]) { try await cluster.waitForEnd(run) }
        #expect(state == .succeeded)
        #expect(try await cluster.store.result(run, NodeID(stage: "a")) == Array("payload".utf8))
        let status = try await cluster.store.status(run)
        #expect(status.stages[0].epoch == 2)
        // The doomed worker comes back and tries to commit: refused. One result, ever.
        #expect(try await cluster.store.commit(run, envelope.node, epoch: 1, owner: "doomed", result: Array("late".utf8)) == .stale)
        #expect(try await cluster.store.result(run, NodeID(stage: "a")) == Array("payload".utf8))
        _ = iterator
    }

    @Test func cancellingARunStopsItsRunningTaskAtRenewal() async throws {
        let cluster = try Cluster()
        let run = try await cluster.submit("name: p\nstages:\n  - { name: slow, task: sleep, args: { duration: 60s } }\n")
        let worker = try cluster.worker()
        try await withWorkerServices([worker]) {
            try await redisWaitUntil("the task to start") { try await cluster.store.status(run).stages[0].state == .running }
            #expect(try await cluster.store.cancel(run) == .cancelled)
            try await redisWaitUntil("the worker to stop the task", timeout: .seconds(10)) { worker.counters.inFlight == 0 }
        }
        #expect(try await cluster.store.runState(run) == .cancelled)
        #expect(worker.counters.succeeded == 0)
    }

    @Test func gracefulShutdownFinishesInFlightWork() async throws {
        let cluster = try Cluster()
        let run = try await cluster.submit("name: p\nstages:\n  - { name: a, task: sleep, args: { duration: 500ms } }\n", input: "x")
        let worker = try cluster.worker()
        try await withWorkerServices([worker]) {
            try await redisWaitUntil("the task to start") { try await cluster.store.status(run).stages[0].state == .running }
        }
        // The group was shut down while the task ran: it finished and committed before exit.
        #expect(try await cluster.store.runState(run) == .succeeded)
        #expect(worker.counters.succeeded == 1)
        #expect(try await cluster.store.workers().isEmpty)
    }

    private static func chain(_ stages: Int, last: String = "task: echo") -> String {
        "name: chain\nstages:\n  - { name: s0, task: echo }\n"
            + (1..<stages).map { "  - { name: s\($0), \($0 == stages - 1 ? last : "task: echo"), after: [s\($0 - 1)] }\n" }.joined()
    }

    @Test func aChainRunsHopAfterHopInTheWorkerThatCommittedIt() async throws {
        let cluster = try Cluster()
        let run = try await cluster.submit(Self.chain(10), input: "payload")
        let worker = try cluster.worker()
        let state = try await withWorkerServices([worker]) { try await cluster.waitForEnd(run) }
        #expect(state == .succeeded)
        // Each hop's input is the result its parent committed, handed on without a broker trip.
        #expect(try await cluster.store.result(run, NodeID(stage: "s9")) == Array("payload".utf8))
        #expect(worker.counters.received == 1)
        #expect(worker.counters.continuedLocally == 9)
        #expect(worker.counters.succeeded == 10)
    }

    @Test func withoutLocalContinuationEveryStageTravelsThroughTheBroker() async throws {
        let cluster = try Cluster()
        let run = try await cluster.submit(Self.chain(10), input: "payload")
        let worker = try cluster.worker { $0.localContinuation = false }
        let state = try await withWorkerServices([worker]) { try await cluster.waitForEnd(run) }
        #expect(state == .succeeded)
        #expect(try await cluster.store.result(run, NodeID(stage: "s9")) == Array("payload".utf8))
        #expect(worker.counters.received == 10)
        #expect(worker.counters.continuedLocally == 0)
    }

    @Test func aFanOutKeepsWhatFreeSlotsHoldAndPublishesTheRest() async throws {
        let cluster = try Cluster()
        let run = try await cluster.submit("""
            name: fan
            stages:
              - { name: lines, task: split }
              - { name: hash, task: sha256, after: [lines], map: lines }
              - { name: join, task: echo, after: [hash] }
            """, input: (1...12).map { "line \($0)" }.joined(separator: "\n"))
        let worker = try cluster.worker { $0.concurrency = 4 }
        let state = try await withWorkerServices([worker]) { try await cluster.waitForEnd(run) }
        #expect(state == .succeeded)
        let hashes = try #require(try await cluster.store.upstreamResults(run, stages: ["hash"])["hash"])
        #expect(try JSONValue(parsing: hashes).arrayValue?.count == 12)
        // The root held one of 4 slots when its commit released 12 elements: 3 stayed, 9 were
        // published; the join stays too if a slot is free when the last element commits.
        let counters = worker.counters
        #expect((3...4).contains(counters.continuedLocally))
        #expect(counters.received + counters.continuedLocally == 14)
        #expect(counters.succeeded == 14)
    }

    @Test func aContinuationHandedBackAtShutdownIsPublished() async throws {
        let cluster = try Cluster()
        let run = try await cluster.submit(Self.chain(2, last: "task: sleep, args: { duration: 60s }"), input: "x")
        let worker = try cluster.worker { $0.drainTimeout = .milliseconds(200) }
        try await withWorkerServices([worker]) {
            try await redisWaitUntil("the second stage to start here") {
                try await cluster.store.status(run).stages[1].state == .running && worker.counters.continuedLocally == 1
            }
        }
        // The drain timed out: the lease was released and, as no message carried the stage, one was published.
        let status = try await cluster.store.status(run)
        #expect(status.stages[1].state == .queued)
        #expect(worker.counters.handedBack == 1)
        let stream = try await cluster.transport.consume(queues: ["default"], credit: 1)
        var iterator = stream.makeAsyncIterator()
        let envelope = try TaskEnvelope(decoding: try #require(try await iterator.next()).body)
        #expect(envelope.node == NodeID(stage: "s1"))
        #expect(envelope.epoch == status.stages[1].epoch)
        #expect(try await cluster.store.claim(run, envelope.node, epoch: envelope.epoch, owner: "next", lease: .seconds(5)) == .claimed(epoch: envelope.epoch, attempt: 1))
    }

    @Test func onlyOneCoordinatorLeadsAndAStandbyTakesOver() async throws {
        let cluster = try Cluster()
        let first = cluster.coordinator()
        let second = cluster.coordinator()
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let firstGroup = ServiceGroup(services: [first], logger: logger)
        try await withWorkerServices([second]) {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await firstGroup.run() }
                try await redisWaitUntil("a leader") { first.isLeader || second.isLeader }
                #expect(first.isLeader != second.isLeader)
                if first.isLeader {
                    // The leader stops (resigning its lease); the standby takes over.
                    await firstGroup.triggerGracefulShutdown()
                    try await tasks.waitForAll()
                    try await redisWaitUntil("the standby to lead", timeout: .seconds(10)) { second.isLeader }
                } else {
                    await firstGroup.triggerGracefulShutdown()
                    try await tasks.waitForAll()
                    #expect(second.isLeader)
                }
            }
        }
    }
}

actor AttemptCounter {
    private(set) var value = 0
    func increment() { value += 1 }
}
