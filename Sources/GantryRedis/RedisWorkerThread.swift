import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A dedicated OS thread that runs jobs one at a time, in submission order.
///
/// hiredis calls block on the socket; running them here keeps them off Swift's cooperative
/// thread pool, whose few threads must never wait on I/O.
final class RedisWorkerThread: Sendable {
    typealias Job = @Sendable () -> Void

    private struct Queue {
        var jobs: [Job] = []
        var head = 0
        var stopping = false
    }

    private let queue = Mutex(Queue())
    // One signal per submitted job or stop request; the thread sleeps in `wait()` when idle.
    private let wakeup = DispatchSemaphore(value: 0)
    /// What the thread is for, in crash messages.
    private let name: String

    /// Starts the thread.
    /// - Parameter name: the thread's name in `top -H`, `perf` and debuggers (15 bytes max on Linux).
    init(name: String) {
        self.name = name
        // The new thread owns one reference until its loop ends.
        let context = Unmanaged.passRetained(self).toOpaque()
        #if canImport(Glibc)
        var thread = pthread_t()
        #else
        var thread: pthread_t?
        #endif
        let result = pthread_create(&thread, nil, { context in
            let worker = Unmanaged<RedisWorkerThread>.fromOpaque(context!).takeRetainedValue()
            worker.run()
            return nil
        }, context)
        guard result == 0 else {
            Unmanaged<RedisWorkerThread>.fromOpaque(context).release()
            fatalError("pthread_create failed for \(name): \(String(cString: strerror(result)))")
        }
        #if canImport(Glibc)
        pthread_detach(thread)
        #else
        pthread_detach(thread!)
        #endif
    }

    /// Queues `job`; returns `false` (and drops it) if the thread was stopped.
    func submit(_ job: @escaping Job) -> Bool {
        let accepted = queue.withLock { queue in
            guard !queue.stopping else { return false }
            queue.jobs.append(job)
            return true
        }
        if accepted { wakeup.signal() }
        return accepted
    }

    /// Lets the jobs already queued finish, then ends the thread. Later submissions are refused.
    func stop() {
        let first = queue.withLock { queue in
            defer { queue.stopping = true }
            return !queue.stopping
        }
        if first { wakeup.signal() }
    }

    private func run() {
        nameThisThread()
        // Block every signal here. Above all SIGPIPE: hiredis writes with write(2), and a
        // write to a socket the server closed would otherwise kill the whole process. With
        // it blocked, the write fails with EPIPE and the command fails with
        // .connectionFailed; the pending signal stays parked on this thread. Process signals
        // (SIGTERM, SIGINT) go to threads that expect them.
        var all = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_BLOCK, &all, nil)
        while true {
            wakeup.wait()
            let next: Job?? = queue.withLock { queue in
                if queue.head < queue.jobs.count {
                    let job = queue.jobs[queue.head]
                    queue.head += 1
                    if queue.head == queue.jobs.count {
                        // Drained: reset in place so the array never grows with history.
                        queue.jobs.removeAll(keepingCapacity: true)
                        queue.head = 0
                    }
                    return .some(job)
                }
                return queue.stopping ? .none : .some(nil)
            }
            switch next {
            case .some(.some(let job)): job()
            case .some(.none): continue
            case .none: return
            }
        }
    }

    /// Names the calling thread, best effort, so it is not mistaken for a thread of the
    /// cooperative pool (a new thread inherits its creator's name).
    private func nameThisThread() {
        #if os(Linux)
        // Glibc's module map hides pthread_setname_np (it needs _GNU_SOURCE); procfs does the same.
        let fd = open("/proc/thread-self/comm", O_WRONLY)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var comm = String(decoding: name.utf8.prefix(15), as: UTF8.self)
        comm.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) }
        #endif
    }
}
