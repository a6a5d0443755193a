import Foundation
import GantryCore
import GantryStore
import Hummingbird
import Logging

extension ObservabilityServer {
    /// The server of a Gantry process of `kind`, from its settings: bootstraps the Prometheus
    /// metrics backend, names the process in `gantry_process_info`, and answers `/readyz` with
    /// whether Redis and the broker respond (asking the broker about `readinessQueue`). Nil when
    /// the process's listen setting is `off`.
    public static func forProcess(
        _ kind: ObservabilityConfiguration.ProcessKind, id: String, settings: GantrySettings, store: RedisStateStore,
        transport: any TaskTransport, readinessQueue: String, logger: Logger, routes: (Router<BasicRequestContext>) -> Void = { _ in }
    ) throws -> ObservabilityServer? {
        let configuration = try ObservabilityConfiguration(settings: settings, process: kind)
        guard configuration.listen != nil else {
            logger.info("observability server off (\(configuration.origin))")
            return nil
        }
        let registry = GantryMetrics.bootstrap()
        GantryMetrics.describeProcess(kind: kind.rawValue, id: id)
        let readiness = Readiness.probe([Readiness.redis(store), Readiness.broker(transport, queue: readinessQueue)])
        return try ObservabilityServer(configuration: configuration, registry: registry, readiness: readiness, logger: logger, routes: routes)
    }

    /// The bound address as others can reach it: a wildcard host (`0.0.0.0`, `::`) is replaced
    /// by this machine's host name. Nil until listening.
    public var advertisedAddress: String? {
        guard let address = boundAddress else { return nil }
        guard address.host == "0.0.0.0" || address.host == "::" else { return address.description }
        return "\(ProcessInfo.processInfo.hostName):\(address.port)"
    }
}
