import Foundation
import GantryCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `gantry dev`: a whole cluster as real processes (its own Redis and Kafka dev broker on free
/// ports, a coordinator, workers), an example pipeline run to the end, and nothing left behind.
@Suite(.serialized) struct CLIDevTests {
    /// Pids `gantry dev` reported starting ("pid N" in its summary).
    private func startedPIDs(_ output: String) -> [Int32] {
        var pids: [Int32] = []
        for line in output.split(separator: "\n") {
            guard let range = line.range(of: "pid ") else { continue }
            let digits = line[range.upperBound...].prefix { $0.isNumber }
            if let pid = Int32(digits) { pids.append(pid) }
        }
        return pids
    }

    /// Every descendant of `pids` alive now (pool children, Erlang helpers), from /proc.
    private func descendants(of pids: [Int32]) -> [Int32] {
        var found: [Int32] = []
        var queue = pids
        while let pid = queue.popLast() {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            for task in tasks {
                let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8)) ?? ""
                let children = text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
                found += children
                queue += children
            }
        }
        return found
    }

    private func environment() async -> [String: String] {
        // One child per worker pool keeps the test light on a shared machine.
        ["GANTRY_POOL_SIZE": "1", "GANTRY_STORE_NAMESPACE": "gantry-dev-\(UUID().uuidString.prefix(8).lowercased())"]
    }

    private func stateDirectory() async -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("gantry-dev-\(UUID().uuidString)").path
    }

    @Test func devRunsAnExamplePipelineToTheEndAndStopsEverythingItStarted() async throws {
        let pipeline = CLI.root.appendingPathComponent("config/pipelines/hello.yaml").path
        let state = await stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state) }
        let result = try await CLI.run(
            ["dev", pipeline, "--input", "hello gantry hello", "--broker", "kafka", "--isolated", "--workers", "2", "--exit", "--results", "--state-dir", state],
            environment: environment()
        )
        #expect(result.status == 0, "\(result.out)\n\(result.err)")
        #expect(result.out.contains("gantry dev: cluster up in"))
        #expect(result.out.contains("started gantry-kafka-dev"))
        let run = try #require(result.out.split(separator: "\n").first { $0.hasPrefix("submitted run ") }?.split(separator: " ")[2])
        #expect(result.out.contains("run \(run) succeeded"))
        // The final status shows every stage done, and the report's result is printed.
        #expect(result.out.contains("succeeded 4/4 stages"))
        #expect(result.out.contains("result of report"))
        #expect(result.out.contains(#""top":[["hello",2],["gantry",1]]"#))
        #expect(result.out.contains("stopped all 5 processes"))

        // redis, kafka, coordinator, two workers: each gone, with its whole process group.
        let pids = startedPIDs(result.out)
        #expect(pids.count == 5)
        for pid in pids { #expect(!CLI.isAlive(pid), "process \(pid) (or its group) outlived gantry dev") }
    }

    @Test func ctrlCStopsTheClusterAndLeavesNoProcess() async throws {
        let state = await stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state) }
        let base = await environment()
        let dev = try CLI.Background(["dev", "--broker", "kafka", "--isolated", "--workers", "1", "--state-dir", state], environment: base)
        #expect(await dev.waitForOutput("ready; Ctrl-C stops the cluster", timeout: .seconds(90)), "\(dev.out)\n\(dev.err)")
        let pids = startedPIDs(dev.out)
        #expect(pids.count == 4)
        for pid in pids { #expect(CLI.isAlive(pid)) }
        // The worker's pool children (GANTRY_POOL_SIZE=1) are processes of the cluster too.
        let children = descendants(of: pids)
        #expect(!children.isEmpty)

        // The cluster is usable from outside with the addresses it printed.
        let exports = try #require(dev.out.split(separator: "\n").first { $0.contains("export GANTRY_REDIS_URL=") })
        var outside = base
        for assignment in exports.split(separator: " ") where assignment.hasPrefix("GANTRY_") {
            let parts = assignment.split(separator: "=", maxSplits: 1)
            outside[String(parts[0])] = String(parts[1])
        }
        let workers = try await CLI.run(["workers", "--json"], environment: outside)
        #expect(workers.status == 0, "\(workers.err)")
        #expect(try CLI.json(workers.out).arrayValue?.count == 1)

        kill(dev.process.processIdentifier, SIGINT)
        #expect(await dev.waitForExit(timeout: .seconds(60)) == 0, "\(dev.out)\n\(dev.err)")
        #expect(dev.out.contains("SIGINT: stopping the cluster"))
        #expect(dev.out.contains("stopped all 4 processes"))
        for pid in pids { #expect(!CLI.isAlive(pid), "process \(pid) (or its group) outlived gantry dev") }
        for pid in children { #expect(kill(pid, 0) != 0, "child process \(pid) outlived gantry dev") }
    }

    @Test func devRefusesWhatItCannotRun() async throws {
        let memory = try await CLI.run(["dev", "--broker", "memory"])
        #expect(memory.status == 1)
        #expect(memory.err.contains("use --broker kafka or --broker rabbitmq"))
        let bad = try CLI.temporaryFile("bad.yaml", "name: bad\nstages:\n  - { name: a, task: nosuch }\n")
        let invalid = try await CLI.run(["dev", bad, "--broker", "kafka", "--exit"])
        #expect(invalid.status == 1)
        #expect(invalid.err.contains("\(bad):3:"))
        #expect(invalid.err.contains("unknown task 'nosuch'"))
        #expect(!invalid.out.contains("cluster up"))
        let exitWithout = try await CLI.run(["dev", "--exit"])
        #expect(exitWithout.status != 0)
        #expect(exitWithout.err.contains("--exit needs a pipeline"))
    }
}
