import Dispatch
import Foundation
import GantryCore
import GantryRuntime
import GantryStore
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The processes of one `gantry dev` session, and how to start and stop them.
///
/// Servers (Redis, the broker) start first and stop last; the coordinator and workers stop
/// first, all at once, each given its drain time.
final class DevCluster: Sendable {
    enum Role: Sendable {
        case server
        case service
    }

    /// Where logs and server data go.
    let stateDirectory: String
    private let processes = Mutex<[(ChildProcess, Role)]>([])
    private let reported = Mutex<Set<Int32>>([])

    init(stateDirectory: String) throws {
        self.stateDirectory = stateDirectory
        try FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
    }

    var logDirectory: String { stateDirectory + "/logs" }

    /// Every process started, in start order.
    var started: [ChildProcess] { processes.withLock { $0.map(\.0) } }

    /// Starts a process and remembers it for ``stop()``; its log is `logs/<name>.log`, truncated.
    func start(_ name: String, role: Role, executable: String, arguments: [String], environment: [String: String]) throws -> ChildProcess {
        let log = "\(logDirectory)/\(name).log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let process = try ChildProcess.spawn(name: name, executable: executable, arguments: arguments, environment: environment, logPath: log, newProcessGroup: true)
        processes.withLock { $0.append((process, role)) }
        return process
    }

    /// Starts the processes of a ``PrivateRedis`` or ``PrivateRabbitMQ`` as servers of the
    /// cluster: logs in `logs/<name>.log`, stopped last.
    var serverLauncher: PrivateServer.Launcher {
        PrivateServer.Launcher { [self] launch in
            try start(launch.name, role: .server, executable: launch.executable, arguments: launch.arguments, environment: launch.environment)
        }
    }

    /// Throws naming the first process that ended by itself, with the end of its log.
    func checkAlive() throws {
        for process in started where !process.isRunning {
            throw GantryError(.commandFailed, "\(process.name) (pid \(process.pid)) stopped: \(process.exitDescription ?? "exited"); the end of \(process.logPath):\n\(process.logTail())")
        }
    }

    /// Processes that ended by themselves since the last call (each reported once).
    func newlyExited() -> [ChildProcess] {
        let gone = started.filter { !$0.isRunning }
        return reported.withLock { seen in gone.filter { seen.insert($0.pid).inserted } }
    }

    /// Stops everything: coordinator and workers together (SIGTERM, then SIGKILL after
    /// `serviceGrace`), then the servers in reverse start order; then sweeps every process
    /// group so nothing any of them started is left. Returns the processes that had to be killed.
    func stop(serviceGrace: Duration, serverGrace: Duration, say: @Sendable (String) -> Void) async -> [String] {
        let all = processes.withLock { $0 }
        let services = all.filter { $0.1 == .service }.map(\.0)
        let servers = all.filter { $0.1 == .server }.map(\.0).reversed()
        var killed: [String] = []
        if !services.isEmpty {
            say("stopping \(services.map(\.name).joined(separator: ", ")) (tasks in flight get up to \(serviceGrace.shortDescription) to finish or be handed back)")
            killed += await withTaskGroup(of: String?.self) { group in
                for process in services {
                    group.addTask { await process.stop(grace: serviceGrace) ? nil : process.name }
                }
                var names: [String] = []
                for await name in group { if let name { names.append(name) } }
                return names
            }
        }
        for process in servers {
            say("stopping \(process.name)")
            if !(await process.stop(grace: serverGrace)) { killed.append(process.name) }
        }
        for (process, _) in all { process.sweepGroup() }
        processes.withLock { $0.removeAll() }
        return killed
    }

    /// SIGKILL to every process group at once (a second Ctrl-C).
    func killAll() {
        for (process, _) in processes.withLock({ $0 }) { process.killGroup() }
    }
}

/// Signals delivered as an async stream instead of killing the process: `gantry dev` stops
/// its cluster in order on the first, and kills it on the second.
final class SignalWatcher: @unchecked Sendable {
    // @unchecked: `sources` is written once in init and only read (to keep the sources alive
    // and cancel them) afterwards; Dispatch serialises each source's handler itself.
    let stream: AsyncStream<Int32>
    private let sources: [any DispatchSourceSignal]

    init(_ signals: [Int32]) {
        let (stream, continuation) = AsyncStream<Int32>.makeStream()
        self.stream = stream
        sources = signals.map { number in
            // Ignored at the process level so the default action (exit) never runs; the
            // Dispatch source still sees each delivery.
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { continuation.yield(number) }
            source.resume()
            return source
        }
    }

    deinit {
        for source in sources { source.cancel() }
    }

    static func name(_ number: Int32) -> String {
        switch number {
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        case SIGHUP: return "SIGHUP"
        default: return "signal \(number)"
        }
    }
}
