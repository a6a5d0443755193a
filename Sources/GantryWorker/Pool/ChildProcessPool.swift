import GantryCore
import Logging
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Runs CPU-bound tasks in a supervised pool of child processes.
///
/// Each child is the worker's own executable re-spawned with a hidden argument (see
/// ``ChildProcessMain``); it gets one task at a time as a length-prefixed frame on stdin and
/// answers on stdout. A slow, stuck or crashing task therefore never blocks or kills the worker,
/// which keeps renewing its leases.
///
/// - A call waits for a free child (up to ``PoolConfiguration/acquireTimeout``; cancellable).
/// - A task's own error comes back as a ``GantryError`` with its code, message and retriable flag.
/// - A child that dies mid-task fails the call with a retriable `.taskFailed` naming the pid and
///   signal, and is respawned with backoff.
/// - A timeout or a cancelled caller stops the child (SIGTERM, then SIGKILL after
///   ``PoolConfiguration/terminationGrace``) and a fresh child takes its place.
/// - A child is recycled after ``PoolConfiguration/maxTasksPerChild`` tasks or when its resident
///   memory is above ``PoolConfiguration/rssLimitBytes`` after a task.
///
/// Run it as a service (``run()``) before or alongside its callers, and stop it with
/// ``shutdown()`` or a graceful shutdown of its `ServiceGroup`; either stops every child and never
/// hangs. Creating a pool sets SIGPIPE to ignored for the whole process, so that writing to a
/// child that just died is an error instead of the worker's death.
public final class ChildProcessPool: Service, Sendable {
    /// A task's result and the child process that computed it.
    public struct Outcome: Sendable {
        /// The task's result bytes.
        public var output: [UInt8]
        /// The pid of the child that ran the task.
        public var childPID: Int32
    }

    /// Running totals and current figures, for metrics and tests.
    public struct Counters: Sendable, Equatable {
        /// Children running now.
        public var alive = 0
        /// Children running a task now.
        public var busy = 0
        /// Calls waiting for a free child now.
        public var waiting = 0
        /// Children started so far.
        public var spawned = 0
        /// Children that died on their own (signal, exit, OOM kill, protocol breach) and were replaced.
        public var respawnedAfterCrash = 0
        /// Children replaced after their task limit or above the memory limit.
        public var recycled = 0
        /// Children stopped because their task timed out or its caller was cancelled.
        public var killed = 0
        /// Tasks that ran to an answer (a result or the task's own error).
        public var tasksRun = 0
    }

    /// What one slot of the pool is doing.
    public struct ChildStatus: Sendable, Equatable {
        /// The slot, 0 ..< size.
        public var slot: Int
        /// The pid of the slot's child, if one is running.
        public var pid: Int32?
        /// The task the child is running, if any.
        public var task: String?
        /// Tasks this child has answered.
        public var tasksServed: Int
    }

    /// The pool's settings.
    public let configuration: PoolConfiguration
    let logger: Logger
    let state: Mutex<StateMachine>
    private let stopped = Latch()
    private let lastTimerToken = Atomic<UInt64>(0)

    /// Creates a pool; children start when ``run()`` runs.
    ///
    /// - Throws: `.configuration` naming the first invalid setting.
    public init(configuration: PoolConfiguration = PoolConfiguration(), logger: Logger = Logger(label: "gantry.pool")) throws {
        if let problem = configuration.problems.first { throw GantryError(.configuration, problem) }
        self.configuration = configuration
        self.logger = logger
        state = Mutex(StateMachine(size: configuration.size))
        // A write to a dead child's stdin must fail with EPIPE, not kill the worker. Children get
        // default dispositions back when they are spawned.
        signal(SIGPIPE, SIG_IGN)
    }

    /// The counters now.
    public var counters: Counters { state.withLock { $0.counters } }

    /// Every slot's child and task now.
    public var children: [ChildStatus] { state.withLock { $0.children } }

    // MARK: Running tasks

    /// Runs `task` in a child and returns its result.
    ///
    /// - Parameters:
    ///   - timeout: How long the task may run once a child has it; `nil` for no limit. On expiry
    ///     the child is stopped and the call throws a retriable `.timeout`.
    /// - Throws: the task's own ``GantryError``; `.taskFailed` (retriable) when the child died;
    ///   `.timeout` (retriable) on timeout or when no child was free within the acquire timeout;
    ///   `.cancelled` when the calling task was cancelled; `.closed` when the pool is shut down.
    public func run(task: String, input: [UInt8], context: TaskContext, timeout: Duration? = nil) async throws -> [UInt8] {
        try await execute(task: task, input: input, context: context, timeout: timeout).output
    }

    /// Like ``run(task:input:context:timeout:)``, and also says which child ran the task.
    public func execute(task: String, input: [UInt8], context: TaskContext, timeout: Duration? = nil) async throws -> Outcome {
        let id = state.withLock { $0.makeJobID() }
        let request = ChildRequest(id: id, task: task, context: context, input: input, maxReplyBytes: configuration.maxFrameBytes)
        let frame = try request.frame(limit: configuration.maxFrameBytes)
        let acquireTimeout = configuration.acquireTimeout
        let size = configuration.size
        return try await withThrowingTaskGroup(of: Outcome?.self) { group in
            group.addTask {
                try await self.submitAndWait(id: id, task: task, frame: frame, timeout: timeout)
            }
            group.addTask {
                // Bounds the wait for a free child; once a child has the task only `timeout` applies.
                guard (try? await Task.sleep(for: acquireTimeout)) != nil else { return nil }
                let error = GantryError(
                    .timeout,
                    "no child process became free within \(acquireTimeout.shortDescription) to run task '\(task)' (pool size \(size)); raise pool.size or lower the worker's concurrency",
                    isRetriable: true
                )
                self.perform(self.state.withLock { $0.expireIfWaiting(id, error: error) })
                return nil
            }
            while let next = try await group.next() {
                if let outcome = next {
                    group.cancelAll()
                    return outcome
                }
            }
            preconditionFailure("the call's task ends with an outcome or an error")
        }
    }

    private func submitAndWait(id: UInt64, task: String, frame: [UInt8], timeout: Duration?) async throws -> Outcome {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                perform(state.withLock { $0.submit(Job(id: id, task: task, frame: frame, timeout: timeout, continuation: continuation)) })
                // The cancellation handler may have run before the job was submitted.
                if Task.isCancelled { cancel(id, task: task) }
            }
        } onCancel: {
            self.cancel(id, task: task)
        }
    }

    private func cancel(_ id: UInt64, task: String) {
        let error = GantryError(.cancelled, "task '\(task)' was cancelled while waiting for a free child process")
        perform(state.withLock { $0.cancel(id, error: error) })
    }

    /// A token no timer of this pool has used.
    func makeTimerToken() -> UInt64 {
        lastTimerToken.wrappingAdd(1, ordering: .relaxed).newValue
    }

    func perform(_ actions: [StateMachine.Action]) {
        for action in actions {
            switch action {
            case .notify(let inbox, let event):
                inbox.push(event)
            case .fail(let continuation, let error):
                continuation.resume(throwing: error)
            }
        }
    }

    // MARK: Lifecycle

    /// Starts the children and supervises them until ``shutdown()``, a graceful shutdown of the
    /// service group, or cancellation; returns once every child is gone.
    ///
    /// - Throws: `.closed` if the pool already ran or was shut down.
    public func run() async throws {
        guard state.withLock({ $0.start() }) else {
            throw GantryError(.closed, "the process pool was already started or shut down; create a new ChildProcessPool")
        }
        logger.info("process pool starting", metadata: [
            "size": .stringConvertible(configuration.size), "executable": .string(configuration.executablePath),
        ])
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withDiscardingTaskGroup { group in
                    for slot in 0..<configuration.size {
                        group.addTask { await self.supervise(slot: slot) }
                    }
                }
            } onGracefulShutdown: {
                self.beginShutdown()
            }
        } onCancel: {
            self.beginShutdown()
        }
        logger.info("process pool stopped", metadata: ["counters": .string("\(counters)")])
        stopped.open()
    }

    /// Stops every child (SIGTERM, then SIGKILL after the grace) and returns when they are gone.
    /// Calls waiting for a child fail with `.closed`; so do calls whose child is stopped. Returns
    /// at once if the pool never ran.
    public func shutdown() async {
        let started = state.withLock { $0.hasStarted }
        beginShutdown()
        if started { await stopped.wait() }
    }

    /// Flips to shutting down and tells every slot; the slots stop their children.
    func beginShutdown() {
        perform(state.withLock { $0.shutdown() })
    }
}

/// A one-way gate: ``wait()`` returns once ``open()`` was called.
final class Latch: Sendable {
    private struct State {
        var isOpen = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    func open() {
        let waiters = state.withLock { state in
            state.isOpen = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            let isOpen = state.withLock { state in
                if !state.isOpen { state.waiters.append(continuation) }
                return state.isOpen
            }
            if isOpen { continuation.resume() }
        }
    }
}
