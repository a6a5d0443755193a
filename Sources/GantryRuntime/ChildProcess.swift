import Foundation
import GantryCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A process a Gantry tool started (a server, a coordinator, a worker), signalled only through
/// its own id. Its standard output and error are appended to a log file; it is reaped by
/// polling, so nothing waits on a thread for it.
public final class ChildProcess: Sendable {
    /// A short name for messages: `redis`, `coordinator`, `worker-2`.
    public let name: String
    public let pid: Int32
    /// Where its standard output and error go.
    public let logPath: String
    /// Whether it was started in a process group of its own (whose id is its pid).
    public let leadsProcessGroup: Bool
    private let exitStatus = Mutex<Int32?>(nil)

    private init(name: String, pid: Int32, logPath: String, leadsProcessGroup: Bool) {
        self.name = name
        self.pid = pid
        self.logPath = logPath
        self.leadsProcessGroup = leadsProcessGroup
    }

    /// Starts `executable` with `arguments` and exactly `environment`, output appended to
    /// `logPath`, standard input from `standardInput`; with `newProcessGroup`, in a process
    /// group of its own whose id is its pid.
    ///
    /// posix_spawn with an empty signal mask and the usual signals at their defaults: the caller
    /// may block or ignore SIGINT and SIGTERM (a pool thread, a tool handling them itself), and a
    /// child that inherited that would never stop when asked to.
    public static func spawn(
        name: String, executable: String, arguments: [String], environment: [String: String], logPath: String,
        standardInput: String = "/dev/null", newProcessGroup: Bool = false
    ) throws -> ChildProcess {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw GantryError(.configuration, "cannot start \(name): \(executable) is not an executable file; build it first (swift build)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, standardInput, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCHLD, SIGPIPE] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
        if newProcessGroup {
            // Process group 0: a new group whose id is the child's pid.
            posix_spawnattr_setpgroup(&attributes, 0)
            flags |= POSIX_SPAWN_SETPGROUP
        }
        posix_spawnattr_setflags(&attributes, Int16(flags))

        // strdup'd C strings for posix_spawn, freed right after it returns (it copies them).
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard rc == 0 else {
            throw GantryError(.configuration, "cannot start \(name) (\(executable)): \(String(cString: strerror(rc)))")
        }
        return ChildProcess(name: name, pid: pid, logPath: logPath, leadsProcessGroup: newProcessGroup)
    }

    /// Whether the process is still running (reaping it if it exited).
    public var isRunning: Bool {
        reap()
        return exitStatus.withLock { $0 } == nil
    }

    /// The wait status once it exited (-1 when it was reaped elsewhere).
    public var status: Int32? {
        reap()
        return exitStatus.withLock { $0 }
    }

    /// Whether it exited with status 0.
    public var exitedCleanly: Bool { status == 0 }

    /// How it ended, once it has: `exit status 1`, `killed by signal 9`.
    public var exitDescription: String? {
        guard let raw = status else { return nil }
        if raw == -1 { return "exited" }
        let signal = raw & 0x7f
        return signal == 0 ? "exit status \((raw >> 8) & 0xff)" : "killed by signal \(signal)"
    }

    /// Sends `signal` if the process is still running.
    public func send(_ signal: Int32) {
        if isRunning { kill(pid, signal) }
    }

    /// Polls until the process exits or `timeout` passes; true once it is gone.
    public func waitForExit(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isRunning {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    /// The last `lines` lines of its log, for error messages.
    public func logTail(lines: Int = 15) -> String {
        guard let data = FileManager.default.contents(atPath: logPath) else { return "" }
        let text = String(decoding: data.suffix(16_384), as: UTF8.self)
        return text.split(separator: "\n", omittingEmptySubsequences: true).suffix(lines).joined(separator: "\n")
    }

    /// Resident memory now (`VmRSS`) and at its peak (`VmHWM`), in bytes; nil once gone.
    public var memory: (rss: Int, peak: Int)? { Self.memory(of: pid) }

    /// ``memory`` of any process by pid (a pool child, say).
    public static func memory(of pid: Int32) -> (rss: Int, peak: Int)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let rss = kibibytes("VmRSS:", in: text), let peak = kibibytes("VmHWM:", in: text) else { return nil }
        return (rss * 1024, peak * 1024)
    }

    /// The number of a `Name:   1234 kB` line of a `/proc` file's text (`status`, `smaps_rollup`).
    public static func kibibytes(_ name: String, in text: String) -> Int? {
        text.split(separator: "\n").first { $0.hasPrefix(name) }
            .flatMap { $0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first }
            .flatMap { Int($0) }
    }

    private func reap() {
        exitStatus.withLock { status in
            guard status == nil else { return }
            var raw: Int32 = 0
            let reaped = waitpid(pid, &raw, WNOHANG)
            if reaped == pid {
                status = raw
            } else if reaped == -1 && errno == ECHILD {
                status = -1
            }
        }
    }
}
