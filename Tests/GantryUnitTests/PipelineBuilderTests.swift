import Testing
@testable import GantryCore

@Suite struct PipelineBuilderTests {
    @Test func buildsTheSamePipelineAsItsYAML() throws {
        let built = try PipelineSpec("wordstats", timeout: .seconds(600)) {
            Stage("lines", task: "split").kind(.cpu)
            Stage("hash", task: "sha256").kind(.cpu).map("lines", maxParallel: 8)
            Stage("count", task: "wordcount").kind(.cpu).after("lines")
            Stage("report", task: "report").after("hash", "count").args(.object(["title": .string("words")]))
                .retry(RetryPolicy(maxAttempts: 3)).timeout(.seconds(5)).queue("reports").priority(2).onFailure(.continue)
        }
        let parsed = try PipelineSpec.parse(yaml: """
            name: wordstats
            timeout: 10m
            stages:
              - { name: lines, task: split, kind: cpu }
              - { name: hash, task: sha256, kind: cpu, after: [lines], map: lines, max_parallel: 8 }
              - { name: count, task: wordcount, kind: cpu, after: [lines] }
              - name: report
                task: report
                after: [hash, count]
                args: { title: words }
                retry: { max_attempts: 3 }
                timeout: 5s
                queue: reports
                priority: 2
                on_failure: continue
            """)
        #expect(built == parsed)
    }

    @Test func stagesCanBeGeneratedWithLoopsAndConditions() throws {
        let withReport = true
        let spec = try PipelineSpec("chain") {
            Stage("s0", task: "echo")
            for index in 1..<5 { Stage("s\(index)", task: "echo").after("s\(index - 1)") }
            if withReport { Stage("report", task: "report").after("s4") }
        }
        #expect(spec.stages.map(\.name.rawValue) == ["s0", "s1", "s2", "s3", "s4", "report"])
    }

    @Test func badNamesCyclesAndUnknownTasksAreAllReported() throws {
        let badNames = #expect(throws: GantryError.self) {
            try PipelineSpec("bad") {
                Stage("1st", task: "echo")
                Stage("ok", task: "echo").after("no spaces allowed")
            }
        }
        #expect(badNames?.code == .invalidPipeline)
        #expect(badNames?.message.contains("stage '1st' is not a valid stage name") == true)
        #expect(badNames?.message.contains("stage 'ok' refers to 'no spaces allowed'") == true)

        let cycle = #expect(throws: GantryError.self) {
            try PipelineSpec("loop") {
                Stage("a", task: "echo").after("b")
                Stage("b", task: "echo").after("a")
            }
        }
        #expect(cycle?.message.contains("dependency cycle") == true)

        let unknown = #expect(throws: GantryError.self) {
            try PipelineSpec("typo", knownTasks: ["echo"]) { Stage("a", task: "ehco") }
        }
        #expect(unknown?.message.contains("ehco") == true)
    }
}
