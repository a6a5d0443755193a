import Foundation
import GantryCore
import GantryTasks
import GantryWorker
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The `exec` built-in task against real commands (sh, tr, cat, head): no servers needed.
@Suite struct ExecTaskTests {
    private let context = TaskContext(runID: RunID.make(), node: NodeID(stage: "cmd"), attempt: 2)

    private func exec(allow: [String], maxOutput: Int = 1 << 20) -> TaskFunction {
        BuiltinTasks.registry(configuration: BuiltinTaskConfiguration(execAllow: allow, execMaxOutputBytes: maxOutput), http: .shared)["exec"]!.function
    }

    private func args(_ command: [String], _ extra: [String: JSONValue] = [:]) -> TaskContext {
        var context = context
        var object = extra
        object["command"] = .array(command.map(JSONValue.string))
        context.args = .object(object)
        return context
    }

    private func error(_ operation: () async throws -> [UInt8]) async -> GantryError? {
        do {
            _ = try await operation()
            return nil
        } catch {
            return error as? GantryError
        }
    }

    @Test func anAllowedCommandGetsTheInputOnStdinAndItsStdoutIsTheResult() async throws {
        let run = exec(allow: ["tr"])
        #expect(try await run(Array("hello exec".utf8), args(["tr", "a-z", "A-Z"])) == Array("HELLO EXEC".utf8))
        // Larger than any pipe buffer both ways: stdin is written while stdout is read.
        let big = [UInt8](repeating: UInt8(ascii: "x"), count: 3 << 20)
        let echoed = try await exec(allow: ["cat"], maxOutput: 4 << 20)(big, args(["cat"]))
        #expect(echoed == big)
        // A command given as a single program name, and one that ignores its input.
        let text = try await exec(allow: ["sh"])(Array("ignored".utf8), args(["sh", "-c", "echo \"$GANTRY_RUN $GANTRY_NODE $GANTRY_ATTEMPT\""]))
        #expect(String(decoding: text, as: UTF8.self) == "\(context.runID.rawValue) cmd 2\n")
        var single = context
        single.args = .object(["command": "true"])
        #expect(try await exec(allow: ["true"])([], single) == [])
    }

    @Test func aDisallowedCommandIsRefusedNamingTheSetting() async throws {
        let refused = await error { try await exec(allow: ["cat", "wc"])([], args(["rm", "-rf", "/tmp/nothing"])) }
        #expect(refused?.code == .configuration)
        #expect(refused?.isRetriable == false)
        #expect(refused?.message.contains("'rm' is not allowed") == true)
        #expect(refused?.message.contains("tasks.exec_allow") == true)
        #expect(refused?.message.contains("GANTRY_TASKS_EXEC_ALLOW") == true)
        // The match is exact: an allowed name does not allow another path to a program of that name.
        let path = await error { try await exec(allow: ["cat"])([], args(["/tmp/cat"])) }
        #expect(path?.message.contains("'/tmp/cat' is not allowed") == true)
        // Off by default: the built-in registry refuses everything.
        let off = await error { try await BuiltinTasks.registry["exec"]!.function([], args(["cat"])) }
        #expect(off?.message.contains("exec is disabled on this worker") == true)
        #expect(off?.message.contains("tasks.exec_allow") == true)
    }

    @Test func aFailingCommandReportsItsStatusAndTheTailOfStderr() async throws {
        let script = "cat >/dev/null; i=0; while [ $i -lt 500 ]; do echo \"noise $i\" >&2; i=$((i+1)); done; echo 'disk is full' >&2; exit 3"
        let failed = await error { try await exec(allow: ["sh"])(Array("input".utf8), args(["sh", "-c", script])) }
        #expect(failed?.code == .taskFailed)
        #expect(failed?.isRetriable == false)
        #expect(failed?.message.contains("exited with status 3") == true)
        #expect(failed?.message.contains("disk is full") == true)
        #expect(failed?.message.contains("noise 0\n") == false)  // only the tail
        let retriable = await error { try await exec(allow: ["sh"])([], args(["sh", "-c", "exit 75"], ["retriable_exit_codes": .array([.int(75)])])) }
        #expect(retriable?.isRetriable == true)
    }

    @Test func outputOverTheLimitAndMissingProgramsAreClearErrors() async throws {
        let big = await error { try await exec(allow: ["head"], maxOutput: 1000)([], args(["head", "-c", "5000", "/dev/zero"])) }
        #expect(big?.code == .payloadTooLarge)
        #expect(big?.message.contains("tasks.exec_max_output_bytes") == true)
        let missing = await error { try await exec(allow: ["gantry-no-such-program"])([], args(["gantry-no-such-program"])) }
        #expect(missing?.code == .configuration)
        #expect(missing?.message.contains("cannot start 'gantry-no-such-program'") == true)
        let malformed = await error { try await exec(allow: ["sh"])([], TaskContext(runID: RunID.make(), node: NodeID(stage: "x"), args: .object(["command": .int(5)]))) }
        #expect(malformed?.code == .invalidArgument)
        #expect(malformed?.message.contains("args.command") == true)
    }

    @Test func aStageTimeoutKillsTheCommandAndWhatItStarted() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-exec-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let pids = directory.appendingPathComponent("pids").path
        // The shell starts a background sleep, records both pids, and waits: a timeout must stop both.
        let script = "sleep 60 & echo \"$$ $!\" > \(pids); wait"
        let registry = BuiltinTasks.registry(configuration: BuiltinTaskConfiguration(execAllow: ["sh"]), http: .shared)
        let plan = try PipelinePlan(PipelineSpec.parse(yaml: """
            name: p
            stages:
              - { name: cmd, task: exec, args: { command: [sh, -c, '\(script)'] }, timeout: 700ms, retry: 1 }
            """, knownTasks: registry.names))
        let report = try await LocalPipelineRunner(registry: registry).run(plan, input: [])
        guard case .failed(let message, _) = report.outcomes["cmd"] else {
            Issue.record("the command should have timed out: \(String(describing: report.outcomes["cmd"]))")
            return
        }
        #expect(message.contains("timeout of 700ms"))
        let recorded = try String(contentsOfFile: pids, encoding: .utf8).split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        #expect(recorded.count == 2)
        // Both are gone (SIGTERM to the command's process group), not left running.
        let deadline = ContinuousClock.now + .seconds(10)
        while recorded.contains(where: { kill($0, 0) == 0 }), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        for pid in recorded { #expect(kill(pid, 0) != 0, "process \(pid) is still running") }
    }

    @Test func taskLimitsParseFromTheFileAndTheEnvironment() throws {
        var settings = GantrySettings()
        try settings.apply(yaml: "worker:\n  task_limits: { http: 16, exec: 2 }\ntasks:\n  exec_allow: [wc, /usr/bin/gzip]\n", file: "g.yaml")
        #expect(try WorkerConfiguration(settings: settings).taskLimits == ["http": 16, "exec": 2])
        #expect(try BuiltinTaskConfiguration(settings: settings).execAllow == ["wc", "/usr/bin/gzip"])
        try settings.apply(environment: ["GANTRY_WORKER_TASK_LIMITS": "http=4, sha256=1", "GANTRY_TASKS_EXEC_ALLOW": "cat,tr"])
        #expect(try WorkerConfiguration(settings: settings).taskLimits == ["http": 4, "sha256": 1])
        #expect(try BuiltinTaskConfiguration(settings: settings).execAllow == ["cat", "tr"])
        try settings.apply(environment: ["GANTRY_WORKER_TASK_LIMITS": "http"])
        let bad = try #require(throws: GantryError.self) { try WorkerConfiguration(settings: settings) }
        #expect(bad.message.contains("worker.task_limits"))
        #expect(bad.message.contains("GANTRY_WORKER_TASK_LIMITS"))
        try settings.apply(environment: ["GANTRY_WORKER_TASK_LIMITS": "http=0"])
        #expect(try WorkerConfiguration(settings: settings).problems.contains { $0.contains("task 'http' must be at least 1") })
        try settings.apply(environment: ["GANTRY_TASKS_EXEC_ALLOW": "bin/wc"])
        #expect(throws: GantryError.self) { try BuiltinTaskConfiguration(settings: settings) }
    }
}
