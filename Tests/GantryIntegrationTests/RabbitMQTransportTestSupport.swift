import Foundation
import GantryAMQP
import GantryCore
import GantryRuntime
import Synchronization
import Testing

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

/// Private RabbitMQ nodes for tests that stop and restart the broker: the shared `ops/stack`
/// node is used by other tests at the same time and must never be restarted.
extension PrivateRabbitMQ {
    /// Starts a node under a temporary directory; returns once it accepts AMQP connections.
    ///
    /// - Parameter tls: also listen for `amqps` on ``tlsPort`` with a certificate for
    ///   `localhost` signed by a throwaway CA (``caCertificatePath``), made with openssl.
    static func start(tls: Bool = false) async throws -> PrivateRabbitMQ {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-rabbitmq-\(UUID().uuidString.prefix(8).lowercased())").path
        var options = Options(nodePrefix: "gantry-test", startTimeout: .seconds(90), probeName: "gantry-tests-probe")
        do {
            if tls { options.tls = try await makeCertificates(in: directory + "/tls") }
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        let broker = try PrivateRabbitMQ(directory: directory, options: options)
        do {
            try await broker.start()
        } catch {
            await broker.shutDown()
            throw error
        }
        return broker
    }

    /// The CA that signs the `amqps` listener's certificate, when started with TLS.
    var caCertificatePath: String? { options.tls?.caCertificate }

    /// A throwaway CA and a server certificate for `localhost` signed by it, in `path`.
    private static func makeCertificates(in path: String) async throws -> TLS {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
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
            let status = await run("/usr/bin/openssl", arguments, log: "\(path)/openssl.log")
            guard status == 0 else {
                let log = (try? String(contentsOfFile: "\(path)/openssl.log", encoding: .utf8)) ?? ""
                throw GantryError(.configuration, "openssl \(arguments[0]) failed with status \(status): \(log.suffix(1000))")
            }
        }
        return TLS(caCertificate: "\(path)/ca.pem", certificate: "\(path)/server.pem", key: "\(path)/server.key")
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
}
