import Foundation
import GantryAMQP
import GantryCore
import GantryRuntime
import GantryRedis
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A Redis server of a fault-injection run's own, on a free port with its files under the
/// run's directory, started the way `ops/stack` starts the shared one (AOF on, `appendfsync
/// everysec`). The shared servers other engineers use are never touched.
final class PrivateRedis: Sendable {
    let port: Int
    let directory: URL
    var url: String { "redis://127.0.0.1:\(port)" }
    private let server = LockedBox<ChildProcess?>(nil)

    init(directory: URL) throws {
        self.directory = directory
        port = try TCPProbe.freeLoopbackPort()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    /// Starts the server (loading its AOF, if any) and waits until it answers PING.
    func start() async throws {
        let process = try ChildProcess.spawnTracked(
            name: "redis", executable: "/usr/bin/redis-server",
            arguments: ["--bind", "127.0.0.1", "--port", String(port), "--dir", directory.path, "--appendonly", "yes",
                        "--appendfsync", "everysec", "--save", "", "--protected-mode", "yes", "--daemonize", "no"],
            environment: ProcessInfo.processInfo.environment, logPath: directory.appendingPathComponent("redis.log").path
        )
        server.value = process
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            if let client = try? RedisClient(configuration: RedisConfiguration(url: url)) {
                let pong = try? await client.send("PING")
                client.close()
                if pong?.string == "PONG" { return }
            }
            guard process.isRunning else {
                throw GantryError(.connectionFailed, "the private Redis on port \(port) exited while starting: \(process.logTail())")
            }
            guard ContinuousClock.now < deadline else { throw GantryError(.timeout, "the private Redis on port \(port) did not answer within 30 s") }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// `kill -9` of the server: what a crash does. Writes it acknowledged are in its AOF.
    func crash() async {
        await server.value?.killNow()
        server.value = nil
    }

    /// Stops the server and removes its files.
    func shutDown(keepFiles: Bool) async {
        await server.value?.terminate(grace: .seconds(10))
        server.value = nil
        if !keepFiles { try? FileManager.default.removeItem(at: directory) }
    }
}

/// A RabbitMQ node of a fault-injection run's own (own node name, AMQP and distribution
/// ports, files under the run's directory), in the environment style of `ops/lib/common.sh`.
final class PrivateRabbitMQ: Sendable {
    let port: Int
    let distributionPort: Int
    let nodeName: String
    let directory: URL
    var url: String { "amqp://guest:guest@127.0.0.1:\(port)/" }
    private let server = LockedBox<ChildProcess?>(nil)
    private static let serverScript = "/usr/lib/rabbitmq/bin/rabbitmq-server"

    init(directory: URL, tag: String) throws {
        self.directory = directory
        let ports = try TCPProbe.freeLoopbackPorts(2)
        port = ports[0]
        distributionPort = ports[1]
        nodeName = "gantry-chaos-\(tag)@localhost"
        for sub in ["mnesia", "log"] {
            try FileManager.default.createDirectory(at: directory.appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        try "[].\n".write(to: directory.appendingPathComponent("enabled_plugins"), atomically: true, encoding: .utf8)
        try """
            loopback_users = none
            vm_memory_high_watermark.relative = 0.2
            disk_free_limit.absolute = 50MB

            """.write(to: directory.appendingPathComponent("rabbitmq.conf"), atomically: true, encoding: .utf8)
    }

    private var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("RABBITMQ_") }
        let path = directory.path
        environment["RABBITMQ_NODENAME"] = nodeName
        environment["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1"
        environment["RABBITMQ_NODE_PORT"] = String(port)
        environment["RABBITMQ_DIST_PORT"] = String(distributionPort)
        environment["RABBITMQ_MNESIA_BASE"] = "\(path)/mnesia"
        environment["RABBITMQ_LOG_BASE"] = "\(path)/log"
        environment["RABBITMQ_PID_FILE"] = "\(path)/rabbitmq.pid"
        environment["RABBITMQ_ENABLED_PLUGINS_FILE"] = "\(path)/enabled_plugins"
        environment["RABBITMQ_CONFIG_FILE"] = "\(path)/rabbitmq"
        environment["RABBITMQ_ADVANCED_CONFIG_FILE"] = "\(path)/advanced.config"
        environment["RABBITMQ_CONF_ENV_FILE"] = "\(path)/rabbitmq-env.conf"
        if environment["HOME"] == nil { environment["HOME"] = "/root" }
        return environment
    }

    /// Starts the node and waits until it accepts AMQP connections.
    func start() async throws {
        guard FileManager.default.isExecutableFile(atPath: Self.serverScript) else {
            throw GantryError(.configuration, "\(Self.serverScript) is missing: install rabbitmq-server (ops/bootstrap does)")
        }
        let process = try ChildProcess.spawnTracked(
            name: "rabbitmq", executable: Self.serverScript, arguments: [], environment: environment,
            logPath: directory.appendingPathComponent("log/stdout.log").path
        )
        server.value = process
        var configuration = try AMQPConfiguration(url: url)
        configuration.connectTimeout = .seconds(2)
        configuration.connectionName = "gantry-chaos-probe"
        let deadline = ContinuousClock.now + .seconds(120)
        while true {
            if let client = try? await AMQPClient.connect(configuration) {
                await client.close()
                return
            }
            guard process.isRunning else {
                throw GantryError(.connectionFailed, "the private RabbitMQ node \(nodeName) exited while starting: \(process.logTail())")
            }
            guard ContinuousClock.now < deadline else {
                throw GantryError(.timeout, "the private RabbitMQ node \(nodeName) did not accept connections on port \(port) within 120 s")
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// The Erlang VM's pid, from the node's pid file.
    private var vmPID: Int32? {
        (try? String(contentsOf: directory.appendingPathComponent("rabbitmq.pid"), encoding: .utf8))
            .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// Stops the node: `kill -9` of its Erlang VM when `hard` (a crash: confirmed persistent
    /// messages are on disk, unacknowledged deliveries come back), else SIGTERM to the
    /// wrapper (a clean stop: clients see CONNECTION_FORCED).
    func stop(hard: Bool) async {
        guard let process = server.value else { return }
        if hard, let vm = vmPID {
            kill(vm, SIGKILL)
            if !(await process.waitForExit(timeout: .seconds(20))) { await process.killNow() }
        } else {
            await process.terminate(grace: .seconds(60))
            if let vm = vmPID, kill(vm, 0) == 0 { kill(vm, SIGKILL) }
        }
        ProcessRegistry.shared.remove(process)
        server.value = nil
    }

    /// Stops the node (cleanly) and removes its files.
    func shutDown(keepFiles: Bool) async {
        await stop(hard: false)
        if !keepFiles { try? FileManager.default.removeItem(at: directory) }
    }
}

/// A value behind a lock, for the servers' current process.
final class LockedBox<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>
    init(_ value: Value) { storage = Mutex(value) }
    var value: Value {
        get { storage.withLock { $0 } }
        set { storage.withLock { $0 = newValue } }
    }
}
