import GantryCore

/// Runs a whole pipeline inside the current process, with no broker and no Redis.
///
/// For trying a pipeline out (`gantry run --local`) and for the smoke check of `ops/demo`: it
/// honours dependencies, fan-out (`map`) with `max_parallel`, stage timeouts, retries with
/// the stage's backoff, and failure policies, using the same input assembly as the cluster.
public struct LocalPipelineRunner: Sendable {
    /// What happened to one stage.
    public enum StageOutcome: Sendable, Equatable {
        case succeeded(result: [UInt8], attempts: Int, elapsed: Duration)
        case failed(error: String, attempts: Int)
        case skipped(reason: String)
    }

    /// The outcome of every stage, by name.
    public struct Report: Sendable {
        public var outcomes: [StageName: StageOutcome]
        public var elapsed: Duration
        /// Whether every stage succeeded.
        public var succeeded: Bool {
            outcomes.values.allSatisfy { if case .succeeded = $0 { return true } else { return false } }
        }
    }

    private let registry: TaskRegistry

    /// Creates a runner that looks tasks up in `registry`.
    public init(registry: TaskRegistry) {
        self.registry = registry
    }

    /// Runs `plan` with `input` as the run input, calling `progress` as each stage ends.
    public func run(
        _ plan: PipelinePlan, input: [UInt8], progress: @Sendable (StageName, StageOutcome) -> Void = { _, _ in }
    ) async throws -> Report {
        let runID = RunID.make()
        let clock = ContinuousClock()
        let started = clock.now
        var outcomes: [StageName: StageOutcome] = [:]
        var results: [StageName: [UInt8]] = [:]
        var runFailed = false
        // Stages run in waves: everything whose dependencies are settled runs concurrently.
        var pending = Set(plan.topologicalOrder)
        while !pending.isEmpty {
            let wave = pending.filter { position in plan.dependencies[position].allSatisfy { outcomes[plan[$0].name] != nil } }
            pending.subtract(wave)
            let outcomesSoFar = outcomes
            let resultsSoFar = results
            let failedSoFar = runFailed
            let finished = try await withThrowingTaskGroup(of: (StageName, StageOutcome).self) { group in
                for position in wave {
                    let stage = plan[position]
                    group.addTask {
                        if failedSoFar { return (stage.name, .skipped(reason: "run failed")) }
                        if let blocker = stage.after.first(where: { if case .succeeded = outcomesSoFar[$0] { return false } else { return true } }) {
                            return (stage.name, .skipped(reason: "dependency '\(blocker)' did not succeed"))
                        }
                        return (stage.name, await runStage(stage, runID: runID, runInput: input, upstream: resultsSoFar))
                    }
                }
                var collected: [(StageName, StageOutcome)] = []
                for try await item in group { collected.append(item) }
                return collected
            }
            for (name, outcome) in finished {
                outcomes[name] = outcome
                progress(name, outcome)
                switch outcome {
                case .succeeded(let result, _, _): results[name] = result
                case .failed: if plan[name]?.onFailure == .failRun { runFailed = true }
                case .skipped: break
                }
            }
        }
        return Report(outcomes: outcomes, elapsed: clock.now - started)
    }

    private func runStage(_ stage: StageSpec, runID: RunID, runInput: [UInt8], upstream: [StageName: [UInt8]]) async -> StageOutcome {
        let clock = ContinuousClock()
        let started = clock.now
        guard let definition = registry[stage.task] else {
            return .failed(error: "unknown task '\(stage.task)'", attempts: 0)
        }
        let context = TaskContext(runID: runID, node: NodeID(stage: stage.name), args: stage.args, upstream: upstream)
        guard let map = stage.map else {
            return await attempt(definition, stage: stage, context: context, input: { try StageInput.assemble(stage: stage, index: nil, runInput: runInput, upstream: upstream) }, started: started)
        }
        let count = (try? JSONValue(parsing: upstream[map] ?? []).arrayValue?.count) ?? 0
        let limit = stage.maxParallel ?? count
        var elementResults = [[UInt8]](repeating: [], count: count)
        var totalAttempts = 0
        var failure: String?
        await withTaskGroup(of: (Int, StageOutcome).self) { group in
            var next = 0
            func launch() {
                let index = next
                next += 1
                var elementContext = context
                elementContext.node = NodeID(stage: stage.name, index: index)
                group.addTask {
                    (index, await attempt(definition, stage: stage, context: elementContext, input: { try StageInput.assemble(stage: stage, index: index, runInput: runInput, upstream: upstream) }, started: started))
                }
            }
            while next < count && next < max(1, limit) { launch() }
            for await (index, outcome) in group {
                switch outcome {
                case .succeeded(let result, let attempts, _):
                    elementResults[index] = result
                    totalAttempts += attempts
                case .failed(let error, let attempts):
                    totalAttempts += attempts
                    failure = failure ?? "element \(index): \(error)"
                case .skipped:
                    break
                }
                if next < count { launch() }
            }
        }
        if let failure { return .failed(error: failure, attempts: totalAttempts) }
        return .succeeded(result: StageInput.gather(elementResults), attempts: totalAttempts, elapsed: clock.now - started)
    }

    private func attempt(
        _ definition: TaskDefinition, stage: StageSpec, context: TaskContext, input: () throws -> [UInt8], started: ContinuousClock.Instant
    ) async -> StageOutcome {
        let payload: [UInt8]
        do {
            payload = try input()
        } catch {
            return .failed(error: "\(error)", attempts: 0)
        }
        var context = context
        var attemptNumber = 1
        while true {
            context.attempt = UInt32(attemptNumber)
            do {
                let result = try await withTimeout(stage.timeout) { [context] in try await definition.function(payload, context) }
                return .succeeded(result: result, attempts: attemptNumber, elapsed: ContinuousClock().now - started)
            } catch {
                let retriable = (error as? GantryError)?.isRetriable ?? false
                guard retriable, stage.retry.allowsRetry(afterAttempt: attemptNumber) else {
                    return .failed(error: "\(error)", attempts: attemptNumber)
                }
                try? await Task.sleep(for: stage.retry.backoff(afterAttempt: attemptNumber))
                attemptNumber += 1
            }
        }
    }
}

/// Runs `body`, cancelling it and throwing a retriable `.timeout` error if it takes longer than `limit`.
func withTimeout<T: Sendable>(_ limit: Duration?, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    guard let limit else { return try await body() }
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw GantryError(.timeout, "task did not finish within its timeout of \(limit.shortDescription)")
        }
        return value
    }
}
