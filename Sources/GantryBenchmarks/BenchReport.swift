import Foundation
import GantryCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One scenario's figures with the conditions they were measured under, printed as one JSON
/// line (keys sorted) followed by one line for people.
///
/// Conventions every scenario follows, so that `gantry-bench table` can lay any of them out:
/// - `scenario`, `broker`, `workers`, `worker_mode` (`process`: the real `gantry-worker`
///   executable; `in-process`: a `Worker` inside gantry-bench), `concurrency`, `pool_size`,
///   `payload_bytes`, `n` (tasks measured) and `cores` are the conditions;
/// - every figure carries its unit in its name (`_per_s`, `_ms`, `_s`, `_mb`, `_ratio`);
/// - `targets` maps a figure to its target (`">= 13000"`, `"<= 0.6"`) and `met` says whether
///   this run reached it; `headline` lists the figures a summary table shows.
struct BenchReport {
    var scenario: String
    var conditions: [String: JSONValue] = [:]
    var figures: [String: JSONValue] = [:]
    private(set) var targets: [String: JSONValue] = [:]
    private(set) var met: [String: JSONValue] = [:]
    var headline: [String] = []

    init(scenario: String) {
        self.scenario = scenario
        conditions["cores"] = .int(Int64(Machine.cores))
    }

    /// Records a figure, rounded to three decimals when fractional.
    mutating func figure(_ key: String, _ value: Double, headline: Bool = false) {
        figures[key] = .double(Self.rounded(value))
        if headline { self.headline.append(key) }
    }

    mutating func figure(_ key: String, _ value: Int, headline: Bool = false) {
        figures[key] = .int(Int64(value))
        if headline { self.headline.append(key) }
    }

    mutating func figure(_ key: String, _ value: JSONValue) {
        figures[key] = value
    }

    /// Sets the target of figure `key`: at least (`>=`) or at most (`<=`) `value`.
    mutating func target(_ key: String, atLeast value: Double) {
        targets[key] = .string(">= \(Self.text(value))")
        met[key] = .bool((figures[key]?.doubleValue ?? -.infinity) >= value)
    }

    mutating func target(_ key: String, atMost value: Double) {
        targets[key] = .string("<= \(Self.text(value))")
        met[key] = .bool((figures[key]?.doubleValue ?? .infinity) <= value)
    }

    /// The JSON object of the report.
    var json: JSONValue {
        var object = conditions.merging(figures) { _, figure in figure }
        object["scenario"] = .string(scenario)
        if !targets.isEmpty {
            object["targets"] = .object(targets)
            object["met"] = .object(met)
        }
        if !headline.isEmpty { object["headline"] = .array(headline.map { .string($0) }) }
        return .object(object)
    }

    /// Prints the JSON line, then `human`.
    func print(_ human: String) {
        Swift.print(json.jsonString)
        Swift.print(human)
        fflush(nil)
    }

    /// `value` with at most three decimals, as text (`13000`, `0.6`).
    static func text(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(rounded(value))
    }

    static func rounded(_ value: Double) -> Double {
        guard value.isFinite else { return 0 }
        return (value * 1000).rounded() / 1000
    }

    /// "≥ 13000 met" / "≤ 0.6 missed" for the human line.
    func verdict(_ key: String) -> String {
        guard let target = targets[key]?.stringValue else { return "" }
        let ok = met[key] == .bool(true)
        return "target \(target.replacingOccurrences(of: ">=", with: "≥").replacingOccurrences(of: "<=", with: "≤")) \(ok ? "met" : "missed")"
    }
}

/// Facts about the machine a figure was measured on.
enum Machine {
    /// Online cores.
    static var cores: Int { max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    /// The CPU model from /proc/cpuinfo.
    static var cpuModel: String {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
        for line in text.split(separator: "\n") where line.hasPrefix("model name") {
            if let colon = line.firstIndex(of: ":") {
                return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return "unknown"
    }

    /// Total memory in MiB, from /proc/meminfo.
    static var memoryMiB: Int {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            let kib = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
            return kib / 1024
        }
        return 0
    }

    /// The 1-minute load average: how busy the (shared) machine was.
    static var loadAverage: Double {
        var loads = [Double](repeating: 0, count: 3)
        return getloadavg(&loads, 3) > 0 ? loads[0] : 0
    }
}

/// Seconds elapsed while `body` ran, and its value.
func timed<T>(_ body: () async throws -> T) async rethrows -> (seconds: Double, value: T) {
    let clock = ContinuousClock()
    let start = clock.now
    let value = try await body()
    return ((clock.now - start).seconds, value)
}

/// A counter that concurrent tasks share (hands out job indexes, counts failures).
final class SharedCounter: Sendable {
    private let value = Atomic<Int>(0)

    /// Adds one and returns the value before.
    func next() -> Int { value.wrappingAdd(1, ordering: .relaxed).oldValue }

    var current: Int { value.load(ordering: .relaxed) }
}
