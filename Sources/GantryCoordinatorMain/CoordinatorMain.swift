import ArgumentParser
import Foundation
import GantryCoordinator
import GantryCore
import GantryDashboard
import GantryObservability
import GantryRuntime
import GantryStore
import Logging
import ServiceLifecycle

/// `gantry-coordinator`: keeps runs moving; one of any number leads, the others stand by. Serves
/// `/healthz`, `/readyz`, `/metrics` and the web dashboard on `observability.coordinator_listen`.
@main
struct CoordinatorMain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gantry-coordinator",
        abstract: "Re-queue lost tasks, publish due retries and enforce deadlines, as leader or standby, until SIGTERM."
    )

    @Option(help: "Configuration file (default: $GANTRY_CONFIG, else config/gantry.yaml when present).")
    var config: String?

    @Option(help: "rabbitmq, kafka or memory (overrides broker.kind).")
    var broker: String?

    func run() async throws {
        var settings = try GantrySettings.forProcess(explicitFile: config)
        if let broker { settings.set("broker.kind", .string(broker), source: "--broker") }
        JSONLogHandler.bootstrap(level: try GantryRuntime.logLevel(settings))
        let logger = Logger(label: "gantry.coordinator")

        let runtime = try await GantryRuntime.connect(settings: settings, logger: logger)
        let coordinatorConfiguration = try CoordinatorConfiguration(settings: settings)
        let coordinator = Coordinator(configuration: coordinatorConfiguration, store: runtime.store, dispatcher: runtime.dispatcher, logger: logger)
        let dashboard = Dashboard(
            store: runtime.store, transport: runtime.transport,
            leaderLease: LeaderLease(store: runtime.store, holder: coordinatorConfiguration.coordinatorID), logger: Logger(label: "gantry.dashboard")
        )
        let serveDashboard = try ObservabilityConfiguration(settings: settings, process: .coordinator).dashboard
        let observability = try ObservabilityServer.forProcess(
            .coordinator, id: coordinatorConfiguration.coordinatorID, settings: settings, store: runtime.store, transport: runtime.transport,
            readinessQueue: try settings.strings("worker.queues").first ?? "default", logger: logger
        ) { router in
            if serveDashboard { dashboard.register(on: router) }
        }
        // The HTTP server starts first and stops last, so it reports on the whole shutdown.
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: (observability.map { [ServiceGroupConfiguration.ServiceConfiguration(service: $0)] } ?? []) + [.init(service: coordinator)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            cancellationSignals: [],
            logger: logger
        ))
        try await group.run()
        await runtime.transport.close()
    }
}
