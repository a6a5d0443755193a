import Testing
import GantryCore
import GantryTasks
import GantryWorker

@Suite struct BuiltinTaskTests {
    let registry = BuiltinTasks.registry
    let context = TaskContext(runID: RunID.make(), node: NodeID(stage: "s"))

    @Test func sha256HashesTheInput() async throws {
        let result = try await registry.require("sha256").function(Array("abc".utf8), context)
        #expect(result == JSONValue.string("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad").jsonBytes)
        var twice = context
        twice.args = .object(["rounds": .int(2)])
        let chained = try await registry.require("sha256").function(Array("abc".utf8), twice)
        #expect(chained == JSONValue.string(SHA256.hash(SHA256.hash(Array("abc".utf8))).hexString).jsonBytes)
    }

    @Test func wordcountCountsWordsLinesAndTopWords() async throws {
        var ctx = context
        ctx.args = .object(["top": .int(2)])
        let result = try await registry.require("wordcount").function(Array("The cat saw the dog.\nThe END".utf8), ctx)
        let value = try JSONValue(parsing: result)
        #expect(value["words"] == .int(7))
        #expect(value["lines"] == .int(2))
        #expect(value["top"] == .array([.array([.string("the"), .int(3)]), .array([.string("cat"), .int(1)])]))
    }

    @Test func splitChunksLines() async throws {
        var ctx = context
        ctx.args = .object(["lines": .int(2)])
        let result = try await registry.require("split").function(Array("a\nb\n\nc\nd\ne".utf8), ctx)
        #expect(try JSONValue(parsing: result) == .array([.string("a\nb"), .string("c\nd"), .string("e")]))
        ctx.args = .object(["lines": .int(0)])
        await #expect(throws: GantryError.self) { try await registry.require("split").function([], ctx) }
    }

    @Test func sleepWaitsAndRejectsBadDurations() async throws {
        var ctx = context
        ctx.args = .object(["duration": .string("30ms")])
        let clock = ContinuousClock()
        let start = clock.now
        #expect(try await registry.require("sleep").function([1, 2], ctx) == [1, 2])
        #expect(clock.now - start >= .milliseconds(30))
        ctx.args = .object(["duration": .string("forever")])
        await #expect(throws: GantryError.self) { try await registry.require("sleep").function([], ctx) }
    }

    @Test func unknownTaskNamesWhatIsKnown() throws {
        let error = try #require(throws: GantryError.self) { try registry.require("sha265") }
        #expect(error.code == .unknownTask)
        #expect(error.message.contains("did you mean 'sha256'"))
    }
}

@Suite struct LocalPipelineRunnerTests {
    private func plan(_ yaml: String, registry: TaskRegistry = BuiltinTasks.registry) throws -> PipelinePlan {
        try PipelinePlan(PipelineSpec.parse(yaml: yaml, knownTasks: registry.names))
    }

    @Test func runsAFanOutAndFanIn() async throws {
        let plan = try plan("""
            name: p
            stages:
              - { name: chunks, task: split, kind: cpu }
              - { name: hash, task: sha256, kind: cpu, after: [chunks], map: chunks, max_parallel: 2 }
              - { name: joined, task: echo, after: [hash] }
            """)
        let report = try await LocalPipelineRunner(registry: BuiltinTasks.registry).run(plan, input: Array("x\ny\nz".utf8))
        #expect(report.succeeded)
        guard case .succeeded(let result, let attempts, _) = report.outcomes["joined"] else {
            Issue.record("joined did not succeed: \(String(describing: report.outcomes["joined"]))")
            return
        }
        #expect(attempts == 1)
        let expected = ["x", "y", "z"].map { JSONValue.string(BuiltinTasks.sha256(Array($0.utf8))) }
        #expect(try JSONValue(parsing: result) == .array(expected))
    }

    @Test func retriesRetriableFailuresThenSkipsDependents() async throws {
        var registry = BuiltinTasks.registry
        let counter = AttemptCounter()
        registry.register("flaky", kind: .io) { input, context in
            await counter.increment()
            if context.attempt < 3 { throw GantryError(.timeout, "not yet") }
            return input
        }
        registry.register("broken", kind: .io) { _, _ in throw GantryError(.taskFailed, "always broken") }
        let plan = try plan("""
            name: p
            defaults: { retry: { max_attempts: 3, initial_backoff: 1ms, max_backoff: 2ms } }
            stages:
              - { name: flaky, task: flaky }
              - { name: broken, task: broken, on_failure: continue }
              - { name: after-broken, task: echo, after: [broken] }
              - { name: after-flaky, task: echo, after: [flaky] }
            """, registry: registry)
        let report = try await LocalPipelineRunner(registry: registry).run(plan, input: [7])
        #expect(await counter.value == 3)
        #expect(report.outcomes["after-flaky"] == .succeeded(result: [7], attempts: 1, elapsed: report.outcomes["after-flaky"].flatMap { if case .succeeded(_, _, let e) = $0 { e } else { nil } } ?? .zero))
        guard case .failed(let error, let attempts) = report.outcomes["broken"] else {
            Issue.record("broken should fail")
            return
        }
        #expect(attempts == 1)  // not retriable: no second attempt
        #expect(error.contains("always broken"))
        #expect(report.outcomes["after-broken"] == .skipped(reason: "dependency 'broken' did not succeed"))
        #expect(!report.succeeded)
    }

    @Test func stageTimeoutCancelsTheTask() async throws {
        let plan = try plan("""
            name: p
            stages:
              - { name: slow, task: sleep, args: { duration: 10s }, timeout: 50ms, retry: 1 }
            """)
        let report = try await LocalPipelineRunner(registry: BuiltinTasks.registry).run(plan, input: [])
        guard case .failed(let error, _) = report.outcomes["slow"] else {
            Issue.record("slow should time out")
            return
        }
        #expect(error.contains("timeout of 50ms"))
        #expect(report.elapsed < .seconds(9))  // well short of the 10 s sleep: it was cancelled
    }
}

actor AttemptCounter {
    private(set) var value = 0
    func increment() { value += 1 }
}
