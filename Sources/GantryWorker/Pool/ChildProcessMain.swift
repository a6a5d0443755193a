import GantryCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The child side of ``ChildProcessPool``: what a worker executable does when the pool starts it.
///
/// A worker's `main` checks for the hidden argument before anything else, while the process is
/// still single-purpose (no services, no broker threads):
///
/// ```swift
/// if ChildProcessMain.isRequested() {
///     ChildProcessMain.run(registry: registry)
/// }
/// ```
///
/// The child reads one request at a time from stdin, runs the named task from the registry, writes
/// the result frame to stdout, and exits when the parent closes stdin. It never talks to Redis or
/// the broker: the parent renews leases and commits results.
public enum ChildProcessMain {
    /// The hidden first argument that marks a process as a pool child.
    public static let argument = "__gantry-child"

    /// Whether this process was started as a pool child: its first argument is ``argument``.
    public static func isRequested(_ arguments: [String] = CommandLine.arguments) -> Bool {
        arguments.count > 1 && arguments[1] == argument
    }

    /// Serves tasks from `registry` until the parent closes stdin or goes away, then exits.
    public static func run(registry: TaskRegistry) -> Never {
        let channel = ChildChannel.claimStandardStreams()
        let completion = TaskCompletion()
        channel.send(ChildReply.hello(pid: getpid(), version: PoolWire.version).frame())
        while true {
            guard let payload = channel.receive() else { exit(0) }
            let request: ChildRequest
            do {
                request = try ChildRequest(decoding: payload)
            } catch {
                channel.complain("gantry pool child \(getpid()): \(error); exiting")
                exit(70)
            }
            let reply = perform(request, registry: registry, completion: completion, channel: channel)
            // Flush what the task printed so that it reaches the parent's log next to its task.
            fflush(nil)
            channel.send(reply.frame(limit: request.maxReplyBytes))
        }
    }

    /// Runs the request's task and waits for it on this (main) thread, which is not part of the
    /// cooperative pool, so blocking it in poll(2) is fine.
    private static func perform(_ request: ChildRequest, registry: TaskRegistry, completion: TaskCompletion, channel: ChildChannel) -> ChildReply {
        Task.detached {
            let reply: ChildReply
            do {
                let definition = try registry.require(request.task)
                reply = .result(id: request.id, output: try await definition.function(request.input, request.context))
            } catch {
                reply = .failure(id: request.id, error: ChildReply.wireError(error))
            }
            completion.finish(reply)
        }
        while true {
            // stdin is watched for hang-up only: the parent sends nothing while a task runs, so a
            // hang-up means it closed the pipe (shutdown) or died; either way nobody wants the result,
            // and an orphaned child must not keep burning a core.
            var fds = [
                pollfd(fd: completion.readEnd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: channel.input, events: 0, revents: 0),
            ]
            let ready = poll(&fds, nfds_t(fds.count), -1)
            if ready < 0 {
                if errno == EINTR { continue }
                channel.complain("gantry pool child \(getpid()): poll failed with errno \(errno); exiting")
                exit(70)
            }
            if fds[0].revents != 0, let reply = completion.take() { return reply }
            if fds[1].revents & Int16(POLLHUP | POLLERR) != 0 { _exit(0) }
        }
    }
}

/// The child's protocol streams: private copies of the stdin and stdout the parent connected.
struct ChildChannel {
    let input: Int32
    let output: Int32

    /// Moves the protocol onto private descriptors and points fd 0 at /dev/null and fd 1 at stderr,
    /// so that a task which prints or reads stdin cannot corrupt the frames. The copies are
    /// close-on-exec: a command a task starts must not hold the pipes open after the child dies.
    static func claimStandardStreams() -> ChildChannel {
        let input = fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3)
        let output = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3)
        guard input >= 0, output >= 0 else {
            complainRaw("gantry pool child: stdin and stdout must be open (errno \(errno)); was this started by ChildProcessPool?")
            exit(70)
        }
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if null >= 0 {
            dup2(null, STDIN_FILENO)
            close(null)
        }
        dup2(STDERR_FILENO, STDOUT_FILENO)
        return ChildChannel(input: input, output: output)
    }

    /// The next frame's payload, or `nil` when the parent closed stdin between frames.
    func receive() -> [UInt8]? {
        var header = [UInt8](repeating: 0, count: PoolWire.headerSize)
        switch readFully(&header) {
        case .complete: break
        case .endOfFile(let got) where got == 0: return nil
        case .endOfFile, .failed:
            complain("gantry pool child \(getpid()): stdin ended inside a frame; exiting")
            exit(70)
        }
        let length = header.reduce(0) { $0 << 8 | Int($1) }
        var payload = [UInt8](repeating: 0, count: length)
        guard case .complete = readFully(&payload) else {
            complain("gantry pool child \(getpid()): stdin ended inside a frame; exiting")
            exit(70)
        }
        return payload
    }

    /// Writes a whole frame; if the parent is gone there is nobody to answer, so the child exits.
    func send(_ frame: [UInt8]) {
        frame.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(output, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    _exit(0)
                }
                offset += written
            }
        }
    }

    /// Writes a line to stderr, which the parent forwards to its log.
    func complain(_ message: String) {
        Self.complainRaw(message)
    }

    private static func complainRaw(_ message: String) {
        let line = Array((message + "\n").utf8)
        _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress!, $0.count) }
    }

    private enum ReadOutcome {
        case complete
        case endOfFile(Int)
        case failed
    }

    private func readFully(_ buffer: inout [UInt8]) -> ReadOutcome {
        let count = buffer.count
        return buffer.withUnsafeMutableBytes { bytes -> ReadOutcome in
            var offset = 0
            while offset < count {
                let got = read(input, bytes.baseAddress! + offset, count - offset)
                if got < 0 {
                    if errno == EINTR { continue }
                    return .failed
                }
                if got == 0 { return .endOfFile(offset) }
                offset += got
            }
            return .complete
        }
    }
}

/// Hands a task's reply from the cooperative pool to the main thread: the reply goes into a
/// mutex and a byte into a pipe that the main thread polls.
final class TaskCompletion: Sendable {
    let readEnd: Int32
    private let writeEnd: Int32
    private let reply = Mutex<ChildReply?>(nil)

    init() {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else {
            fatalError("gantry pool child: cannot create a pipe (errno \(errno))")
        }
        // Close-on-exec, so that commands a task starts do not inherit it. (Glibc's pipe2 is not
        // visible to Swift.) The child starts nothing before this, so there is no race.
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        readEnd = ends[0]
        writeEnd = ends[1]
    }

    func finish(_ value: ChildReply) {
        reply.withLock { $0 = value }
        var byte: UInt8 = 1
        while write(writeEnd, &byte, 1) < 0, errno == EINTR {}
    }

    func take() -> ChildReply? {
        var byte: UInt8 = 0
        while read(readEnd, &byte, 1) < 0, errno == EINTR {}
        return reply.withLock { value in
            defer { value = nil }
            return value
        }
    }
}
