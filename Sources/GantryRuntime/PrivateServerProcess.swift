import GantryCore
import Synchronization

/// The current process of one private server (a new one after each restart), started through
/// the server's ``PrivateServer/Launcher``; how it is waited for, stopped and killed.
final class PrivateServerProcess: Sendable {
    /// The process's short name: `redis`, `rabbitmq`, `epmd`.
    let name: String
    private let launcher: PrivateServer.Launcher
    private let current = Mutex<ChildProcess?>(nil)

    init(name: String, launcher: PrivateServer.Launcher) {
        self.name = name
        self.launcher = launcher
    }

    /// The process of the current incarnation; nil before the first start and once stopped.
    var process: ChildProcess? { current.withLock { $0 } }

    /// Starts a new incarnation; `what` names the server in errors.
    func launch(_ what: String, executable: String, arguments: [String], environment: [String: String], logPath: String) throws -> ChildProcess {
        if let running = process, running.isRunning {
            throw GantryError(.configuration, "\(what) is already running (pid \(running.pid)); stop it before starting it again")
        }
        let child = try launcher.spawn(PrivateServer.Launch(name: name, executable: executable, arguments: arguments, environment: environment, logPath: logPath))
        current.withLock { $0 = child }
        return child
    }

    /// Polls `probe` every `interval` until it holds. Throws `.connectionFailed` when the
    /// process (or one of `watching`) stops first, `.timeout` once `timeout` passes, each with
    /// the end of the log that says why; `CancellationError` when the task is cancelled.
    func waitUntilReady(
        _ what: String, timeout: Duration, interval: Duration, watching: [ChildProcess] = [], probe: () async -> Bool
    ) async throws {
        guard let process else { throw GantryError(.configuration, "\(what) was not started") }
        let deadline = ContinuousClock.now + timeout
        while true {
            if await probe() { return }
            for watched in [process] + watching where !watched.isRunning {
                throw GantryError(
                    .connectionFailed,
                    "\(what) did not come up: \(watched.name) (pid \(watched.pid)) stopped: \(watched.exitDescription ?? "exited"); the end of \(watched.logPath):\n\(watched.logTail())"
                )
            }
            guard ContinuousClock.now < deadline else {
                throw GantryError(.timeout, "gave up waiting for \(what) after \(timeout.shortDescription); the end of \(process.logPath):\n\(process.logTail())")
            }
            try await Task.sleep(for: interval)
        }
    }

    /// Stops the current incarnation: SIGTERM, SIGKILL after `grace`. Returns false if it had
    /// to be killed; true when it stopped by itself or was not running.
    func stop(grace: Duration) async -> Bool {
        guard let process = takeProcess() else { return true }
        let clean = await process.stop(grace: grace)
        launcher.stopped(process)
        return clean
    }

    /// `kill -9` of the current incarnation, reaped.
    func kill() async {
        guard let process = takeProcess() else { return }
        await process.killAndReap()
        launcher.stopped(process)
    }

    private func takeProcess() -> ChildProcess? {
        current.withLock { current in
            defer { current = nil }
            return current
        }
    }
}
