import Foundation
import GantryAMQP
import GantryCore
import Logging

#if canImport(Glibc)
import Glibc
private let systemKill = Glibc.kill
#elseif canImport(Darwin)
import Darwin
private let systemKill = Darwin.kill
#endif

/// A RabbitMQ node of its own: for `gantry dev` when no broker answers, and for benchmarks
/// and tests that stop, crash or restart the broker (the shared node of the local stack must
/// never be restarted).
///
/// Started the way `ops/lib/common.sh` starts the shared one, but with its own node name,
/// AMQP and Erlang distribution ports (free and distinct, the same across restarts) and every
/// file under a directory of its own: `mnesia/`, `log/` (its output in `log/stdout.log`),
/// `rabbitmq.conf`, `enabled_plugins`. With ``Options/privatePortMapper`` it also runs an
/// `epmd` of its own, so nothing it starts outlives it.
///
/// ```swift
/// let rabbit = try PrivateRabbitMQ(directory: "/tmp/rabbit-test")
/// try await rabbit.start()     // accepts AMQP connections
/// try await rabbit.stop()      // clean stop: clients see CONNECTION_FORCED
/// try await rabbit.start()     // same ports, durable queues and persistent messages kept
/// await rabbit.shutDown()
/// ```
public final class PrivateRabbitMQ: Sendable {
    /// The files of a TLS (`amqps`) listener.
    public struct TLS: Sendable {
        /// The CA certificate (PEM) clients verify the node's certificate with.
        public var caCertificate: String
        /// The node's certificate (PEM).
        public var certificate: String
        /// The node's private key (PEM).
        public var key: String

        /// The files of a listener; each a path.
        public init(caCertificate: String, certificate: String, key: String) {
            self.caCertificate = caCertificate
            self.certificate = certificate
            self.key = key
        }
    }

    /// How the node runs.
    public struct Options: Sendable {
        /// The node is `<nodePrefix>-<AMQP port>@localhost`. Default `gantry`.
        public var nodePrefix: String
        /// Run an `epmd` of its own on a free port (`ERL_EPMD_PORT`) instead of the machine's
        /// shared one, which Erlang would otherwise start and leave running. Default false.
        public var privatePortMapper: Bool
        /// Also listen for `amqps` on ``PrivateRabbitMQ/tlsPort`` with these files (peers are
        /// not asked for certificates). Default nil: plain AMQP only.
        public var tls: TLS?
        /// The environment the node starts from (without its `RABBITMQ_*` variables, which
        /// the node's own replace). Default: this process's.
        public var environment: [String: String]
        /// The `rabbitmq-server` script to run. Default: ``PrivateRabbitMQ/serverScript(fix:)``.
        public var executable: String?
        /// Longest wait for the node to accept AMQP connections after a start. Default 120 s.
        public var startTimeout: Duration
        /// How long a stop waits after SIGTERM before killing the node. Default 60 s.
        public var stopGrace: Duration
        /// The AMQP connection name of the readiness probe. Default `gantry-private-probe`.
        public var probeName: String

        /// Options with the documented defaults, changed where given.
        public init(
            nodePrefix: String = "gantry", privatePortMapper: Bool = false, tls: TLS? = nil,
            environment: [String: String] = ProcessInfo.processInfo.environment, executable: String? = nil,
            startTimeout: Duration = .seconds(120), stopGrace: Duration = .seconds(60), probeName: String = "gantry-private-probe"
        ) {
            self.nodePrefix = nodePrefix
            self.privatePortMapper = privatePortMapper
            self.tls = tls
            self.environment = environment
            self.executable = executable
            self.startTimeout = startTimeout
            self.stopGrace = stopGrace
            self.probeName = probeName
        }
    }

    /// The AMQP port (127.0.0.1).
    public let port: Int
    /// The Erlang distribution port.
    public let distributionPort: Int
    /// The port of its own `epmd`, with ``Options/privatePortMapper``.
    public let portMapperPort: Int?
    /// The `amqps` port, with ``Options/tls``.
    public let tlsPort: Int?
    /// `<nodePrefix>-<port>@localhost`.
    public let nodeName: String
    /// Where every file of the node goes.
    public let directory: String
    /// How the node runs.
    public let options: Options
    private let serverScript: String
    private let portMapperExecutable: String?
    private let node: PrivateServerProcess
    private let portMapper: PrivateServerProcess

    /// `amqp://guest:guest@127.0.0.1:<port>/`.
    public var url: String { "amqp://guest:guest@127.0.0.1:\(port)/" }

    /// The `rabbitmq-server` script of the current incarnation; nil before ``start()`` and after a stop.
    public var process: ChildProcess? { node.process }

    /// Whether this machine has a RabbitMQ installation to start nodes from.
    public static var isAvailable: Bool { (try? serverScript(fix: "")) != nil }

    /// The `rabbitmq-server` script to start nodes with, or a `.configuration` error ending
    /// with `fix`, how to get it.
    public static func serverScript(fix: String) throws -> String {
        // The script itself, not Debian's /usr/sbin wrapper, which switches to the rabbitmq
        // user (who cannot write to the node's directory).
        try PrivateServer.executable(named: "rabbitmq-server", preferred: ["/usr/lib/rabbitmq/bin/rabbitmq-server"], fix: fix)
    }

    /// Picks free ports and writes the node's configuration under `directory`; nothing runs
    /// until ``start()``.
    /// - Throws: `.configuration` when RabbitMQ (or Erlang's `epmd`) is not installed, no port
    ///   is free, or the files cannot be written.
    public init(directory: String, options: Options = Options(), launcher: PrivateServer.Launcher = .standalone) throws {
        serverScript = try options.executable ?? Self.serverScript(fix: "install it (ops/bootstrap does, or apt-get install rabbitmq-server)")
        portMapperExecutable = options.privatePortMapper
            ? try PrivateServer.executable(named: "epmd", preferred: ["/usr/lib/erlang/bin/epmd"], fix: "install Erlang (it comes with rabbitmq-server)")
            : nil
        var ports = try TCPProbe.freeLoopbackPorts(2 + (options.privatePortMapper ? 1 : 0) + (options.tls == nil ? 0 : 1))
        port = ports.removeFirst()
        distributionPort = ports.removeFirst()
        portMapperPort = options.privatePortMapper ? ports.removeFirst() : nil
        tlsPort = options.tls == nil ? nil : ports.removeFirst()
        nodeName = "\(options.nodePrefix)-\(port)@localhost"
        self.directory = directory
        self.options = options
        node = PrivateServerProcess(name: "rabbitmq", launcher: launcher)
        portMapper = PrivateServerProcess(name: "epmd", launcher: launcher)

        for sub in ["mnesia", "log"] {
            try FileManager.default.createDirectory(atPath: "\(directory)/\(sub)", withIntermediateDirectories: true)
        }
        try "[].\n".write(toFile: "\(directory)/enabled_plugins", atomically: true, encoding: .utf8)
        var settings = """
            loopback_users = none
            vm_memory_high_watermark.relative = 0.2
            disk_free_limit.absolute = 50MB
            classic_queue.default_version = 2

            """
        if let tls = options.tls, let tlsPort {
            settings += """
                listeners.ssl.1 = 127.0.0.1:\(tlsPort)
                ssl_options.cacertfile = \(tls.caCertificate)
                ssl_options.certfile = \(tls.certificate)
                ssl_options.keyfile = \(tls.key)
                ssl_options.verify = verify_none
                ssl_options.fail_if_no_peer_cert = false

                """
        }
        try settings.write(toFile: "\(directory)/rabbitmq.conf", atomically: true, encoding: .utf8)
    }

    private var pidFile: String { "\(directory)/\(port).pid" }

    /// The node's environment: the RABBITMQ_* variables of `ops/lib/common.sh`, pointed at the
    /// node's own ports and files.
    private var environment: [String: String] {
        var environment = options.environment.filter { !$0.key.hasPrefix("RABBITMQ_") }
        environment["RABBITMQ_NODENAME"] = nodeName
        environment["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1"
        environment["RABBITMQ_NODE_PORT"] = String(port)
        environment["RABBITMQ_DIST_PORT"] = String(distributionPort)
        environment["RABBITMQ_MNESIA_BASE"] = "\(directory)/mnesia"
        environment["RABBITMQ_LOG_BASE"] = "\(directory)/log"
        environment["RABBITMQ_PID_FILE"] = pidFile
        environment["RABBITMQ_ENABLED_PLUGINS_FILE"] = "\(directory)/enabled_plugins"
        environment["RABBITMQ_CONFIG_FILE"] = "\(directory)/rabbitmq"
        environment["RABBITMQ_ADVANCED_CONFIG_FILE"] = "\(directory)/advanced.config"
        environment["RABBITMQ_CONF_ENV_FILE"] = "\(directory)/rabbitmq-env.conf"
        if let portMapperPort { environment["ERL_EPMD_PORT"] = String(portMapperPort) }
        if environment["HOME"] == nil { environment["HOME"] = "/root" }
        return environment
    }

    /// Starts the node (and its own `epmd` first, if it has one and it is not running) and
    /// waits until the node accepts AMQP connections.
    /// - Throws: `.connectionFailed` if a process exits first, `.timeout` after
    ///   ``Options/startTimeout``; both show the end of its log.
    public func start() async throws {
        var watching: [ChildProcess] = []
        if let portMapperExecutable, let portMapperPort {
            if portMapper.process?.isRunning != true {
                _ = try portMapper.launch(
                    "epmd on port \(portMapperPort)", executable: portMapperExecutable, arguments: ["-port", String(portMapperPort)],
                    environment: options.environment, logPath: "\(directory)/log/epmd.log"
                )
                try await portMapper.waitUntilReady("epmd on port \(portMapperPort)", timeout: .seconds(10), interval: .milliseconds(100)) {
                    await TCPProbe.connect(host: "127.0.0.1", port: portMapperPort, timeout: .seconds(1)) == nil
                }
            }
            if let process = portMapper.process { watching.append(process) }
        }
        // A pid file left by a killed incarnation would name a process that is gone.
        try? FileManager.default.removeItem(atPath: pidFile)
        let what = "RabbitMQ node \(nodeName) on 127.0.0.1:\(port)"
        _ = try node.launch(what, executable: serverScript, arguments: [], environment: environment, logPath: "\(directory)/log/stdout.log")

        var configuration = try AMQPConfiguration(url: url)
        configuration.connectTimeout = .seconds(2)
        configuration.connectionName = options.probeName
        var logger = Logger(label: "gantry.private-rabbitmq")
        logger.logLevel = .critical
        try await node.waitUntilReady(what, timeout: options.startTimeout, interval: .milliseconds(200), watching: watching) {
            guard let client = try? await AMQPClient.connect(configuration, logger: logger) else { return false }
            await client.close()
            return true
        }
    }

    /// Stops the node cleanly (SIGTERM to its `rabbitmq-server` script, which stops the Erlang
    /// VM: clients see `320 CONNECTION_FORCED`) and waits for it. Its `epmd` keeps running for
    /// the next start.
    /// - Throws: `.timeout` when it had to be killed after ``Options/stopGrace``.
    public func stop() async throws {
        let vm = vmPID
        let clean = await node.stop(grace: options.stopGrace)
        // The VM is the script's child, not in a process group of its own: after a SIGKILL of
        // the script it would be left running.
        if let vm, systemKill(vm, 0) == 0 { _ = systemKill(vm, SIGKILL) }
        guard clean else {
            throw GantryError(.timeout, "the private RabbitMQ node \(nodeName) did not stop within \(options.stopGrace.shortDescription) of SIGTERM; killed it")
        }
    }

    /// `kill -9` of the node's Erlang VM: what a crash does. Confirmed persistent messages are
    /// on disk; unacknowledged deliveries come back after the next start.
    public func kill() async {
        guard let script = node.process else { return }
        if let vm = vmPID {
            _ = systemKill(vm, SIGKILL)
            // The script ends once its VM is gone.
            if await script.waitForExit(timeout: .seconds(20)) {
                await node.kill()
                return
            }
        }
        await node.kill()
        if let vm = vmPID, systemKill(vm, 0) == 0 { _ = systemKill(vm, SIGKILL) }
    }

    /// Stops the node cleanly and starts it again on the same ports with the same data.
    public func restart() async throws {
        try await stop()
        try await start()
    }

    /// Stops the node (and its `epmd`) if running, and removes its directory unless `keepFiles`.
    public func shutDown(keepFiles: Bool = false) async {
        try? await stop()
        _ = await portMapper.stop(grace: .seconds(10))
        if !keepFiles { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// The Erlang VM's pid: from the node's pid file, else the script's child.
    private var vmPID: Int32? {
        if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            return pid
        }
        guard let script = node.process?.pid,
              let text = try? String(contentsOfFile: "/proc/\(script)/task/\(script)/children", encoding: .utf8)
        else { return nil }
        return text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }.first
    }
}
