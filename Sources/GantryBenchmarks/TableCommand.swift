import ArgumentParser
import Foundation
import GantryCore

/// `gantry-bench table FILE…`: the JSON lines of earlier scenario runs as a Markdown table,
/// headed by the date and the machine.
struct TableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "table",
        abstract: "Lay out the JSON lines of benchmark or fault-injection runs (files, or - for stdin) as Markdown tables."
    )

    @Argument(help: "Files of gantry-bench output; lines that are not JSON objects are skipped.")
    var files: [String] = ["-"]

    @Flag(help: "Start with a line naming the date and the machine.")
    var header = false

    func run() throws {
        var reports: [[String: JSONValue]] = []
        for file in files {
            let data: Data
            if file == "-" {
                data = FileHandle.standardInput.readDataToEndOfFile()
            } else {
                guard let contents = FileManager.default.contents(atPath: file) else {
                    throw ValidationError("cannot read '\(file)'")
                }
                data = contents
            }
            for line in String(decoding: data, as: UTF8.self).split(separator: "\n") where line.hasPrefix("{") {
                if let object = try? JSONValue(parsing: String(line)).objectValue, object["scenario"] != nil { reports.append(object) }
            }
        }
        if header { print(Self.machineLine() + "\n") }
        let chaos = reports.filter { $0["kind"]?.stringValue == "chaos" }
        let benchmarks = reports.filter { $0["kind"]?.stringValue != "chaos" }
        if !benchmarks.isEmpty { print(Self.benchmarkTable(benchmarks)) }
        if !benchmarks.isEmpty && !chaos.isEmpty { print() }
        if !chaos.isEmpty { print(Self.chaosTable(chaos)) }
    }

    static func machineLine() -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH:mm 'UTC'"
        return "Measured \(formatter.string(from: Date())) on \(Machine.cores) × \(Machine.cpuModel) (nproc \(Machine.cores)), "
            + "\(Machine.memoryMiB / 1024) GiB RAM, load average \(String(format: "%.2f", Machine.loadAverage)) at the end; "
            + "the machine is shared, so figures are indicative."
    }

    static func benchmarkTable(_ reports: [[String: JSONValue]]) -> String {
        var lines = [
            "| scenario | broker | conditions | figures | target | met |",
            "|---|---|---|---|---|---|",
        ]
        for report in reports {
            var conditions: [String] = []
            if let workers = report["workers"]?.intValue {
                conditions.append("\(workers) \(report["worker_mode"]?.stringValue ?? "") worker\(workers == 1 ? "" : "s")")
            }
            for (key, label) in [("concurrency", "concurrency"), ("pool_size", "pool"), ("n", "N"), ("payload_bytes", "payload B"), ("submitters", "submitters"), ("rounds", "rounds")] {
                if let value = report[key]?.intValue { conditions.append("\(label) \(value)") }
            }
            if conditions.isEmpty {
                for (key, value) in report.sorted(by: { $0.key < $1.key }) where ["messages", "payload_bytes", "connections", "batch", "pairs", "single_pairs"].contains(key) {
                    conditions.append("\(key) \(value)")
                }
            }
            let headline = report["headline"]?.arrayValue?.compactMap(\.stringValue) ?? []
            let figureKeys = headline.isEmpty
                ? report.keys.sorted().filter { $0.hasSuffix("_per_s") || $0.hasSuffix("ratio") || $0.hasSuffix("_ms") }
                : headline
            let figures = figureKeys.compactMap { key in report[key].map { "\(key) **\(format($0))**" } }
            let targets = report["targets"]?.objectValue ?? [:]
            let met = report["met"]?.objectValue ?? [:]
            let targetText = targets.keys.sorted().map { "\($0) \(targets[$0]?.stringValue ?? "")" }
            let metText = targets.keys.sorted().map { met[$0] == .bool(true) ? "yes" : "no" }
            lines.append("| \(report["scenario"]?.stringValue ?? "") | \(report["broker"]?.stringValue ?? report["brokers"]?.stringValue ?? "") | "
                + "\(conditions.joined(separator: ", ")) | \(figures.joined(separator: "<br>")) | \(targetText.joined(separator: "<br>")) | \(metText.joined(separator: "<br>")) |")
        }
        return lines.joined(separator: "\n")
    }

    static func chaosTable(_ reports: [[String: JSONValue]]) -> String {
        var lines = [
            "| scenario | broker | faults injected | submitted | completed | duplicates refused | duplicates committed | dead-lettered | lost | stuck | wall s | check |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for report in reports {
            func value(_ key: String) -> String { report[key].map(format) ?? "" }
            lines.append("| \(value("scenario")) | \(value("broker")) | \(value("faults")) | \(value("submitted")) | \(value("completed")) | "
                + "\(value("duplicates_refused")) | \(value("duplicates_committed")) | \(value("dead_lettered")) | \(value("lost")) | \(value("stuck")) | "
                + "\(value("wall_s")) | \(report["passed"] == .bool(true) ? "passed" : "FAILED") |")
        }
        return lines.joined(separator: "\n")
    }

    static func format(_ value: JSONValue) -> String {
        switch value {
        case .double(let number): return number >= 100 ? String(Int(number.rounded())) : String(format: "%.3g", number)
        case .int(let number): return String(number)
        case .string(let text): return text.replacingOccurrences(of: "|", with: "\\|")
        case .bool(let flag): return flag ? "yes" : "no"
        default: return value.jsonString
        }
    }
}
