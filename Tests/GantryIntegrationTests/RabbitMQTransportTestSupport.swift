import Foundation
import GantryAMQP
import GantryCore
import GantryRuntime
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Plumbing of the RabbitMQ transport tests: transports on the shared `ops/stack` broker whose
/// queues are deleted afterwards, and a private broker node for tests that restart it.
enum RabbitMQTransportTestSupport {
    /// A transport configuration on the broker of `GANTRY_AMQP_URL` (default: `ops/stack`).
    static func configuration(name: String = "gantry-tests-transport", url: String? = nil) throws -> RabbitMQTransportConfiguration {
        var amqp = try url.map { try AMQPConfiguration(url: $0) } ?? AMQPTestSupport.configuration(name: name)
        amqp.connectionName = name
        // Short waits between attempts keep restart tests quick; the deadline stays generous.
        return RabbitMQTransportConfiguration(amqp: amqp, reconnectBackoffInitial: .milliseconds(50), reconnectBackoffMax: .milliseconds(500), reconnectTimeout: .seconds(90))
    }

    /// A queue name no other test, run or engineer uses.
    static func uniqueQueue(_ purpose: String) -> String {
        "gantry-test.\(purpose).\(UUID().uuidString.lowercased())"
    }

    /// Runs `body` with a transport, then closes it and deletes `queues` and their dead-letter
    /// queues from the broker, whether `body` succeeded or not.
    static func withTransport<T: Sendable>(
        _ configuration: RabbitMQTransportConfiguration? = nil,
        deleting queues: [String],
        _ body: (RabbitMQTransport) async throws -> T
    ) async throws -> T {
        let configuration = try configuration ?? self.configuration()
        let transport = try await RabbitMQTransport.connect(configuration)
        let result: Result<T, any Error>
        do {
            result = .success(try await body(transport))
        } catch {
            result = .failure(error)
        }
        await transport.close()
        await deleteQueues(queues, configuration: configuration)
        return try result.get()
    }

    /// Deletes the broker queues behind the application queues `queues` and their `.dlq`s.
    static func deleteQueues(_ queues: [String], configuration: RabbitMQTransportConfiguration) async {
        guard !queues.isEmpty else { return }
        var amqp = configuration.amqp
        amqp.connectionName = "gantry-tests-cleanup"
        guard let janitor = try? await AMQPClient.connect(amqp) else { return }
        for queue in Set(queues.flatMap { [$0, $0 + ".dlq"] }) {
            _ = try? await janitor.deleteQueue(configuration.queuePrefix + queue)
        }
        await janitor.close()
    }

    /// Waits until `condition` holds, failing with `.timeout` after `timeout`.
    static func eventually(_ what: String, timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while try await !condition() {
            guard ContinuousClock.now < deadline else {
                throw GantryError(.timeout, "\(what): still not true after \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// The connection id half of a delivery token: which connection of its consumer it came through.
    static func generation(_ delivery: Delivery) -> UInt32 {
        UInt32(truncatingIfNeeded: delivery.token.consumer)
    }

    static func text(_ delivery: Delivery) -> String { String(decoding: delivery.body, as: UTF8.self) }
}

/// The RabbitMQ transport as the conformance suite runs it: a ``RabbitMQTransport`` on the
/// shared broker that remembers every queue it touched and deletes them (with their `.dlq`s)
/// when closed, so the suite leaves nothing behind.
final class RabbitMQConformanceTransport: TaskTransport {
    let name = "rabbitmq"
    private let transport: RabbitMQTransport
    private let touched = Mutex<Set<String>>([])

    private init(_ transport: RabbitMQTransport) {
        self.transport = transport
    }

    static func make() async throws -> RabbitMQConformanceTransport {
        RabbitMQConformanceTransport(try await RabbitMQTransport.connect(RabbitMQTransportTestSupport.configuration(name: "gantry-tests-conformance")))
    }

    private func touch(_ queues: [String]) {
        touched.withLock { $0.formUnion(queues) }
    }

    func declare(queues: [String]) async throws {
        touch(queues)
        try await transport.declare(queues: queues)
    }

    func publish(_ messages: [OutgoingMessage], to queue: String) async throws {
        touch([queue])
        try await transport.publish(messages, to: queue)
    }

    func consume(queues: [String], credit: Int) async throws -> DeliveryStream {
        touch(queues)
        return try await transport.consume(queues: queues, credit: credit)
    }

    func ack(_ delivery: Delivery) async throws { try await transport.ack(delivery) }
    func nack(_ delivery: Delivery, requeue: Bool) async throws { try await transport.nack(delivery, requeue: requeue) }
    func deadLetter(_ delivery: Delivery, reason: String) async throws { try await transport.deadLetter(delivery, reason: reason) }
    func depth(of queue: String) async throws -> Int? { try await transport.depth(of: queue) }

    func close() async {
        await transport.close()
        await RabbitMQTransportTestSupport.deleteQueues(Array(touched.withLock { $0 }), configuration: transport.configuration)
    }
}

/// A RabbitMQ node of its own, for tests that stop and restart the broker: the shared
/// `ops/stack` node is used by other tests at the same time and must never be restarted.
///
/// Same environment style as `ops/lib/common.sh`: its own node name, AMQP port and Erlang
/// distribution port (both free and distinct), and every file under a temporary directory.
/// Only the processes it started are ever signalled, by their ids.
final class PrivateRabbitMQ: Sendable {
    /// `amqp://guest:guest@127.0.0.1:<port>/`.
    let url: String
    let nodeName: String
    let port: Int
    let distributionPort: Int
    /// The `amqps` port when started with TLS, and the CA that signs its certificate.
    let tlsPort: Int?
    let caCertificatePath: String?
    let directory: URL

    /// The `rabbitmq-server` wrapper script process of the running incarnation.
    private let server = Mutex<Int32?>(nil)

    private static let serverScript = "/usr/lib/rabbitmq/bin/rabbitmq-server"

    /// Whether this machine has a RabbitMQ installation to start nodes from.
    static let isAvailable = FileManager.default.isExecutableFile(atPath: serverScript)

    /// Prepares the node's files and starts it; returns once it accepts AMQP connections.
    ///
    /// - Parameter tls: also listen for `amqps` on ``tlsPort`` with a certificate for
    ///   `localhost` signed by a throwaway CA (``caCertificatePath``), made with openssl.
    static func start(tls: Bool = false) async throws -> PrivateRabbitMQ {
        let broker = try PrivateRabbitMQ(tls: tls)
        do {
            if tls { try await broker.makeCertificates() }
            try await broker.startNode()
        } catch {
            await broker.shutDown()
            throw error
        }
        return broker
    }

    private init(tls: Bool) throws {
        let id = UUID().uuidString.prefix(8).lowercased()
        nodeName = "gantry-test-\(id)@localhost"
        let ports = try TCPProbe.freeLoopbackPorts(3)
        port = ports[0]
        distributionPort = ports[1]
        tlsPort = tls ? ports[2] : nil
        url = "amqp://guest:guest@127.0.0.1:\(port)/"
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-rabbitmq-\(id)")
        caCertificatePath = tls ? directory.appendingPathComponent("ca.pem").path : nil
        for sub in ["mnesia", "log"] {
            try FileManager.default.createDirectory(at: directory.appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        try "[].\n".write(to: directory.appendingPathComponent("enabled_plugins"), atomically: true, encoding: .utf8)
        var settings = """
            loopback_users = none
            vm_memory_high_watermark.relative = 0.2
            disk_free_limit.absolute = 50MB

            """
        if let tlsPort {
            let path = directory.path
            settings += """
                listeners.ssl.1 = 127.0.0.1:\(tlsPort)
                ssl_options.cacertfile = \(path)/ca.pem
                ssl_options.certfile = \(path)/server.pem
                ssl_options.keyfile = \(path)/server.key
                ssl_options.verify = verify_none
                ssl_options.fail_if_no_peer_cert = false

                """
        }
        try settings.write(to: directory.appendingPathComponent("rabbitmq.conf"), atomically: true, encoding: .utf8)
    }

    /// A throwaway CA and a server certificate for `localhost` signed by it.
    private func makeCertificates() async throws {
        let path = directory.path
        try "subjectAltName=DNS:localhost\n".write(toFile: "\(path)/san.ext", atomically: true, encoding: .utf8)
        let steps = [
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=gantry-test-ca", "-keyout", "\(path)/ca.key", "-out", "\(path)/ca.pem"],
            ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", "/CN=localhost", "-keyout", "\(path)/server.key", "-out", "\(path)/server.csr"],
            ["x509", "-req", "-in", "\(path)/server.csr", "-CA", "\(path)/ca.pem", "-CAkey", "\(path)/ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "\(path)/san.ext", "-out", "\(path)/server.pem"],
        ]
        for arguments in steps {
            let status = await Self.run("/usr/bin/openssl", arguments, log: "\(path)/log/openssl.log")
            guard status == 0 else {
                let log = (try? String(contentsOfFile: "\(path)/log/openssl.log", encoding: .utf8)) ?? ""
                throw GantryError(.configuration, "openssl \(arguments[0]) failed with status \(status): \(log.suffix(1000))")
            }
        }
    }

    /// Runs a short command on a thread of its own (it blocks while the command runs).
    private static func run(_ executable: String, _ arguments: [String], log: String) async -> Int32 {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: executable)
                process.arguments = arguments
                _ = FileManager.default.createFile(atPath: log, contents: nil)
                let output = FileHandle(forWritingAtPath: log)
                process.standardOutput = output
                process.standardError = output
                do {
                    try process.run()
                    process.waitUntilExit()
                    continuation.resume(returning: process.terminationStatus)
                } catch {
                    continuation.resume(returning: -1)
                }
            }
        }
    }

    private var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
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

    /// Starts an incarnation of the node and waits until it accepts AMQP connections.
    func startNode() async throws {
        let pid = try spawnServer()
        server.withLock { $0 = pid }
        try await waitUntilReachable()
    }

    /// Starts `rabbitmq-server` with the node's environment, output appended to `log/stdout.log`.
    ///
    /// posix_spawn with an empty signal mask and default dispositions: the calling thread may be
    /// a pool thread that blocks SIGTERM, and the wrapper script would inherit that and never
    /// run its TERM trap, so the node could not be stopped gracefully.
    private func spawnServer() throws -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let log = directory.appendingPathComponent("log/stdout.log").path
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
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

        let arguments = [Self.serverScript]
        let environment = self.environment.map { "\($0.key)=\($0.value)" }
        // strdup'd C strings for posix_spawn, freed right after it returns (it copies them).
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, Self.serverScript, &actions, &attributes, argv, envp)
        guard rc == 0 else {
            throw GantryError(.configuration, "cannot start \(Self.serverScript): \(String(cString: strerror(rc)))")
        }
        return pid
    }

    /// Stops the running incarnation (SIGTERM to the wrapper we started, which stops the
    /// Erlang VM gracefully: clients see `320 CONNECTION_FORCED`), and waits for it to exit.
    func stopNode() async throws {
        guard let pid = server.withLock({ state -> Int32? in defer { state = nil }; return state }) else { return }
        kill(pid, SIGTERM)
        let exited = await Self.waitForExit(pid, timeout: .seconds(60))
        if !exited {
            // The VM ignored the request: kill the VM our wrapper started, then the wrapper.
            if let text = try? String(contentsOf: directory.appendingPathComponent("rabbitmq.pid"), encoding: .utf8),
               let vm = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                kill(vm, SIGKILL)
            }
            kill(pid, SIGKILL)
            _ = await Self.waitForExit(pid, timeout: .seconds(10))
            throw GantryError(.timeout, "the private RabbitMQ node \(nodeName) did not stop within 60 s of SIGTERM; killed it")
        }
    }

    /// Stops and starts the node again with the same data: durable queues and persistent
    /// messages survive, connections do not.
    func restart() async throws {
        try await stopNode()
        try await startNode()
    }

    /// Stops the node (if running) and removes its files.
    func shutDown() async {
        try? await stopNode()
        try? FileManager.default.removeItem(at: directory)
    }

    private func waitUntilReachable(timeout: Duration = .seconds(90)) async throws {
        var configuration = try AMQPConfiguration(url: url)
        configuration.connectTimeout = .seconds(2)
        configuration.connectionName = "gantry-tests-probe"
        let deadline = ContinuousClock.now + timeout
        while true {
            if let client = try? await AMQPClient.connect(configuration) {
                await client.close()
                return
            }
            let pid = server.withLock { $0 }
            if let pid, await Self.waitForExit(pid, timeout: .zero) {
                let log = (try? String(contentsOf: directory.appendingPathComponent("log/stdout.log"), encoding: .utf8)) ?? ""
                throw GantryError(.connectionFailed, "the private RabbitMQ node \(nodeName) exited while starting: \(log.suffix(2000))")
            }
            guard ContinuousClock.now < deadline else {
                throw GantryError(.timeout, "the private RabbitMQ node \(nodeName) did not accept connections on port \(port) within \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// Reaps `pid` if it exited, polling until `timeout`; true once it is gone.
    private static func waitForExit(_ pid: Int32, timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            var status: Int32 = 0
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid || (reaped == -1 && errno == ECHILD) { return true }
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}
