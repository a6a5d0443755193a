import ArgumentParser
import Foundation
import GantryCore
import GantryStore

/// Options every command that talks to the cluster shares.
struct ClusterOptions: ParsableArguments {
    @Option(help: "Configuration file (default: $GANTRY_CONFIG, else config/gantry.yaml when present).")
    var config: String?

    @Option(help: "Redis URL (overrides redis.url).")
    var redis: String?

    /// Settings from the file, the environment and these flags.
    func settings() throws -> GantrySettings {
        var settings = try GantrySettings.forProcess(explicitFile: config)
        if let redis { settings.set("redis.url", .string(redis), source: "--redis") }
        return settings
    }

    /// A store for the settings, checked to be reachable.
    func store() async throws -> (RedisStateStore, GantrySettings) {
        let settings = try settings()
        let store = try RedisStateStore(settings: settings)
        try await store.checkReachable(settings: settings)
        return (store, settings)
    }
}

/// `--json` for read commands.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print JSON for scripts instead of text.")
    var json = false
}

/// Prints a value as pretty JSON.
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Runs `body`, turning Gantry errors into a clear message and exit code 1.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let exit as ExitCode {
        throw exit
    } catch let error as CleanExit {
        throw error
    } catch {
        throw fail(error)
    }
}

/// Parses a run id argument with a clear error.
func parseRun(_ text: String) throws -> RunID {
    try RunID(validating: text)
}
