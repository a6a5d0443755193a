import Dispatch
import Foundation
import GantryCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A process gantry-bench started (a worker, a coordinator, a server), signalled only by its
/// own id. Output goes to a log file; memory figures come from `/proc/<pid>/status`.
final class ManagedProcess: Sendable {
    /// A short name for reports and errors (`worker-1`, `coordinator-2`, `redis`).
    let name: String
    let pid: Int32
    /// Where the process writes its standard output and error.
    let logPath: String
    private let exitStatus = Mutex<Int32?>(nil)

    private init(name: String, pid: Int32, logPath: String) {
        self.name = name
        self.pid = pid
        self.logPath = logPath
    }

    /// Starts `executable` with `arguments` and exactly `environment`, output appended to
    /// `logPath`, standard input from `standardInput`.
    ///
    /// posix_spawn with an empty signal mask and default dispositions: the calling thread may
    /// be a pool thread that blocks signals, and a child inheriting that mask would never see
    /// the SIGTERM that asks it to drain.
    static func spawn(
        name: String, executable: String, arguments: [String], environment: [String: String], logPath: String,
        standardInput: String = "/dev/null"
    ) throws -> ManagedProcess {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw GantryError(.configuration, "cannot start \(name): \(executable) is not an executable file; build it first (swift build -c release)")
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
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

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
        let process = ManagedProcess(name: name, pid: pid, logPath: logPath)
        ProcessRegistry.shared.add(process)
        return process
    }

    /// Whether the process is still running (reaping it if it exited).
    var isRunning: Bool {
        reap()
        return exitStatus.withLock { $0 } == nil
    }

    /// The wait status once it exited.
    var status: Int32? {
        reap()
        return exitStatus.withLock { $0 }
    }

    /// Sends `signal` if the process is still running.
    func send(_ signal: Int32) {
        if isRunning { kill(pid, signal) }
    }

    /// `kill -9`, then reaps it.
    func killNow() async {
        send(SIGKILL)
        _ = await waitForExit(timeout: .seconds(10))
        ProcessRegistry.shared.remove(self)
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the wait status.
    @discardableResult
    func terminate(grace: Duration = .seconds(20)) async -> Int32? {
        send(SIGTERM)
        if !(await waitForExit(timeout: grace)) {
            send(SIGKILL)
            _ = await waitForExit(timeout: .seconds(10))
        }
        ProcessRegistry.shared.remove(self)
        return status
    }

    /// Polls until the process exits or `timeout` passes; true once it is gone.
    func waitForExit(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isRunning {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
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

    /// Resident memory now (`VmRSS`) and at its peak (`VmHWM`), in bytes; nil once gone.
    var memory: (rss: Int, peak: Int)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        var rss: Int?
        var peak: Int?
        for line in text.split(separator: "\n") {
            if line.hasPrefix("VmRSS:") { rss = Self.kibibytes(line) }
            if line.hasPrefix("VmHWM:") { peak = Self.kibibytes(line) }
        }
        guard let rss, let peak else { return nil }
        return (rss * 1024, peak * 1024)
    }

    /// Pids of this process's direct children (its pool), from /proc.
    var childPIDs: [Int32] {
        // Each thread lists the children it started; the pool starts them from several threads.
        let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        var children: Set<Int32> = []
        for thread in threads {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(thread)/children", encoding: .utf8) else { continue }
            for item in text.split(separator: " ") {
                if let child = Int32(item.trimmingCharacters(in: .whitespacesAndNewlines)) { children.insert(child) }
            }
        }
        return children.sorted()
    }

    /// The last `bytes` of the log, for error messages.
    func logTail(_ bytes: Int = 2000) -> String {
        guard let data = FileManager.default.contents(atPath: logPath) else { return "" }
        return String(decoding: data.suffix(bytes), as: UTF8.self)
    }

    private static func kibibytes(_ line: Substring) -> Int? {
        line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.flatMap { Int($0) }
    }
}

/// Resident memory of any process by pid, in bytes (`VmRSS`, `VmHWM`).
func processMemory(_ pid: Int32) -> (rss: Int, peak: Int)? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    func field(_ name: String) -> Int? {
        text.split(separator: "\n").first { $0.hasPrefix(name) }
            .flatMap { $0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first }
            .flatMap { Int($0) }.map { $0 * 1024 }
    }
    guard let rss = field("VmRSS:"), let peak = field("VmHWM:") else { return nil }
    return (rss, peak)
}

/// Every process gantry-bench started and has not stopped yet, so that an interrupted run
/// (SIGINT, SIGTERM) or a failed one leaves none behind.
final class ProcessRegistry: Sendable {
    static let shared = ProcessRegistry()
    private let processes = Mutex<[Int32: ManagedProcess]>([:])
    private let sources = Mutex<[any DispatchSourceSignal]>([])

    func add(_ process: ManagedProcess) {
        processes.withLock { $0[process.pid] = process }
    }

    func remove(_ process: ManagedProcess) {
        processes.withLock { _ = $0.removeValue(forKey: process.pid) }
    }

    /// Whether `process` was started and not stopped on purpose yet.
    func contains(_ process: ManagedProcess) -> Bool {
        processes.withLock { $0[process.pid] != nil }
    }

    /// SIGKILLs every process still registered. Servers are stopped the same way: their data
    /// is private to the run.
    func killAll() {
        for process in processes.withLock({ Array($0.values) }) { kill(process.pid, SIGKILL) }
    }

    /// On SIGINT or SIGTERM: kill what was started, then exit 130.
    func installSignalHandlers() {
        sources.withLock { sources in
            guard sources.isEmpty else { return }
            for signalNumber in [SIGINT, SIGTERM] {
                signal(signalNumber, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
                source.setEventHandler {
                    ProcessRegistry.shared.killAll()
                    exit(130)
                }
                source.resume()
                sources.append(source)
            }
        }
    }
}
