import GantryCore
import Logging
import Subprocess
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

extension ChildProcessPool {
    /// Why a child's life ended.
    enum ChildEnding: Sendable {
        /// It died on its own: a signal (kill -9, OOM killer, crash) or an exit.
        case crashed
        /// It broke the protocol or never said hello; it was stopped.
        case broken(String)
        /// The pool retired it (task count or memory); it was stopped between tasks.
        case recycled(String)
        /// Its task ran past its timeout; it was stopped.
        case timedOut(Duration)
        /// The caller of its task was cancelled; it was stopped.
        case cancelled
        /// The pool is shutting down; it was stopped.
        case shutdown
    }

    /// What serving one child produced.
    struct ChildLife: Sendable {
        var ending = ChildEnding.crashed
        var saidHello = false
        var tasksServed = 0
        var lastOutputLine: String?
    }

    /// One spawn of a child, as the supervisor sees it after the child was reaped.
    private struct ChildRun {
        var life: ChildLife?
        var pid: Int32?
        /// "died with signal 9", "exited with status 3".
        var exit: String?
        var spawnError: (any Error)?
    }

    private typealias ChildExecution = Execution<CustomWriteInput, SequenceOutput, SequenceOutput>

    // MARK: Supervision

    /// Keeps one child running in `slot` until shutdown: spawns it, serves tasks through it, fails
    /// the task it died on, and replaces it (after a backoff if it crashed).
    func supervise(slot: Int) async {
        let inbox = state.withLock { $0.inbox(of: slot) }
        var log = logger
        log[metadataKey: "slot"] = .stringConvertible(slot)
        var backoff = configuration.initialRespawnBackoff
        var generation: UInt64 = 0
        while !Task.isCancelled, !state.withLock({ $0.isShuttingDown }) {
            generation += 1
            let run = await runChild(slot: slot, generation: generation, inbox: inbox, log: log)
            let life = run.life
            // Counters first, so that a caller who sees the failure also sees it counted.
            let (abandoned, alive) = state.withLock { state in
                state.childEnded(slot, Self.lifeEnd(life?.ending))
                return (state.abandon(slot), state.counters.alive)
            }
            if run.pid != nil { Self.recordEnd(life?.ending, alive: alive) }
            if let job = abandoned {
                job.continuation.resume(throwing: failure(life?.ending ?? .crashed, task: job.task, pid: run.pid, exit: run.exit, lastLine: life?.lastOutputLine))
            }

            let child = run.pid.map { "child process \($0)" } ?? "a child process"
            var startFailure: String?
            switch life?.ending {
            case nil:
                startFailure = "cannot start a child process from '\(configuration.executablePath)': \(run.spawnError.map { "\($0)" } ?? "unknown error")"
            case .crashed?, .broken?:
                if life?.saidHello == false {
                    let why = if case .broken(let reason)? = life?.ending { reason } else { run.exit ?? "ended" }
                    startFailure = "\(child) from '\(configuration.executablePath)' failed before it was ready: \(why); does that program call ChildProcessMain.run when its first argument is '\(ChildProcessMain.argument)'?"
                }
            case .recycled(let reason)?:
                log.info("recycling \(child): \(reason)")
            case .timedOut?, .cancelled?:
                log.info("replacing \(child), which was stopped and \(run.exit ?? "ended")")
            case .shutdown?:
                log.debug("\(child) stopped for shutdown")
            }
            if (life?.tasksServed ?? 0) > 0 { backoff = configuration.initialRespawnBackoff }
            guard Self.needsBackoff(life?.ending) else { continue }
            if state.withLock({ $0.isShuttingDown }) { return }
            if let startFailure {
                log.error("\(startFailure); retrying in \(backoff.shortDescription)")
                perform(state.withLock { $0.childCouldNotStart(GantryError(.configuration, startFailure, isRetriable: true)) })
            } else {
                log.warning("\(child) \(run.exit ?? "ended"); starting another in \(backoff.shortDescription)")
            }
            if await pause(backoff, inbox: inbox) { return }
            backoff = min(backoff * 2, configuration.maxRespawnBackoff)
        }
    }

    private static func needsBackoff(_ ending: ChildEnding?) -> Bool {
        switch ending {
        case nil, .crashed?, .broken?: true
        case .recycled?, .timedOut?, .cancelled?, .shutdown?: false
        }
    }

    private static func recordEnd(_ ending: ChildEnding?, alive: Int) {
        PoolMetrics.alive(alive)
        switch lifeEnd(ending) {
        case .crashed: PoolMetrics.respawned()
        case .recycled: PoolMetrics.recycled()
        case .stopped: PoolMetrics.killed()
        case .shutdown: break
        }
    }

    private static func lifeEnd(_ ending: ChildEnding?) -> StateMachine.LifeEnd {
        switch ending {
        case nil, .crashed?, .broken?: .crashed
        case .recycled?: .recycled
        case .timedOut?, .cancelled?: .stopped
        case .shutdown?: .shutdown
        }
    }

    /// Waits `duration` unless shutdown comes first; true on shutdown.
    private func pause(_ duration: Duration, inbox: SlotInbox) async -> Bool {
        let token = makeTimerToken()
        return await inbox.withTimer(duration, token: token) {
            while true {
                switch await inbox.next() {
                case .timer(token): return false
                case .shutdown: return true
                default: continue
                }
            }
        }
    }

    /// The error for the task a child was running when its life ended.
    private func failure(_ ending: ChildEnding, task: String, pid: Int32?, exit: String?, lastLine: String?) -> GantryError {
        let child = pid.map { "child process \($0)" } ?? "the child process"
        let how = exit ?? "ended"
        switch ending {
        case .crashed:
            let said = lastLine.map { "; its last output was: \($0)" } ?? ""
            return GantryError(.taskFailed, "\(child) \(how) while running \(task)\(said)", isRetriable: true)
        case .broken(let why):
            return GantryError(.protocolError, "\(child) was stopped while running \(task) because \(why)", isRetriable: true)
        case .timedOut(let limit):
            return GantryError(.timeout, "task '\(task)' did not finish within its timeout of \(limit.shortDescription); \(child) was stopped and \(how)", isRetriable: true)
        case .cancelled:
            return GantryError(.cancelled, "task '\(task)' was cancelled; \(child) was stopped and \(how)")
        case .shutdown:
            return GantryError(.closed, "the process pool shut down while \(child) was running \(task); it was stopped and \(how)", isRetriable: true)
        case .recycled:
            return GantryError(.taskFailed, "\(child) was retired while running \(task)", isRetriable: true)
        }
    }

    // MARK: One child

    /// Spawns a child and serves tasks through it until it ends; returns after it was reaped.
    private func runChild(slot: Int, generation: UInt64, inbox: SlotInbox, log: Logger) async -> ChildRun {
        var options = PlatformOptions()
        // Its own process group: Ctrl-C on the worker's terminal is for the worker, which drains
        // gracefully, and stopping the group also stops commands a task started.
        options.processGroupID = 0
        // Should this task be cancelled while the child runs, Subprocess stops it the same way.
        options.teardownSequence = [teardownStep]
        var run = ChildRun()
        do {
            // Subprocess spawns with an empty signal mask and default dispositions, whatever this
            // cooperative-pool thread has blocked, so SIGTERM reaches the child.
            let result = try await Subprocess.run(
                .path(.init(configuration.executablePath)),
                arguments: Arguments(configuration.arguments),
                platformOptions: options,
                input: .inputWriter,
                output: .sequence,
                error: .sequence
            ) { execution in
                await self.serve(execution, slot: slot, generation: generation, inbox: inbox, log: log)
            }
            run.pid = result.processIdentifier.value
            run.life = result.closureResult
            switch result.terminationStatus {
            case .exited(let code): run.exit = "exited with status \(code)"
            case .signaled(let signal): run.exit = "died with signal \(signal)"
            }
        } catch {
            run.spawnError = error
        }
        return run
    }

    /// SIGTERM (to the child's process group), then SIGKILL after the grace.
    private var teardownStep: TeardownStep {
        .gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: configuration.terminationGrace)
    }

    /// Drains the child's stdout and stderr while the conversation runs, then makes sure the child
    /// is gone before returning, so that `Subprocess.run` can reap it at once.
    private func serve(_ execution: ChildExecution, slot: Int, generation: UInt64, inbox: SlotInbox, log: Logger) async -> ChildLife {
        let pid = execution.processIdentifier.value
        var log = log
        log[metadataKey: "child_pid"] = .stringConvertible(pid)
        let alive = state.withLock { $0.childStarted(slot, pid: pid); return $0.counters.alive }
        PoolMetrics.childStarted()
        PoolMetrics.alive(alive)
        let tail = OutputTail()
        let maxFrameBytes = configuration.maxFrameBytes
        return await withTaskGroup(of: Void.self) { group in
            group.addTask { await Self.drainFrames(execution.standardOutput, generation: generation, inbox: inbox, maxFrameBytes: maxFrameBytes) }
            group.addTask { [log] in await Self.drainLines(execution.standardError, log: log, tail: tail) }
            var life = await converse(execution, pid: pid, slot: slot, generation: generation, inbox: inbox, log: log)
            perform(state.withLock { $0.slotUnavailable(slot) })
            // Whatever happened, this child is done. An idle one exits on EOF; the teardown covers
            // the rest (and commands its tasks started) and returns once the child is gone.
            try? await execution.standardInputWriter.finish()
            await execution.teardown(using: [teardownStep])
            await group.waitForAll()
            life.lastOutputLine = tail.last
            return life
        }
    }

    /// The child's hello, then one task after another until something ends the child.
    private func converse(_ execution: ChildExecution, pid: Int32, slot: Int, generation: UInt64, inbox: SlotInbox, log: Logger) async -> ChildLife {
        var life = ChildLife()
        if let ending = await awaitHello(generation: generation, inbox: inbox) {
            life.ending = ending
            return life
        }
        life.saidHello = true
        log.debug("child process ready")
        while true {
            let job: Job
            switch await nextJob(slot: slot, generation: generation, inbox: inbox) {
            case .job(let next): job = next
            case .end(let ending):
                life.ending = ending
                return life
            }
            if let ending = await runJob(job, execution: execution, pid: pid, slot: slot, generation: generation, inbox: inbox) {
                life.ending = ending
                return life
            }
            life.tasksServed += 1
            if life.tasksServed >= configuration.maxTasksPerChild {
                life.ending = .recycled("it ran \(life.tasksServed) tasks (pool.max_tasks_per_child)")
                return life
            }
            if let limit = configuration.rssLimitBytes, let resident = ProcessMemory.residentBytes(of: pid), resident > limit {
                life.ending = .recycled("its resident memory of \(resident) bytes is above pool.rss_limit_bytes (\(limit))")
                return life
            }
        }
    }

    /// `nil` once the child said hello; otherwise why it will not.
    private func awaitHello(generation: UInt64, inbox: SlotInbox) async -> ChildEnding? {
        let token = makeTimerToken()
        let limit = configuration.startupTimeout
        return await inbox.withTimer(limit, token: token) {
            while true {
                switch await inbox.next() {
                case .frame(generation, let payload):
                    if case .hello(_, PoolWire.version)? = try? ChildReply(decoding: payload) { return nil }
                    return .broken("its first frame was not a hello of pool protocol version \(PoolWire.version)")
                case .outputClosed(generation, let problem):
                    return problem.map { .broken($0) } ?? .crashed
                case .inputFailed(generation):
                    return .crashed
                case .timer(token):
                    return .broken("it did not say hello within \(limit.shortDescription) (pool.startup_timeout)")
                case .shutdown:
                    return .shutdown
                default:
                    // Leftovers of an earlier child, or work the slot cannot take before it is ready.
                    continue
                }
            }
        }
    }

    private enum NextJob {
        case job(Job)
        case end(ChildEnding)
    }

    /// The next call for this child, waiting idle for one if none is queued.
    private func nextJob(slot: Int, generation: UInt64, inbox: SlotInbox) async -> NextJob {
        if let job = state.withLock({ $0.slotReady(slot) }) { return .job(job) }
        while true {
            switch await inbox.next() {
            case .work:
                let job = state.withLock { state -> Job? in
                    if let assigned = state.takeAssigned(slot) { return assigned }
                    // The assigned call was cancelled meanwhile: back to idle.
                    return state.slotReady(slot)
                }
                if let job { return .job(job) }
            case .shutdown:
                return .end(.shutdown)
            case .outputClosed(generation, let problem):
                return .end(problem.map { .broken($0) } ?? .crashed)
            case .inputFailed(generation):
                return .end(.crashed)
            case .frame(generation, _):
                return .end(.broken("it sent a frame while it had no task"))
            default:
                continue
            }
        }
    }

    /// Sends the call to the child and waits for the answer, the child's end, the timeout, the
    /// caller's cancellation or shutdown. `nil` when the child answered and can take another task.
    private func runJob(_ job: Job, execution: ChildExecution, pid: Int32, slot: Int, generation: UInt64, inbox: SlotInbox) async -> ChildEnding? {
        let token = makeTimerToken()
        return await inbox.withTimer(job.timeout, token: token) {
            await withTaskGroup(of: Void.self) { writer in
                // The write runs beside the wait so that the timeout, cancellation and the child's
                // death still count while a large request is being written.
                writer.addTask {
                    do {
                        _ = try await execution.standardInputWriter.write(job.frame)
                    } catch {
                        inbox.push(.inputFailed(generation: generation))
                    }
                }
                let ending = await awaitAnswer(job, pid: pid, slot: slot, generation: generation, token: token, inbox: inbox)
                switch ending {
                case .broken?, .timedOut?, .cancelled?, .shutdown?:
                    // Stop the child now, inside the timeout's bound; this also ends a pending write.
                    await execution.teardown(using: [teardownStep])
                case nil, .crashed?, .recycled?:
                    break
                }
                return ending
            }
        }
    }

    private func awaitAnswer(_ job: Job, pid: Int32, slot: Int, generation: UInt64, token: UInt64, inbox: SlotInbox) async -> ChildEnding? {
        while true {
            switch await inbox.next() {
            case .frame(generation, let payload):
                switch try? ChildReply(decoding: payload) {
                case .result(job.id, let output)?:
                    state.withLock { $0.finish(job.id, on: slot) }?.continuation.resume(returning: Outcome(output: output, childPID: pid))
                    return nil
                case .failure(job.id, let error)?:
                    state.withLock { $0.finish(job.id, on: slot) }?.continuation.resume(throwing: error)
                    return nil
                default:
                    return .broken("it answered request \(job.id) with a frame that is not its result")
                }
            case .outputClosed(generation, let problem):
                return problem.map { .broken($0) } ?? .crashed
            case .inputFailed(generation):
                return .crashed
            case .timer(token):
                return .timedOut(job.timeout ?? .zero)
            case .interrupt(job.id):
                return .cancelled
            case .shutdown:
                return .shutdown
            default:
                continue
            }
        }
    }

    // MARK: Draining

    /// Splits the child's stdout into frames for the inbox until it ends.
    private static func drainFrames(_ output: SubprocessOutputSequence, generation: UInt64, inbox: SlotInbox, maxFrameBytes: Int) async {
        var decoder = FrameDecoder(maxPayload: maxFrameBytes)
        var broken = false
        do {
            for try await chunk in output {
                // After a breach keep reading and dropping, so the child never blocks on a full
                // pipe before it is stopped.
                guard !broken else { continue }
                chunk.withUnsafeBytes { decoder.append($0) }
                do {
                    while let payload = try decoder.next() {
                        inbox.push(.frame(generation: generation, payload: payload))
                    }
                } catch {
                    broken = true
                    inbox.push(.outputClosed(generation: generation, problem: "its output is not frames: \(error)"))
                }
            }
        } catch {
            // A failed read ends the stream as EOF does: the child is stopped and reaped either way.
        }
        if !broken { inbox.push(.outputClosed(generation: generation, problem: nil)) }
    }

    /// Forwards the child's stderr to the log, line by line.
    private static func drainLines(_ errors: SubprocessOutputSequence, log: Logger, tail: OutputTail) async {
        var pending: [UInt8] = []
        func emit(_ bytes: ArraySlice<UInt8>) {
            let line = String(decoding: bytes, as: UTF8.self)
            guard !line.allSatisfy(\.isWhitespace) else { return }
            log.info("child: \(line)")
            tail.record(line)
        }
        do {
            for try await chunk in errors {
                chunk.withUnsafeBytes { pending.append(contentsOf: $0) }
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    emit(pending[..<newline])
                    pending.removeFirst(newline + 1)
                }
                // A line this long is not a log line; pass it on in pieces rather than buffer it all.
                if pending.count > 16 << 10 {
                    emit(pending[...])
                    pending.removeAll(keepingCapacity: true)
                }
            }
        } catch {
            // As for stdout: the stream is over.
        }
        if !pending.isEmpty { emit(pending[...]) }
    }
}

/// The last line a child wrote to stderr, for the error that reports its death.
final class OutputTail: Sendable {
    private let line = Mutex<String?>(nil)

    func record(_ text: String) {
        line.withLock { $0 = String(text.prefix(300)) }
    }

    var last: String? { line.withLock { $0 } }
}
