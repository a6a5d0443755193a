import Foundation
import GantryCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A process `gantry dev` started: a server, the coordinator or a worker.
///
/// Each runs in a process group of its own, so the terminal's Ctrl-C reaches `gantry dev` only
/// (which then stops everything in order), and so whatever a process starts itself (pool
/// children, Erlang helpers) can be swept with one `kill(-group)` at the end. It is signalled
/// only through its own id.
final class DevProcess: Sendable {
    /// A short name for messages: `redis`, `coordinator`, `worker-2`.
    let name: String
    let pid: Int32
    /// Where its standard output and error go.
    let logPath: String
    private let exitStatus = Mutex<Int32?>(nil)

    private init(name: String, pid: Int32, logPath: String) {
        self.name = name
        self.pid = pid
        self.logPath = logPath
    }

    /// Starts `executable` with `arguments` and exactly `environment`, output appended to
    /// `logPath`, standard input from /dev/null, in a new process group.
    ///
    /// The signal mask is emptied and the usual signals reset to their defaults: `gantry dev`
    /// ignores SIGINT and SIGTERM to handle them itself, and a child that inherited that would
    /// never stop when asked to.
    static func spawn(name: String, executable: String, arguments: [String], environment: [String: String], logPath: String) throws -> DevProcess {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw GantryError(.configuration, "cannot start \(name): \(executable) is not an executable file")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
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
        // Process group 0: a new group whose id is the child's pid.
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

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
        return DevProcess(name: name, pid: pid, logPath: logPath)
    }

    /// Whether the process is still running (reaping it if it exited).
    var isRunning: Bool {
        reap()
        return exitStatus.withLock { $0 } == nil
    }

    /// How it ended, once it has: `exit status 1`, `killed by signal 9`.
    var exitDescription: String? {
        reap()
        guard let raw = exitStatus.withLock({ $0 }) else { return nil }
        if raw == -1 { return "exited" }
        let signal = raw & 0x7f
        return signal == 0 ? "exit status \((raw >> 8) & 0xff)" : "killed by signal \(signal)"
    }

    /// Whether it exited with status 0.
    var exitedCleanly: Bool {
        reap()
        return exitStatus.withLock { $0 } == 0
    }

    /// SIGTERM to the process, SIGKILL to its whole group after `grace`; then anything left in
    /// its group (children it started) is killed too. Returns false if it had to be killed.
    @discardableResult
    func stop(grace: Duration) async -> Bool {
        var clean = true
        if isRunning {
            kill(pid, SIGTERM)
            if !(await waitForExit(timeout: grace)) {
                clean = false
                kill(-pid, SIGKILL)
                _ = await waitForExit(timeout: .seconds(10))
            }
        }
        sweepGroup()
        return clean
    }

    /// SIGKILL to the process and its group at once (a second Ctrl-C).
    func killGroup() {
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
    }

    /// Kills whatever is left in the process's group; the group is gone afterwards.
    func sweepGroup() {
        if kill(-pid, 0) == 0 { kill(-pid, SIGKILL) }
    }

    /// Polls until the process exits or `timeout` passes; true once it is gone.
    func waitForExit(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isRunning {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(25))
        }
        return true
    }

    /// The last `lines` lines of its log, for error messages.
    func logTail(lines: Int = 15) -> String {
        guard let data = FileManager.default.contents(atPath: logPath) else { return "" }
        let text = String(decoding: data.suffix(16_384), as: UTF8.self)
        return text.split(separator: "\n", omittingEmptySubsequences: true).suffix(lines).joined(separator: "\n")
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
