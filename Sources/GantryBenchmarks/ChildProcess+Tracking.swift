import Dispatch
import Foundation
import GantryRuntime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How gantry-bench starts and stops its processes (workers, coordinators, servers): every
/// ``ChildProcess`` it starts is tracked in ``ProcessRegistry`` until stopped on purpose, so an
/// interrupted or failed run leaves none behind.
extension ChildProcess {
    /// ``ChildProcess/spawn(name:executable:arguments:environment:logPath:standardInput:newProcessGroup:)``,
    /// tracked in ``ProcessRegistry``.
    static func spawnTracked(
        name: String, executable: String, arguments: [String], environment: [String: String], logPath: String,
        standardInput: String = "/dev/null"
    ) throws -> ChildProcess {
        let process = try spawn(
            name: name, executable: executable, arguments: arguments, environment: environment, logPath: logPath,
            standardInput: standardInput
        )
        ProcessRegistry.shared.add(process)
        return process
    }

    /// `kill -9`, then reaps it.
    func killNow() async {
        await killAndReap()
        ProcessRegistry.shared.remove(self)
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the wait status.
    @discardableResult
    func terminate(grace: Duration = .seconds(20)) async -> Int32? {
        await stop(grace: grace)
        ProcessRegistry.shared.remove(self)
        return status
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
}

extension PrivateServer.Launcher {
    /// How gantry-bench starts the processes of its private servers: tracked in
    /// ``ProcessRegistry`` until stopped on purpose.
    static let tracked = PrivateServer.Launcher(
        spawn: { launch in
            try ChildProcess.spawnTracked(
                name: launch.name, executable: launch.executable, arguments: launch.arguments,
                environment: launch.environment, logPath: launch.logPath
            )
        },
        stopped: { ProcessRegistry.shared.remove($0) }
    )
}

/// Every process gantry-bench started and has not stopped yet, so that an interrupted run
/// (SIGINT, SIGTERM) or a failed one leaves none behind.
final class ProcessRegistry: Sendable {
    static let shared = ProcessRegistry()
    private let processes = Mutex<[Int32: ChildProcess]>([:])
    private let sources = Mutex<[any DispatchSourceSignal]>([])

    func add(_ process: ChildProcess) {
        processes.withLock { $0[process.pid] = process }
    }

    func remove(_ process: ChildProcess) {
        processes.withLock { _ = $0.removeValue(forKey: process.pid) }
    }

    /// Whether `process` was started and not stopped on purpose yet.
    func contains(_ process: ChildProcess) -> Bool {
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
