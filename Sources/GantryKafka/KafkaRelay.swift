#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import GantryCore
import Logging
import Synchronization

/// A TCP relay in front of librdkafka's mock brokers, which only listen on random ports.
///
/// Each mock broker gets one loopback listener (the first on the port the user asked for)
/// and every accepted connection is relayed to it both ways. The relay understands just
/// enough of the Kafka protocol (``KafkaWire``) to do two things a plain byte pipe cannot:
///
/// - it rewrites the broker ports in Metadata and FindCoordinator responses to the relay's
///   own, so clients never learn the mock's random ports and every later connection comes
///   through the relay too;
/// - it reports the topic names of every Metadata request before forwarding it, so the dev
///   broker can create an unknown topic with its own default partition count before the
///   mock auto-creates it with its fixed four.
///
/// Every connection costs two threads that block in `read`; that is fine for a development
/// broker with tens of clients, and keeps the code straight-line.
final class KafkaRelay: Sendable {
    /// One listener: where clients connect, and the mock broker port it relays to.
    struct Route: Sendable {
        var listenPort: UInt16
        var targetPort: UInt16
    }

    /// The bound ports, in the order of the routes given to `init`.
    let listenPorts: [UInt16]
    private let listeners: [Int32]
    private let portMap: [Int32: Int32]
    private let onTopics: @Sendable ([String]) -> Void
    private let logger: Logger
    private let state = Mutex(RelayState())

    private struct RelayState {
        var stopped = false
        var nextConnectionID = 0
        var connections: [Int: RelayConnection] = [:]
    }

    /// Binds every listener; fails without leaving any open when one port is taken.
    ///
    /// - Parameter onTopics: called, on a relay thread, with the topics of each Metadata
    ///   request before the request is forwarded.
    init(routes: [Route], onTopics: @escaping @Sendable ([String]) -> Void, logger: Logger) throws {
        var listeners: [Int32] = []
        var ports: [UInt16] = []
        do {
            for route in routes {
                let (fd, port) = try Self.makeListener(port: route.listenPort)
                listeners.append(fd)
                ports.append(port)
            }
        } catch {
            for fd in listeners { close(fd) }
            throw error
        }
        var map: [Int32: Int32] = [:]
        for (route, port) in zip(routes, ports) { map[Int32(route.targetPort)] = Int32(port) }
        self.listeners = listeners
        self.listenPorts = ports
        self.portMap = map
        self.onTopics = onTopics
        self.logger = logger
        for (index, fd) in listeners.enumerated() {
            let target = routes[index].targetPort
            KafkaThread.start(name: "gantry-relay-acc") { [self] in
                self.acceptLoop(listener: fd, targetPort: target)
            }
        }
    }

    /// Stops accepting and cuts every relayed connection. The threads end on their own.
    func stop() {
        let connections: [RelayConnection]? = state.withLock { state in
            guard !state.stopped else { return nil }
            state.stopped = true
            return Array(state.connections.values)
        }
        guard let connections else { return }
        // shutdown (not close) wakes the thread blocked in accept(); it closes the fd itself.
        for fd in listeners { _ = shutdown(fd, Int32(SHUT_RDWR)) }
        for connection in connections { connection.cut() }
    }

    deinit {
        stop()
    }

    // MARK: Sockets

    private static func makeListener(port: UInt16) throws -> (Int32, UInt16) {
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else {
            throw GantryError(.configuration, "could not create a socket for the Kafka dev broker: \(errnoText())")
        }
        var one: Int32 = 1
        // A restarted dev broker must get its port back while old connections sit in TIME_WAIT.
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = loopback(port: port)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            let reason = errnoText()
            close(fd)
            throw GantryError(
                .configuration,
                "could not listen on 127.0.0.1:\(port) for the Kafka dev broker: \(reason); stop whatever uses the port (ops/stack down kafka) or pass another --port"
            )
        }
        guard listen(fd, 128) == 0 else {
            let reason = errnoText()
            close(fd)
            throw GantryError(.configuration, "could not listen on 127.0.0.1:\(port): \(reason)")
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return (fd, UInt16(bigEndian: actual.sin_port))
    }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }

    private static func connectLoopback(port: UInt16) -> Int32? {
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { return nil }
        var address = loopback(port: port)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            close(fd)
            return nil
        }
        noDelay(fd)
        return fd
    }

    private static func noDelay(_ fd: Int32) {
        var one: Int32 = 1
        // Kafka requests are small and latency-bound; Nagle would hold them back.
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    // MARK: Threads

    private func acceptLoop(listener: Int32, targetPort: UInt16) {
        defer { close(listener) }
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if !state.withLock({ $0.stopped }) {
                    logger.error("Kafka dev broker stopped accepting connections: \(errnoText())")
                }
                return
            }
            Self.noDelay(client)
            guard let upstream = Self.connectLoopback(port: targetPort) else {
                logger.error("Kafka dev broker could not reach its mock broker on 127.0.0.1:\(targetPort): \(errnoText())")
                close(client)
                continue
            }
            let connection = RelayConnection(client: client, upstream: upstream)
            let id: Int? = state.withLock { state in
                guard !state.stopped else { return nil }
                let id = state.nextConnectionID
                state.nextConnectionID += 1
                state.connections[id] = connection
                return id
            }
            guard let id else {
                connection.cut()
                _ = connection.pumpFinished()
                _ = connection.pumpFinished()
                return
            }
            KafkaThread.start(name: "gantry-relay-up") { [self] in
                self.pumpRequests(connection)
                self.finished(connection, id: id)
            }
            KafkaThread.start(name: "gantry-relay-dn") { [self] in
                self.pumpResponses(connection)
                self.finished(connection, id: id)
            }
        }
    }

    private func finished(_ connection: RelayConnection, id: Int) {
        // Either direction ending ends the connection: the other thread is woken by the cut.
        connection.cut()
        if connection.pumpFinished() {
            _ = state.withLock { $0.connections.removeValue(forKey: id) }
        }
    }

    /// Client to broker: forwards frames, noting Metadata and FindCoordinator requests so
    /// their responses can be rewritten, and reporting the topics Metadata asks about.
    private func pumpRequests(_ connection: RelayConnection) {
        var io = FrameIO()
        while let sizeBytes = io.readExact(connection.client, count: 4) {
            let size = Int(KafkaWire.int32(sizeBytes) ?? -1)
            guard size >= 0, size <= FrameIO.maxFrame else { return }
            guard size >= 8, let head = io.readExact(connection.client, count: 8),
                let header = KafkaWire.requestHeader(head)
            else {
                // Too short to be a request we care about: relay what is there as it is.
                guard io.writeFrame(connection.upstream, sizeBytes), io.copy(from: connection.client, to: connection.upstream, count: size) else { return }
                continue
            }
            if header.apiKey == KafkaWire.metadataKey || header.apiKey == KafkaWire.findCoordinatorKey {
                // Noted before forwarding: the response cannot arrive earlier.
                connection.expect(header)
            }
            if header.apiKey == KafkaWire.metadataKey {
                guard let rest = io.readExact(connection.client, count: size - 8) else { return }
                let body = head + rest
                let topics = KafkaWire.metadataRequestTopics(body, apiVersion: header.apiVersion).filter(KafkaWire.isValidTopicName)
                if !topics.isEmpty { onTopics(topics) }
                guard io.writeFrame(connection.upstream, sizeBytes + body) else { return }
            } else {
                guard io.writeFrame(connection.upstream, sizeBytes + head),
                    io.copy(from: connection.client, to: connection.upstream, count: size - 8)
                else { return }
            }
        }
    }

    /// Broker to client: forwards frames, rewriting broker ports in the responses noted by
    /// ``pumpRequests(_:)``.
    private func pumpResponses(_ connection: RelayConnection) {
        var io = FrameIO()
        while let sizeBytes = io.readExact(connection.upstream, count: 4) {
            let size = Int(KafkaWire.int32(sizeBytes) ?? -1)
            guard size >= 4, size <= FrameIO.maxFrame, let correlation = io.readExact(connection.upstream, count: 4) else { return }
            let correlationID = KafkaWire.int32(correlation) ?? 0
            guard let request = connection.take(correlationID) else {
                guard io.writeFrame(connection.client, sizeBytes + correlation),
                    io.copy(from: connection.upstream, to: connection.client, count: size - 4)
                else { return }
                continue
            }
            guard let rest = io.readExact(connection.upstream, count: size - 4) else { return }
            var body = correlation + rest
            // Ports are fixed-width, so the frame keeps its size.
            let rewritten: Int?
            if request.apiKey == KafkaWire.metadataKey {
                rewritten = KafkaWire.rewriteMetadataResponse(&body, apiVersion: request.apiVersion, ports: portMap)
            } else {
                rewritten = KafkaWire.rewriteFindCoordinatorResponse(&body, apiVersion: request.apiVersion, ports: portMap)
            }
            if rewritten == nil {
                logger.warning("Kafka dev broker passed an unparsed response through (api \(request.apiKey) v\(request.apiVersion)); the client may connect to the mock broker directly")
            }
            guard io.writeFrame(connection.client, sizeBytes + body) else { return }
        }
    }
}
