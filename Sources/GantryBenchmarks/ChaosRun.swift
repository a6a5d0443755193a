import Foundation
import GantryCore
import GantryRuntime
import GantryStore
import Synchronization

/// One fault-injection run: starts the processes, submits the jobs, injects the scenario's
/// fault while they run, waits until every job's run ended (or the time limit), and checks.
final class ChaosRun: Sendable {
    let command: ChaosCommand
    let cluster: BenchCluster
    let servers: PrivateServerSet
    let directory: URL
    /// Each job's run, once its submission succeeded.
    let runIDs: Mutex<[RunID?]>
    /// Jobs whose run has ended.
    let ended = Atomic<Int>(0)
    /// Set once the wait is over: fault injectors stop and restore what they broke.
    let finished = Atomic<Bool>(false)
    let cgroup = LockedBox<MemoryCgroup?>(nil)

    init(command: ChaosCommand, cluster: BenchCluster, servers: PrivateServerSet, directory: URL) {
        self.command = command
        self.cluster = cluster
        self.servers = servers
        self.directory = directory
        runIDs = Mutex([RunID?](repeating: nil, count: command.jobCount))
    }

    var scenario: ChaosScenario { command.scenario }
    var jobCount: Int { command.jobCount }

    /// The fraction of jobs whose run ended.
    var progress: Double { Double(ended.load(ordering: .relaxed)) / Double(max(1, jobCount)) }

    /// Sleeps until `progress` reaches `fraction` (or the run finished); false if it finished first.
    func waitForProgress(_ fraction: Double) async -> Bool {
        while progress < fraction {
            if finished.load(ordering: .relaxed) { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return !finished.load(ordering: .relaxed)
    }

    // MARK: The run

    func execute() async throws -> ChaosOutcome {
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + .milliseconds(Int64(command.timeLimit * 1000))
        try await startProcesses()
        try await cluster.waitForWorkers(command.workerCount, timeout: .seconds(60))
        // One job through the whole path first, so that consumer-group joins (3 s on the Kafka
        // dev broker) are over before the jobs and the faults start.
        let warmUp = try await cluster.runtime.dispatcher.submit(try plan(for: -1), input: [])
        guard try await cluster.waitForEnd(warmUp.runID, timeout: .seconds(60)) == .succeeded else {
            throw GantryError(.taskFailed, "the warm-up job \(warmUp.runID) did not succeed; see the logs in \(directory.path)")
        }

        let faults = Task { await self.injectFaults(deadline: deadline) }
        let jobsStart = clock.now
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.submitAll(deadline: deadline) }
            group.addTask { await self.watchProgress(deadline: deadline) }
            await group.waitForAll()
        }
        let wall = (clock.now - jobsStart).seconds
        finished.store(true, ordering: .relaxed)
        let injected = await faults.value
        // Late writers (a resumed worker, a redelivered message) get a moment to try their
        // duplicate commits, which the check must then see refused.
        try await Task.sleep(for: .seconds(2))
        var tally = try await audit()
        var extra = injected.figures
        var passed = true
        var notes = injected.problems
        if scenario == .flood {
            let check = try await FloodInjector.checkDeadLetters(run: self, expected: injected.expectedBrokerDeadLetters)
            extra["injected"] = .int(Int64(injected.expectedBrokerDeadLetters))
            extra["broker_dead_lettered"] = .int(Int64(check.withReason))
            extra["broker_dead_letter_reason_sample"] = .string(check.reasons.prefix(3).joined(separator: " / "))
            tally.lost += max(0, injected.expectedBrokerDeadLetters - check.withReason)
            tally.deadLettered += check.withReason
            tally.deadLetterReasons += check.reasons
            if check.withReason != injected.expectedBrokerDeadLetters || check.total != injected.expectedBrokerDeadLetters {
                passed = false
                notes.append("\(check.total) messages in the broker's dead-letter queue (\(check.withReason) with a reason), \(injected.expectedBrokerDeadLetters) injected")
            }
        }
        if let expected = injected.expectedStoreDeadLetters, tally.deadLettered != expected {
            passed = false
            notes.append("\(tally.deadLettered) jobs dead-lettered, \(expected) expected")
        }
        if injected.count == 0 {
            passed = false
            notes.append("no fault was injected before the jobs finished: raise --tasks")
        }
        let activeLeft = (try? await cluster.store.activeRuns(limit: 100_000).count) ?? -1
        passed = passed && tally.lost == 0 && tally.stuck == 0 && tally.duplicatesCommitted == 0 && tally.notSubmitted == 0 && activeLeft == 0
        if activeLeft != 0 { notes.append("\(activeLeft) runs left in the active index") }

        var report = BenchReport(scenario: "chaos-\(scenario.rawValue)")
        report.conditions["kind"] = "chaos"
        report.conditions["broker"] = .string(command.broker)
        report.conditions["workers"] = .int(Int64(command.workerCount))
        report.conditions["worker_mode"] = "process"
        report.conditions["concurrency"] = .int(Int64(command.concurrency))
        report.conditions["n"] = .int(Int64(jobCount))
        report.conditions["task"] = .string(scenario == .oom ? "sha256 (cpu) + allocate" : "sleep \(command.taskMs)ms")
        report.conditions["time_limit_s"] = .double(command.timeLimit)
        report.figure("submitted", tally.submitted)
        report.figure("completed", tally.completed)
        report.figure("duplicates_refused", tally.duplicatesRefused)
        report.figure("duplicates_committed", tally.duplicatesCommitted)
        report.figure("dead_lettered", tally.deadLettered)
        report.figure("lost", tally.lost)
        report.figure("stuck", tally.stuck)
        report.figure("not_submitted", tally.notSubmitted)
        report.figure("active_runs_left", activeLeft)
        report.figure("wall_s", wall)
        report.figure("faults", .string(injected.description))
        report.figure("passed", .bool(passed))
        if !tally.deadLetterReasons.isEmpty && scenario != .flood {
            report.figure("dead_letter_reason_sample", .string(tally.deadLetterReasons.first ?? ""))
        }
        if !notes.isEmpty { report.figure("problems", .string(notes.joined(separator: "; "))) }
        for (key, value) in extra { report.figure(key, value) }
        let human = "chaos \(scenario.rawValue) over \(command.broker), \(command.workerCount) worker(s): \(injected.description) | submitted \(tally.submitted), "
            + "completed \(tally.completed), duplicates refused \(tally.duplicatesRefused), duplicates committed \(tally.duplicatesCommitted), "
            + "dead-lettered \(tally.deadLettered), lost \(tally.lost), stuck \(tally.stuck) in \(String(format: "%.1f", wall)) s — "
            + (passed ? "passed" : "FAILED: " + notes.joined(separator: "; "))
        return ChaosOutcome(report: report, human: human, passed: passed)
    }

    // MARK: Processes

    private func startProcesses() async throws {
        for _ in 0..<(scenario == .killCoordinator ? 2 : 1) { try cluster.startCoordinator() }
        for _ in 0..<command.workerCount { try startWorker() }
    }

    /// Starts one worker of the scenario's kind: the real gantry-worker, or for `oom`
    /// gantry-bench's own worker (it has the `allocate` task) with its children's memory limit.
    @discardableResult
    func startWorker() throws -> ChildProcess {
        if scenario == .oom {
            let limit = cgroup.value ?? MemoryCgroup.make(name: "gantry-chaos-\(cluster.tag)", limitBytes: command.memoryLimitMb << 20)
            cgroup.value = limit
            var environment: [String: String] = [:]
            if let limit {
                environment[BenchTasks.childCgroupVariable] = limit.path
            } else {
                environment[BenchTasks.childAddressLimitVariable] = String(max(1 << 30, command.memoryLimitMb << 20))
            }
            return try cluster.startWorker(executable: Executable.path("gantry-bench"), arguments: ["chaos-worker"], environment: environment)
        }
        return try cluster.startWorker()
    }

    /// Removes what the faults set up (the memory cgroup), once the processes stopped.
    func cleanUpFaults() async {
        await cgroup.value?.remove()
    }

    // MARK: Jobs

    /// The job with index `index`: a short `sleep` (io), or for `oom` a small sha256 (cpu)
    /// with a few `allocate` jobs spread among them.
    func plan(for index: Int) throws -> PipelinePlan {
        if scenario == .oom {
            let stride = max(1, jobCount / max(1, command.allocations))
            if index % stride == stride / 2 && index / stride < command.allocations {
                return try BenchCluster.singleTaskPlan("allocate", args: .object(["bytes": .int(Int64(1) << 30)]), kind: .cpu,
                                                       retry: RetryPolicy(maxAttempts: 2, initialBackoff: .milliseconds(100)), timeout: .seconds(60))
            }
            return try BenchCluster.singleTaskPlan("sha256", args: .object(["rounds": 2000]), kind: .cpu)
        }
        return try BenchCluster.singleTaskPlan("sleep", args: .object(["duration": .string("\(command.taskMs)ms")]))
    }

    /// Submits every job from 32 concurrent callers, each with an idempotency key so that a
    /// submission retried after an error (Redis or the broker down) is still one run.
    private func submitAll(deadline: ContinuousClock.Instant) async {
        let next = SharedCounter()
        let plans = (0..<jobCount).map { try? plan(for: $0) }
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<32 {
                group.addTask {
                    while case let index = next.next(), index < self.jobCount {
                        guard let plan = plans[index] else { continue }
                        var delay = Duration.milliseconds(50)
                        while ContinuousClock.now < deadline {
                            do {
                                let created = try await self.cluster.runtime.dispatcher.submit(plan, input: [], idempotencyKey: "\(self.cluster.tag)-job-\(index)")
                                self.runIDs.withLock { $0[index] = created.runID }
                                break
                            } catch {
                                try? await Task.sleep(for: delay)
                                delay = min(delay * 2, .seconds(1))
                            }
                        }
                    }
                }
            }
        }
    }

    /// Reads the state of every run not known to have ended, every 50 ms, until all
    /// jobs were submitted and ended, or the deadline.
    private func watchProgress(deadline: ContinuousClock.Instant) async {
        var done = Set<Int>()
        while ContinuousClock.now < deadline {
            let known = runIDs.withLock { $0 }
            let pending = known.enumerated().filter { !done.contains($0.offset) && $0.element != nil }
            if !pending.isEmpty, let states = try? await cluster.store.runStates(pending.map { $0.element! }) {
                for (entry, state) in zip(pending, states) where state?.isFinal == true { done.insert(entry.offset) }
                ended.store(done.count, ordering: .relaxed)
            }
            if done.count == jobCount { return }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    // MARK: The check

    /// Reads every job's outcome from Redis.
    private func audit() async throws -> ChaosTally {
        let known = runIDs.withLock { $0 }
        var tally = ChaosTally()
        tally.notSubmitted = known.filter { $0 == nil }.count
        let runs = known.compactMap { $0 }
        tally.submitted = runs.count
        let deadline = ContinuousClock.now + .seconds(60)
        // Redis may still be coming back (restart-redis): retry the reads for a while.
        let audits = try await cluster.store.client.retrying(until: deadline) {
            try await cluster.store.audit(runs.map { (runID: $0, node: NodeID(stage: "job")) })
        }
        let letters = try await cluster.store.client.retrying(until: deadline) { try await cluster.store.deadLetters() }
        var reasons: [RunID: String] = [:]
        for letter in letters where !letter.reason.isEmpty { reasons[letter.runID] = letter.reason }
        for audit in audits {
            tally.duplicatesRefused += audit.staleRefused
            if audit.commitsRecorded > 1 { tally.duplicatesCommitted += audit.commitsRecorded - 1 }
            if audit.runState == .succeeded && audit.nodeState == .succeeded && audit.hasResult && audit.commitsRecorded >= 1 {
                tally.completed += 1
            } else if audit.deadLettered, audit.error != nil, let reason = reasons[audit.runID] {
                tally.deadLettered += 1
                if tally.deadLetterReasons.count < 5 { tally.deadLetterReasons.append(reason) }
            } else {
                tally.lost += 1
                if audit.runState == .running { tally.stuck += 1 }
            }
        }
        tally.lost += tally.notSubmitted
        return tally
    }
}
