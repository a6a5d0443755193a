import ArgumentParser
import Foundation
import GantryCore

struct Config: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show every setting in effect and where it came from (default, file, environment variable, flag)."
    )

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        do {
            let settings = try cluster.settings()
            let rows = GantrySettings.defaults.keys.sorted().map { key in
                SettingReport(key: key, value: settings.values[key] ?? .null, source: settings.source(of: key))
            }
            if output.json {
                try printJSON(rows)
                return
            }
            var table = [["SETTING", "VALUE", "FROM"]]
            for row in rows {
                let text = row.value.stringValue ?? String(decoding: row.value.jsonBytes, as: UTF8.self)
                table.append([row.key, text.isEmpty ? "\"\"" : text, row.source])
            }
            print(StatusRenderer.columns(table))
        } catch {
            throw fail(error)
        }
    }
}

/// One line of `gantry config --json`.
struct SettingReport: Encodable {
    var key: String
    var value: JSONValue
    var source: String
}
