import Foundation
import GantryCore
import Hummingbird
import Logging
import Prometheus
import ServiceLifecycle
import Synchronization

/// The HTTP server of a Gantry process: `/healthz` (the process is up), `/readyz` (its
/// dependencies answer, per the host's ``ReadinessProbe``) and `/metrics` (Prometheus text), plus
/// any routes the host adds (the coordinator's dashboard).
///
/// A `Service`: list it first in the process's `ServiceGroup` so it starts before and stops after
/// the services it reports on. Once listening it logs its address, writes it to
/// ``ObservabilityConfiguration/portFile`` when set, and makes it available as ``boundAddress``.
public final class ObservabilityServer: Service, Sendable {
    private let configuration: ObservabilityConfiguration
    private let listen: ListenAddress
    private let responder: RouterResponder<BasicRequestContext>
    private let bound: BoundAddress
    private let logger: Logger

    /// Creates a server on `configuration.listen` (which must be set).
    ///
    /// - Parameters:
    ///   - registry: what `/metrics` renders (see ``GantryMetrics/bootstrap()``).
    ///   - readiness: asked on every `/readyz`.
    ///   - routes: adds the host's own routes.
    public init(
        configuration: ObservabilityConfiguration, registry: PrometheusCollectorRegistry = GantryMetrics.bootstrap(),
        readiness: @escaping ReadinessProbe, logger: Logger, routes: (Router<BasicRequestContext>) -> Void = { _ in }
    ) throws {
        guard let listen = configuration.listen else {
            throw GantryError(.configuration, "\(configuration.origin) is off: there is no address to serve on")
        }
        self.configuration = configuration
        self.listen = listen
        self.logger = logger
        let bound = BoundAddress()
        self.bound = bound

        let router = Router(context: BasicRequestContext.self)
        router.get("/healthz") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: "ok\n")))
        }
        router.get("/readyz") { _, _ in
            let report = await readiness()
            let body = String(decoding: report.json.jsonBytes, as: UTF8.self) + "\n"
            return Response(
                status: report.isReady ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: body))
            )
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer()))
            )
        }
        routes(router)

        responder = router.buildResponder()
    }

    private func application(on address: ListenAddress) -> Application<RouterResponder<BasicRequestContext>> {
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .notice)  // no line per request
        let portFile = configuration.portFile
        let bound = self.bound
        let logger = self.logger
        return Application(
            responder: responder,
            configuration: ApplicationConfiguration(address: .hostname(address.host, port: address.port), serverName: nil),
            onServerRunning: { channel in
                let actual = ListenAddress(host: address.host, port: channel.localAddress?.port ?? address.port)
                bound.set(actual)
                logger.info("observability server listening", metadata: [
                    "address": .string(actual.description), "metrics": .string("http://\(actual)/metrics"),
                ])
                if let portFile {
                    do {
                        try Self.writeAtomically(actual.description + "\n", to: portFile)
                    } catch {
                        logger.error("cannot write observability.port_file '\(portFile)': \(error)")
                    }
                }
            },
            logger: quiet
        )
    }

    /// The address the server listens on, once it does.
    public var boundAddress: ListenAddress? { bound.get() }

    /// Waits until the server listens and returns its address.
    ///
    /// - Throws: `.timeout` if it is not listening within `timeout`.
    public func waitUntilListening(timeout: Duration = .seconds(10)) async throws -> ListenAddress {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let address = bound.get() { return address }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw GantryError(.timeout, "the observability server did not start listening on \(listen) within \(timeout.shortDescription)")
    }

    /// Serves until graceful shutdown or cancellation.
    ///
    /// - Throws: `.configuration` naming the setting when the address cannot be bound.
    public func run() async throws {
        do {
            try await application(on: listen).run()
        } catch where bound.get() == nil && configuration.fallbackToAnyPort && listen.port != 0 {
            logger.warning("cannot listen on \(listen) (\(error)); it is the default address, so listening on any free port instead")
            try await serve(on: ListenAddress(host: listen.host, port: 0))
        } catch {
            throw bindFailure(error)
        }
    }

    private func serve(on address: ListenAddress) async throws {
        do {
            try await application(on: address).run()
        } catch {
            throw bindFailure(error)
        }
    }

    /// A failure before the server listened is about the address: say which setting gave it.
    private func bindFailure(_ error: any Error) -> any Error {
        guard bound.get() == nil else { return error }
        return GantryError(
            .configuration,
            "cannot listen on \(listen) (\(configuration.origin)): \(error); choose a free port, or port 0 for any free one",
            underlying: error
        )
    }

    private static func writeAtomically(_ text: String, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: url, options: .atomic)
    }
}

/// The address a server bound, shared with its start callback.
private final class BoundAddress: Sendable {
    private let address = Mutex<ListenAddress?>(nil)
    func set(_ value: ListenAddress) { address.withLock { $0 = value } }
    func get() -> ListenAddress? { address.withLock { $0 } }
}
