import CRdKafka
import GantryCore
import Logging
import Synchronization

/// An in-process Kafka cluster for development and tests: librdkafka's mock brokers
/// (`rdkafka_mock.h`), which speak the real protocol over TCP: produce, fetch, consumer
/// groups, committed offsets, idempotent producers.
///
/// The mock brokers listen on random loopback ports. Given a `port`, the cluster puts a
/// relay (``KafkaRelay``) in front of them: clients bootstrap from `127.0.0.1:port`, and
/// the relay rewrites the advertised broker addresses so that all their traffic keeps
/// going through it. The relay also creates every topic a client asks about with
/// ``defaultPartitions`` partitions; without a relay, the mock creates unknown topics
/// itself with a fixed 4 partitions.
///
/// Limits of the mock (librdkafka 2.0.2), all of them fine for development and tests but
/// not for anything that must keep data:
/// - everything is in memory and gone when the process exits;
/// - each partition keeps at most 100,000 message sets or 5 MB and silently drops the
///   oldest beyond that: a consumer further behind than that skips records (measured: of
///   8,000 one-kilobyte records in one partition, offsets 2970 onwards were left);
/// - a new consumer group waits 3 s before its first assignment (like the broker setting
///   `group.initial.rebalance.delay.ms`), and a rebalance waits up to the members'
///   `session.timeout.ms` minus one second for every member to rejoin;
/// - only the protocol versions librdkafka itself needs (Metadata v0–2, Fetch v0–11,
///   Produce v0–7, ...): no admin API (CreateTopics, DeleteTopics), no ACLs, no TLS or SASL,
///   so topics are created here (``createTopic(_:partitions:)``) or on first use.
public final class KafkaMockCluster: Sendable {
    /// The address clients should bootstrap from: the relay's `127.0.0.1:port` when a port
    /// was given, otherwise the mock brokers' own list.
    public let bootstrapServers: String
    /// The mock brokers' own `host:port` list (random ports).
    public let mockBootstrapServers: String
    /// The partition count of topics created on demand or by ``createTopic(_:partitions:)``
    /// without a count.
    public let defaultPartitions: Int
    /// The number of mock brokers.
    public let brokerCount: Int

    private let mock: RDKafkaMockHandle
    private let relay: KafkaRelay?

    /// Starts the mock brokers and, with a `port`, the relay in front of them.
    ///
    /// - Parameters:
    ///   - brokers: how many mock brokers; partitions' leaders are spread over them.
    ///   - port: the loopback port to serve on (`0` picks a free one); nil for no relay.
    ///     Further brokers get relay ports picked by the system.
    ///   - defaultPartitions: partitions of topics created on demand.
    /// - Throws: ``GantryError`` with code `configuration` when the port is taken or a
    ///   count is not positive.
    public init(brokers: Int = 1, port: Int? = nil, defaultPartitions: Int = 8, logger: Logger = Logger(label: "gantry.kafka.mock")) throws {
        guard brokers >= 1, brokers <= 64 else {
            throw GantryError(.configuration, "the Kafka dev broker needs 1 to 64 brokers, not \(brokers)")
        }
        guard defaultPartitions >= 1, defaultPartitions <= 10_000 else {
            throw GantryError(.configuration, "the Kafka dev broker's default partition count must be 1 to 10000, not \(defaultPartitions)")
        }
        if let port, !(0...65535).contains(port) {
            throw GantryError(.configuration, "\(port) is not a TCP port")
        }
        let mock = try RDKafkaMockHandle(brokers: brokers, defaultPartitions: defaultPartitions)
        let mockServers = mock.bootstraps
        var relay: KafkaRelay?
        if let port {
            let mockPorts = KafkaConfiguration.splitServers(mockServers).compactMap { server in
                server.split(separator: ":").last.flatMap { UInt16($0) }
            }
            guard mockPorts.count == brokers else {
                mock.destroy()
                throw GantryError(.protocolError, "could not read the mock brokers' ports from '\(mockServers)'")
            }
            let routes = mockPorts.enumerated().map { index, mockPort in
                KafkaRelay.Route(listenPort: index == 0 ? UInt16(port) : 0, targetPort: mockPort)
            }
            do {
                relay = try KafkaRelay(routes: routes, onTopics: { [mock] topics in mock.ensureTopics(topics) }, logger: logger)
            } catch {
                mock.destroy()
                throw error
            }
        }
        self.mock = mock
        self.relay = relay
        self.mockBootstrapServers = mockServers
        self.bootstrapServers = relay.map { "127.0.0.1:\($0.listenPorts[0])" } ?? mockServers
        self.defaultPartitions = defaultPartitions
        self.brokerCount = brokers
    }

    /// The relay ports, one per broker, the first being the bootstrap port; empty without a
    /// relay.
    public var relayPorts: [Int] {
        relay?.listenPorts.map(Int.init) ?? []
    }

    /// Creates a topic now, with `partitions` partitions (default ``defaultPartitions``).
    /// A topic that exists already keeps its partitions.
    ///
    /// Blocks the calling thread until the mock's own thread has created it, so it cannot be
    /// called from async code.
    ///
    /// - Throws: ``GantryError`` with code `invalidArgument` for a name Kafka does not
    ///   accept, or `closed` after ``shutdown()``.
    @available(*, noasync, message: "blocks on the mock cluster's thread; call it from setup code")
    public func createTopic(_ name: String, partitions: Int? = nil) throws {
        try mock.createTopic(name, partitions: partitions ?? defaultPartitions)
    }

    /// Stops the relay and destroys the mock brokers, dropping all their data. Blocks until
    /// the mock's thread has ended. Calling it again does nothing.
    @available(*, noasync, message: "blocks until the mock cluster's thread ends; call it from the process's main thread")
    public func shutdown() {
        relay?.stop()
        mock.destroy()
    }

    deinit {
        relay?.stop()
        mock.destroy()
    }
}
