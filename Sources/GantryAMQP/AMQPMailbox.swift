import GantryCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Work for the connection thread: what to run there, and how to answer if it never runs.
struct AMQPCommand: Sendable {
    /// Runs on the connection thread, which alone may touch librabbitmq.
    let execute: @Sendable (AMQPConnection) -> Void
    /// Called instead of ``execute`` when the connection failed or closed first.
    let abandon: @Sendable (GantryError) -> Void
}

/// The only state shared between the async front (`AMQPClient`) and the connection thread.
///
/// Tasks append commands and wake the thread through a pipe it polls together with the
/// socket; the thread takes commands in batches. All shared state sits in one `Mutex`, and
/// every method returns what to do (resume, write, abandon) to be done outside the lock.
final class AMQPMailbox: Sendable {
    enum Phase {
        case starting
        case running
        case closing
        case failed(GantryError)
        case closed
    }

    private struct State {
        var phase: Phase = .starting
        var commands: [AMQPCommand] = []
        var closeRequested = false
        var wakePending = false
        var threadExited = false
        var exitWaiters: [CheckedContinuation<Void, Never>] = []
        var thread: pthread_t?
    }

    private let state = Mutex(State())
    /// Read end, polled by the connection thread next to the AMQP socket.
    let wakeReadFD: Int32
    private let wakeWriteFD: Int32
    /// `host:port`, for error messages.
    let endpoint: String

    init(endpoint: String) throws(GantryError) {
        var fds: [Int32] = [-1, -1]
        // pipe2 is a GNU extension Swift's Glibc module does not export; set the flags after.
        let rc = pipe(&fds)
        if rc == 0 {
            for fd in fds {
                _ = fcntl(fd, F_SETFL, O_NONBLOCK)
                // The worker spawns child processes, which must not inherit our pipe.
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            }
        }
        guard rc == 0 else {
            throw GantryError(.connectionFailed, "cannot create the wake-up pipe for the RabbitMQ connection thread: \(String(cString: strerror(errno)))")
        }
        wakeReadFD = fds[0]
        wakeWriteFD = fds[1]
        self.endpoint = endpoint
    }

    deinit {
        close(wakeReadFD)
        close(wakeWriteFD)
    }

    /// The error every command gets once the connection was closed on purpose.
    var closedError: GantryError {
        GantryError(.closed, "the RabbitMQ connection to \(endpoint) is closed; create a new AMQPClient")
    }

    // MARK: Front side

    /// Queues a command for the thread, or abandons it at once if the connection is gone.
    func submit(_ command: AMQPCommand) {
        enum Action { case wake, none, abandon(GantryError) }
        let action: Action = state.withLock { state in
            switch state.phase {
            case .failed(let error):
                return .abandon(error)
            case .closing, .closed:
                return .abandon(closedError)
            case .starting, .running:
                if state.closeRequested { return .abandon(closedError) }
                state.commands.append(command)
                if state.wakePending { return .none }
                state.wakePending = true
                return .wake
            }
        }
        switch action {
        case .wake: wake()
        case .none: break
        case .abandon(let error): command.abandon(error)
        }
    }

    /// Asks the thread to close the channels and the connection and exit; idempotent.
    func requestClose() {
        let shouldWake: Bool = state.withLock { state in
            guard !state.closeRequested else { return false }
            state.closeRequested = true
            if state.wakePending { return false }
            state.wakePending = true
            return true
        }
        if shouldWake { wake() }
    }

    /// The error the connection failed with, if it did.
    var failure: GantryError? {
        state.withLock { state in
            if case .failed(let error) = state.phase { return error }
            return nil
        }
    }

    /// Whether commands are still accepted.
    var isOpen: Bool {
        state.withLock { state in
            switch state.phase {
            case .starting, .running: !state.closeRequested
            case .closing, .failed, .closed: false
            }
        }
    }

    private func wake() {
        var byte: UInt8 = 1
        // A full pipe already guarantees a wake-up, so EAGAIN is fine to ignore.
        _ = write(wakeWriteFD, &byte, 1)
    }

    // MARK: Thread lifecycle

    func setThread(_ thread: pthread_t) {
        state.withLock { $0.thread = thread }
    }

    /// Called by the thread as the very last thing it does.
    func threadDidExit() {
        let waiters = state.withLock { state in
            state.threadExited = true
            defer { state.exitWaiters = [] }
            return state.exitWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the thread has finished all its work and is about to return.
    func waitForThreadExit() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let exited = state.withLock { state in
                if state.threadExited { return true }
                state.exitWaiters.append(continuation)
                return false
            }
            if exited { continuation.resume() }
        }
    }

    /// Reaps the thread. Call only after ``waitForThreadExit()``: the thread has then
    /// signalled its last action, so the join returns at once instead of blocking a pool thread.
    func joinExitedThread() {
        let thread: pthread_t? = state.withLock { state in
            precondition(state.threadExited, "join only an exited connection thread")
            defer { state.thread = nil }
            return state.thread
        }
        if let thread { pthread_join(thread, nil) }
    }

    /// Lets the thread finish on its own (the owner went away without awaiting `close()`).
    func detachThread() {
        let thread: pthread_t? = state.withLock { state in
            defer { state.thread = nil }
            return state.thread
        }
        if let thread { pthread_detach(thread) }
    }

    // MARK: Thread side

    /// Takes every queued command; drains the pipe first so a wake-up that races with the
    /// take is never lost (its byte stays in the pipe and the next poll returns at once).
    func take() -> (commands: [AMQPCommand], closeRequested: Bool) {
        var buffer = [UInt8](repeating: 0, count: 64)
        while read(wakeReadFD, &buffer, buffer.count) > 0 {}
        return state.withLock { state in
            state.wakePending = false
            defer { state.commands = [] }
            return (state.commands, state.closeRequested)
        }
    }

    /// Whether the thread has queued work, checked before it blocks in poll.
    var hasWork: Bool {
        state.withLock { !$0.commands.isEmpty || $0.closeRequested }
    }

    /// Startup finished; false when a close was requested meanwhile.
    func markRunning() -> Bool {
        state.withLock { state in
            guard !state.closeRequested else { return false }
            state.phase = .running
            return true
        }
    }

    /// The connection failed: refuse new commands and hand back the queued ones to abandon.
    func markFailed(_ error: GantryError) -> [AMQPCommand] {
        state.withLock { state in
            state.phase = .failed(error)
            defer { state.commands = [] }
            return state.commands
        }
    }

    /// A graceful close started: refuse new commands and hand back the queued ones.
    func markClosing() -> [AMQPCommand] {
        state.withLock { state in
            state.phase = .closing
            defer { state.commands = [] }
            return state.commands
        }
    }

    func markClosed() {
        state.withLock { $0.phase = .closed }
    }
}

/// The body of a connection thread, retained across `pthread_create`.
private final class ThreadEntry {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

/// Starts a joinable thread that runs `body`.
func startThread(_ body: @escaping @Sendable () -> Void) throws(GantryError) -> pthread_t {
    // passRetained: the thread takes ownership; released below if the thread never starts.
    let context = Unmanaged.passRetained(ThreadEntry(body)).toOpaque()
    #if canImport(Glibc)
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        Unmanaged<ThreadEntry>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, context)
    #else
    var optionalThread: pthread_t?
    let rc = pthread_create(&optionalThread, nil, { raw in
        Unmanaged<ThreadEntry>.fromOpaque(raw).takeRetainedValue().body()
        return nil
    }, context)
    #endif
    guard rc == 0 else {
        Unmanaged<ThreadEntry>.fromOpaque(context).release()
        throw GantryError(.connectionFailed, "cannot start the RabbitMQ connection thread: \(String(cString: strerror(rc)))")
    }
    #if canImport(Glibc)
    return thread
    #else
    return optionalThread!
    #endif
}
