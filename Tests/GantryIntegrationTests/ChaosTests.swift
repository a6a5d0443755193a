import Foundation
import GantryCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The fault-injection scenarios of `gantry-bench chaos`, in reduced sizes: each starts real
/// `gantry-worker` and `gantry-coordinator` processes on the local stack (the Redis and RabbitMQ
/// restarts on private servers), injects its fault while jobs run, and reads every job back
/// from Redis. A job lost, committed twice or left running fails the test; `ops/chaos` runs
/// the same scenarios at full size.
@Suite(.serialized) struct ChaosTests {
    @Test(arguments: ["rabbitmq", "kafka"])
    func killedWorkersLoseNothingAndCommitNothingTwice(broker: String) async throws {
        let report = try await chaos("kill-workers", broker: broker, ["--tasks", "2000", "--kills", "4"])
        try expectClean(report, submitted: 2000)
        #expect((report["worker_kills"]?.intValue ?? 0) >= 1)
        #expect(report["completed"]?.intValue == 2000)
    }

    @Test func aKilledLeaderCoordinatorIsReplacedByTheStandby() async throws {
        let report = try await chaos("kill-coordinator", broker: "rabbitmq", ["--tasks", "2000"])
        try expectClean(report, submitted: 2000)
        #expect(report["takeover_ms"]?.doubleValue != nil)
        #expect(report["completed"]?.intValue == 2000)
    }

    @Test func aRabbitMQRestartMidRunLosesNothing() async throws {
        let report = try await chaos("restart-rabbitmq", broker: "rabbitmq", ["--tasks", "2000"])
        try expectClean(report, submitted: 2000)
        #expect(report["downtime_ms"]?.doubleValue != nil)
        #expect(report["completed"]?.intValue == 2000)
    }

    @Test func aRedisRestartMidRunLosesNothing() async throws {
        let report = try await chaos("restart-redis", broker: "rabbitmq", ["--tasks", "2000"])
        try expectClean(report, submitted: 2000)
        #expect(report["downtime_ms"]?.doubleValue != nil)
        #expect(report["completed"]?.intValue == 2000)
    }

    @Test func tasksKilledByTheOOMKillerAreDeadLetteredWithTheReason() async throws {
        let report = try await chaos("oom", broker: "rabbitmq", ["--tasks", "200", "--allocations", "2"])
        try expectClean(report, submitted: 200)
        #expect(report["dead_lettered"]?.intValue == 2)
        #expect(report["completed"]?.intValue == 198)
        #expect(report["dead_letter_reason_sample"]?.stringValue?.contains("signal") == true)
        if let kills = report["oom_kills"]?.intValue { #expect(kills >= 2) }
    }

    @Test(arguments: ["rabbitmq", "kafka"])
    func aFloodOfMalformedMessagesIsDeadLetteredWhileValidWorkCompletes(broker: String) async throws {
        let report = try await chaos("flood", broker: broker, ["--tasks", "1000", "--malformed", "100", "--oversized", "10"])
        try expectClean(report, submitted: 1000)
        #expect(report["completed"]?.intValue == 1000)
        let injected = report["injected"]?.intValue ?? 0
        #expect(injected >= 100)
        #expect(report["broker_dead_lettered"]?.intValue == injected)
    }

    // MARK: Helpers

    /// What every scenario must show: its check passed, nothing lost, stuck or committed twice.
    private func expectClean(_ report: [String: JSONValue], submitted: Int) throws {
        #expect(report["passed"] == .bool(true), "\(report["problems"]?.stringValue ?? "")")
        #expect(report["submitted"]?.intValue == Int64(submitted))
        #expect(report["lost"]?.intValue == 0)
        #expect(report["stuck"]?.intValue == 0)
        #expect(report["duplicates_committed"]?.intValue == 0)
        #expect(report["not_submitted"]?.intValue == 0)
    }

    /// Runs `gantry-bench chaos SCENARIO` (built next to the test bundle) and returns its JSON line.
    private func chaos(_ scenario: String, broker: String, _ arguments: [String]) async throws -> [String: JSONValue] {
        let products = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        var binary = products.appendingPathComponent("gantry-bench")
        if !FileManager.default.isExecutableFile(atPath: binary.path) {
            binary = products.deletingLastPathComponent().appendingPathComponent("gantry-bench")
        }
        let result = try await runProcess(binary, ["chaos", scenario, "--broker", broker, "--time-limit", "120"] + arguments, timeout: .seconds(300))
        let line = result.out.split(separator: "\n").first { $0.hasPrefix("{") }
        guard let line, let report = try JSONValue(parsing: String(line)).objectValue else {
            Issue.record("gantry-bench chaos \(scenario) printed no report (status \(result.status)): \(result.out.suffix(2000)) \(result.err.suffix(2000))")
            throw GantryError(.commandFailed, "no report")
        }
        #expect(result.status == 0, "gantry-bench chaos \(scenario): \(result.out.suffix(1500)) \(result.err.suffix(1500))")
        return report
    }

    /// Runs a process on a thread of its own (it blocks while the process runs), standard output
    /// read to its end; SIGINT after `timeout` (gantry-bench then stops what it started).
    private func runProcess(_ executable: URL, _ arguments: [String], timeout: Duration) async throws -> (status: Int32, out: String, err: String) {
        let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-chaos-\(UUID().uuidString).err")
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errURL) }
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = try FileHandle(forWritingTo: errURL)
        try process.run()
        let pid = process.processIdentifier
        let watchdog = Task {
            try await Task.sleep(for: timeout)
            kill(pid, SIGINT)
        }
        let output: Data = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                let data = out.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                continuation.resume(returning: data)
            }
        }
        watchdog.cancel()
        let errData = (try? Data(contentsOf: errURL)) ?? Data()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }
}
