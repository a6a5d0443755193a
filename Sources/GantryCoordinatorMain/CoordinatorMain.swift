import ArgumentParser
import Foundation
import GantryCoordinator
import GantryCore
import GantryRuntime
import Logging
import ServiceLifecycle

/// `gantry-coordinator`: keeps runs moving; one of any number leads, the others stand by.
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
        let coordinator = Coordinator(configuration: try CoordinatorConfiguration(settings: settings), store: runtime.store, dispatcher: runtime.dispatcher, logger: logger)
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: coordinator)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            cancellationSignals: [],
            logger: logger
        ))
        try await group.run()
        await runtime.transport.close()
    }
}
