import Foundation
import GantryCore
import Testing

@Suite struct CLITests {
    @Test func aMalformedPipelineIsRejectedWithItsFileAndLine() async throws {
        let path = try CLI.temporaryFile("bad.yaml", """
            name: bad
            stages:
              - name: a
                task: sha265
              - name: b
                task: noop
                after: [c]
            """)
        let result = try await CLI.run(["validate", path])
        #expect(result.status == 1)
        #expect(result.err.contains("\(path):4:11: stage 'a': unknown task 'sha265' (did you mean 'sha256'?)"))
        #expect(result.err.contains("\(path):7:"))
        #expect(result.err.contains("depends on unknown stage 'c'"))
        let missing = try await CLI.run(["validate", "/nonexistent/pipeline.yaml"])
        #expect(missing.status == 1)
        #expect(missing.err.contains("cannot read pipeline file '/nonexistent/pipeline.yaml'"))
    }

    @Test func aValidPipelineIsListedInRunOrder() async throws {
        let path = try CLI.temporaryFile("good.yaml", "name: good\nstages:\n  - { name: b, task: noop, after: [a] }\n  - { name: a, task: noop }\n")
        let result = try await CLI.run(["validate", path])
        #expect(result.status == 0)
        let lines = result.out.split(separator: "\n").map(String.init)
        #expect(lines.first == "pipeline 'good' is valid: 2 stages")
        #expect(lines.firstIndex { $0.contains(" a ") }! < lines.firstIndex { $0.contains(" b ") }!)
    }

    @Test func anUnreachableServerIsOneErrorNamingTheAddressAndSetting() async throws {
        let result = try await CLI.run(["status"], environment: ["GANTRY_REDIS_URL": "redis://127.0.0.1:1"])
        #expect(result.status == 1)
        #expect(result.err.contains("127.0.0.1:1"))
        #expect(result.err.contains("environment variable GANTRY_REDIS_URL"))
        #expect(result.err.split(separator: "\n").count == 1)
    }

    @Test func theConfigFileListsEveryKeyWithItsDefault() async throws {
        let file = CLI.root.appendingPathComponent("config/gantry.yaml").path
        // Only the file: no GANTRY_* variable of the environment the tests run in.
        let clean = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("GANTRY_") }
        let loaded = try GantrySettings.load(file: file, environment: clean, fileMustExist: true)
        for (key, value) in GantrySettings.defaults {
            #expect(loaded.source(of: key) == file, "config/gantry.yaml does not list '\(key)'")
            #expect(loaded.values[key] == value, "config/gantry.yaml shows \(key): \(String(describing: loaded.values[key])), but its default is \(value)")
        }

        // gantry config: file, then environment, then flags.
        let shown = try await CLI.run(["config", "--json", "--config", file, "--redis", "redis://127.0.0.1:7777"], environment: ["GANTRY_WORKER_CONCURRENCY": "16"])
        #expect(shown.status == 0, "\(shown.err)")
        let rows = try #require(try CLI.json(shown.out).arrayValue)
        #expect(rows.count == GantrySettings.defaults.count)
        let byKey = Dictionary(uniqueKeysWithValues: rows.compactMap { row in row["key"]?.stringValue.map { ($0, row) } })
        #expect(byKey["worker.concurrency"]?["value"] == .int(16))
        #expect(byKey["worker.concurrency"]?["source"] == .string("environment variable GANTRY_WORKER_CONCURRENCY"))
        #expect(byKey["redis.url"]?["value"] == .string("redis://127.0.0.1:7777"))
        #expect(byKey["redis.url"]?["source"] == .string("--redis"))
        #expect(byKey["store.retention"]?["source"] == .string(file) || byKey["store.retention"]?["source"]?.stringValue?.hasPrefix("environment") == true)
    }

    @Test func submitExplainAndCancelAQueuedRun() async throws {
        try await CLIScene.with { scene in
            let environment = scene.environment()
            let queue = scene.queue
            let path = try CLI.temporaryFile("p.yaml", """
                name: cli
                stages:
                  - { name: first, task: echo, queue: \(queue) }
                  - { name: second, task: echo, after: [first], queue: \(queue) }
                """)
            // No worker consumes this queue: the run stays where submit left it.
            let submitted = try await CLI.run(["submit", path, "--input", "hello", "--json"], environment: environment)
            #expect(submitted.status == 0, "\(submitted.err)")
            let run = try #require(try JSONValue(parsing: submitted.out)["run"]?.stringValue)

            let status = try await CLI.run(["status", run, "--json"], environment: environment)
            #expect(status.status == 0)
            let parsed = try JSONValue(parsing: status.out)
            #expect(parsed["state"] == .string("running"))
            #expect(parsed["stages"]?.arrayValue?.compactMap { $0["state"]?.stringValue } == ["queued", "waiting"])

            let explained = try await CLI.run(["explain", run, "--json"], environment: environment)
            #expect(explained.status == 0)
            let blockers = try JSONValue(parsing: explained.out).arrayValue?.compactMap { $0["blocker"]?.stringValue }
            #expect(blockers == ["queue", "dependency"])
            let text = try await CLI.run(["explain", run, "second"], environment: environment)
            #expect(text.out.contains("second: waiting on first (queued)"))

            let cancelled = try await CLI.run(["cancel", run], environment: environment)
            #expect(cancelled.status == 0)
            #expect(cancelled.out.contains("run \(run) cancelled"))
            let again = try await CLI.run(["cancel", run], environment: environment)
            #expect(again.status == 3)
            let afterCancel = try await CLI.run(["explain", run, "first", "--json"], environment: environment)
            #expect(try JSONValue(parsing: afterCancel.out).arrayValue?.first?["blocker"] == .string("cancelled"))

            let unknown = try await CLI.run(["status", RunID.make().rawValue], environment: environment)
            #expect(unknown.status == 1)
            #expect(unknown.err.contains("does not exist"))
        }
    }
}
