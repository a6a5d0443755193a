import Testing
@testable import GantryCore

/// Parses YAML expected to be rejected and returns the error message.
private func rejection(_ yaml: String, knownTasks: Set<String>? = nil) throws -> String {
    do {
        _ = try PipelineSpec.parse(yaml: yaml, file: "p.yaml", knownTasks: knownTasks)
    } catch let error as GantryError {
        #expect(error.code == .invalidPipeline)
        return error.message
    }
    Issue.record("pipeline was accepted:\n\(yaml)")
    return ""
}

@Suite struct PipelineSpecTests {
    @Test func parsesAFullPipeline() throws {
        let spec = try PipelineSpec.parse(yaml: """
            name: report
            timeout: 10m
            defaults:
              queue: batch
              retry: { max_attempts: 5, initial_backoff: 100ms, max_backoff: 5s, multiplier: 3, jitter: 0.1 }
            stages:
              - name: fetch
                task: http
                args: { url: "http://127.0.0.1/x", headers: { a: "1" }, count: 3, ratio: 0.5, on: true, none: ~ }
              - name: hash
                task: sha256
                kind: cpu
                after: fetch
                map: fetch
                max_parallel: 8
                priority: 7
                timeout: 1.5s
                on_failure: continue
              - name: report
                task: noop
                after: [hash, fetch]
                retry: 1
            """, file: "report.yaml")
        #expect(spec.name == "report")
        #expect(spec.timeout == .seconds(600))
        #expect(spec.stages.map(\.name.rawValue) == ["fetch", "hash", "report"])
        let fetch = try #require(spec.stage("fetch"))
        #expect(fetch.kind == .io)
        #expect(fetch.queue == "batch")
        #expect(fetch.retry == RetryPolicy(maxAttempts: 5, initialBackoff: .milliseconds(100), maxBackoff: .seconds(5), multiplier: 3, jitter: 0.1))
        #expect(fetch.args["url"] == .string("http://127.0.0.1/x"))
        #expect(fetch.args["count"] == .int(3))
        #expect(fetch.args["ratio"] == .double(0.5))
        #expect(fetch.args["on"] == .bool(true))
        #expect(fetch.args["none"] == .null)
        #expect(fetch.args["headers"]?["a"] == .string("1"))
        let hash = try #require(spec.stage("hash"))
        #expect(hash.kind == .cpu)
        #expect(hash.after == ["fetch"])
        #expect(hash.map == "fetch")
        #expect(hash.maxParallel == 8)
        #expect(hash.priority == 7)
        #expect(hash.timeout == .milliseconds(1500))
        #expect(hash.onFailure == .continue)
        let report = try #require(spec.stage("report"))
        #expect(report.after == ["hash", "fetch"])
        #expect(report.retry.maxAttempts == 1)
        #expect(report.retry.initialBackoff == .milliseconds(100))
    }

    @Test func specRoundTripsThroughJSON() throws {
        let spec = try PipelineSpec.parse(yaml: """
            name: p
            timeout: 1m
            stages:
              - { name: a, task: noop, args: { x: [1, "two"] }, timeout: 2s }
              - { name: b, task: sha256, kind: cpu, after: [a], map: a, max_parallel: 2, on_failure: continue }
            """)
        let json = try JSONValue(parsing: Array(jsonEncode(spec)))
        let decoded = try jsonDecode(PipelineSpec.self, from: json.jsonBytes)
        #expect(decoded == spec)
    }

    @Test func rejectsACycleAndNamesItsPath() throws {
        let message = try rejection("""
            name: p
            stages:
              - { name: a, task: noop, after: [c] }
              - { name: b, task: noop, after: [a] }
              - { name: c, task: noop, after: [b] }
            """)
        #expect(message.contains("dependency cycle"))
        #expect(message.contains("a → b → c → a") || message.contains("c → a → b → c") || message.contains("b → c → a → b"))
        #expect(["p.yaml:3:", "p.yaml:4:", "p.yaml:5:"].contains { message.contains($0) })
    }

    @Test func rejectsASelfDependency() throws {
        let message = try rejection("name: p\nstages:\n  - { name: a, task: noop, after: [a] }\n")
        #expect(message.contains("lists itself"))
    }

    @Test func rejectsAnUnknownDependencyWithASuggestion() throws {
        let message = try rejection("""
            name: p
            stages:
              - name: fetch
                task: noop
              - name: hash
                task: noop
                after: [fecth]
            """)
        #expect(message.contains("depends on unknown stage 'fecth'"))
        #expect(message.contains("did you mean 'fetch'"))
        #expect(message.contains("p.yaml:7:"))
    }

    @Test func rejectsDuplicateStageNames() throws {
        let message = try rejection("""
            name: p
            stages:
              - { name: a, task: noop }
              - { name: a, task: noop }
            """)
        #expect(message.contains("duplicate stage name 'a'"))
        #expect(message.contains("first defined at line 3"))
        #expect(message.contains("p.yaml:4:"))
    }

    @Test func rejectsUnknownFieldsWithTheirLine() throws {
        let message = try rejection("""
            name: p
            stages:
              - name: a
                task: noop
                retires: 3
            """)
        #expect(message.contains("unknown field 'retires'"))
        #expect(message.contains("did you mean 'retry'"))
        #expect(message.contains("p.yaml:5:5"))
    }

    @Test func rejectsBadFieldValues() throws {
        let message = try rejection("""
            name: p
            stages:
              - name: a
                task: noop
                kind: gpu
                priority: 12
                timeout: soon
                on_failure: ignore
                queue: "bad queue"
                retry: { max_attempts: 0, jitter: 3 }
            """)
        #expect(message.contains("'kind' must be 'cpu' or 'io', got 'gpu'"))
        #expect(message.contains("priority must be 0...9, got 12"))
        #expect(message.contains("'timeout' must be a duration"))
        #expect(message.contains("'on_failure' must be one of"))
        #expect(message.contains("queue 'bad queue'"))
        #expect(message.contains("max_attempts must be 1...1000, got 0"))
        #expect(message.contains("jitter must be 0...1, got 3.0"))
        #expect(message.contains("p.yaml:5:"))
        #expect(message.contains("p.yaml:6:"))
    }

    @Test func rejectsAnUnknownTaskWhenTasksAreKnown() throws {
        let message = try rejection("name: p\nstages:\n  - { name: a, task: sha265 }\n", knownTasks: ["sha256", "noop"])
        #expect(message.contains("unknown task 'sha265'"))
        #expect(message.contains("did you mean 'sha256'"))
        #expect(message.contains("known tasks: noop, sha256"))
    }

    @Test func rejectsAMapOverAStageNotInAfter() throws {
        let message = try rejection("""
            name: p
            stages:
              - { name: a, task: noop }
              - { name: b, task: noop, map: a }
              - { name: c, task: noop, max_parallel: 3 }
            """)
        #expect(message.contains("maps over 'a' but does not list it in 'after'"))
        #expect(message.contains("sets 'max_parallel' but has no 'map'"))
    }

    @Test func rejectsMalformedYAMLWithItsLine() throws {
        let message = try rejection("name: p\nstages:\n  - name: a\n    task: [noop\n")
        #expect(message.contains("YAML syntax error"))
        #expect(message.contains("p.yaml:"))
    }

    @Test func rejectsAShapelessDocument() throws {
        #expect(try rejection("- just\n- a list\n").contains("a pipeline is a YAML mapping"))
        #expect(try rejection("name: p\n").contains("has no 'stages'"))
        #expect(try rejection("name: p\nstages: []\n").contains("has no stages"))
        #expect(try rejection("name: p\nstages: a\n").contains("'stages' must be a list"))
        #expect(try rejection("name: p\nstages:\n  - { task: noop }\n").contains("stage has no 'name'"))
        #expect(try rejection("name: p\nstages:\n  - { name: a }\n").contains("stage 'a' has no 'task'"))
        #expect(try rejection("name: p\nstages:\n  - { name: 9lives, task: noop }\n").contains("stage name '9lives' is invalid"))
    }

    @Test func reportsEveryProblemAtOnce() throws {
        let message = try rejection("""
            name: p
            stages:
              - { name: a, task: noop, kind: gpu }
              - { name: b, task: noop, after: [zzz], priority: -1 }
            """)
        #expect(message.contains("(3 problems)"))
    }

    @Test func typedBuilderIsValidatedToo() throws {
        let good = PipelineSpec(name: "p", stages: [
            StageSpec(name: "a", task: "noop"),
            StageSpec(name: "b", task: "noop", after: ["a"]),
        ])
        #expect(try good.validated(knownTasks: ["noop"]) == good)
        let cyclic = PipelineSpec(name: "p", stages: [
            StageSpec(name: "a", task: "noop", after: ["b"]),
            StageSpec(name: "b", task: "noop", after: ["a"]),
        ])
        #expect(throws: GantryError.self) { try cyclic.validated() }
    }
}

func jsonEncode<T: Encodable>(_ value: T) throws -> [UInt8] {
    Array(try JSONEncoder().encode(value))
}

func jsonDecode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
    try JSONDecoder().decode(type, from: Data(bytes))
}

import Foundation
