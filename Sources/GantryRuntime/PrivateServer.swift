import Foundation
import GantryCore

/// What ``PrivateRedis`` and ``PrivateRabbitMQ`` share: how their processes are started and
/// tracked, and how their executables are found.
///
/// A private server runs on free loopback ports with every file under a directory of its
/// own, so starting, killing or restarting it never disturbs the shared servers of the local
/// stack that other processes use at the same time.
public enum PrivateServer {
    /// One process a private server asks to start.
    public struct Launch: Sendable {
        /// A short name: `redis`, `rabbitmq`, `epmd`.
        public var name: String
        /// The path of the program.
        public var executable: String
        /// Its arguments, without the program itself.
        public var arguments: [String]
        /// The complete environment of the process.
        public var environment: [String: String]
        /// Where the server would like its output: under its own directory.
        public var logPath: String
    }

    /// How a private server starts its processes, and what happens once one is stopped, so a
    /// tool can keep its own books (`gantry dev` stops everything it started in order;
    /// gantry-bench kills whatever is left when interrupted).
    public struct Launcher: Sendable {
        /// Starts the process; it may choose another log path (the returned process tells).
        public var spawn: @Sendable (Launch) throws -> ChildProcess
        /// Called once a process was stopped or killed through the server.
        public var stopped: @Sendable (ChildProcess) -> Void

        /// A launcher that starts processes with `spawn` and reports each one stopped to `stopped`.
        public init(spawn: @escaping @Sendable (Launch) throws -> ChildProcess, stopped: @escaping @Sendable (ChildProcess) -> Void = { _ in }) {
            self.spawn = spawn
            self.stopped = stopped
        }

        /// ``ChildProcess/spawn(name:executable:arguments:environment:logPath:standardInput:newProcessGroup:)``
        /// with the server's own log path, in the caller's process group.
        public static let standalone = Launcher { launch in
            try ChildProcess.spawn(
                name: launch.name, executable: launch.executable, arguments: launch.arguments,
                environment: launch.environment, logPath: launch.logPath
            )
        }
    }

    /// The path of `name`: the first of `preferred` that exists, else on `PATH` (then
    /// `/usr/sbin`, `/usr/bin`); or a `.configuration` error ending with `fix`, how to get it.
    public static func executable(named name: String, preferred: [String] = [], fix: String) throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        let candidates = preferred + path.split(separator: ":").map { "\($0)/\(name)" } + ["/usr/sbin/\(name)", "/usr/bin/\(name)"]
        if let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) { return found }
        throw GantryError(.configuration, "\(name) is not installed (not on PATH); \(fix)")
    }
}
