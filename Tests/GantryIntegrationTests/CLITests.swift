import Foundation
import GantryCore
import Testing

/// Runs the built `gantry` binary (next to the test bundle) with `arguments` and `environment`
/// added to this process's, and returns its exit status, standard output and standard error.
private func gantry(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, out: String, err: String) {
    let products = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    var binary = products.appendingPathComponent("gantry")
    // The xctest bundle sits one level deeper on some toolchains.
    if !FileManager.default.isExecutableFile(atPath: binary.path) {
        binary = products.deletingLastPathComponent().appendingPathComponent("gantry")
    }
    let process = Process()
    process.executableURL = binary
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    // Standard error goes to a file and standard output to a pipe read to its end, so a chatty
    // child never blocks on a full pipe.
    let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-cli-\(UUID().uuidString).err")
    FileManager.default.createFile(atPath: errURL.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: errURL) }
    let out = Pipe()
    process.standardOutput = out
    process.standardError = try FileHandle(forWritingTo: errURL)
    try process.run()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let errData = (try? Data(contentsOf: errURL)) ?? Data()
    return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
}

private func temporaryFile(_ name: String, _ text: String) throws -> String {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-cli-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let path = directory.appendingPathComponent(name).path
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

@Suite struct CLITests {
    /// A namespace and queue no other test uses, on the local stack's Redis and RabbitMQ.
    let environment = [
        "GANTRY_STORE_NAMESPACE": "gantry-cli-\(UUID().uuidString.prefix(8))",
        "GANTRY_BROKER": "rabbitmq",
        "GANTRY_CONFIG": "",
    ].filter { !$0.value.isEmpty }

    @Test func aMalformedPipelineIsRejectedWithItsFileAndLine() throws {
        let path = try temporaryFile("bad.yaml", """
            name: bad
            stages:
              - name: a
                task: sha265
              - name: b
                task: noop
                after: [c]
            """)
        let result = try gantry(["validate", path])
        #expect(result.status == 1)
        #expect(result.err.contains("\(path):4:11: stage 'a': unknown task 'sha265' (did you mean 'sha256'?)"))
        #expect(result.err.contains("\(path):7:"))
        #expect(result.err.contains("depends on unknown stage 'c'"))
        let missing = try gantry(["validate", "/nonexistent/pipeline.yaml"])
        #expect(missing.status == 1)
        #expect(missing.err.contains("cannot read pipeline file '/nonexistent/pipeline.yaml'"))
    }

    @Test func aValidPipelineIsListedInRunOrder() throws {
        let path = try temporaryFile("good.yaml", "name: good\nstages:\n  - { name: b, task: noop, after: [a] }\n  - { name: a, task: noop }\n")
        let result = try gantry(["validate", path])
        #expect(result.status == 0)
        let lines = result.out.split(separator: "\n").map(String.init)
        #expect(lines.first == "pipeline 'good' is valid: 2 stages")
        #expect(lines.firstIndex { $0.contains(" a ") }! < lines.firstIndex { $0.contains(" b ") }!)
    }

    @Test func anUnreachableServerIsOneErrorNamingTheAddressAndSetting() throws {
        let result = try gantry(["status"], environment: ["GANTRY_REDIS_URL": "redis://127.0.0.1:1"])
        #expect(result.status == 1)
        #expect(result.err.contains("127.0.0.1:1"))
        #expect(result.err.contains("environment variable GANTRY_REDIS_URL"))
        #expect(result.err.split(separator: "\n").count == 1)
    }

    @Test func submitExplainAndCancelAQueuedRun() throws {
        let queue = "cli-\(UUID().uuidString.prefix(8).lowercased())"
        let path = try temporaryFile("p.yaml", """
            name: cli
            stages:
              - { name: first, task: echo, queue: \(queue) }
              - { name: second, task: echo, after: [first], queue: \(queue) }
            """)
        // No worker consumes this queue: the run stays where submit left it.
        let submitted = try gantry(["submit", path, "--input", "hello", "--json"], environment: environment)
        #expect(submitted.status == 0, "\(submitted.err)")
        let run = try #require(try JSONValue(parsing: submitted.out)["run"]?.stringValue)

        let status = try gantry(["status", run, "--json"], environment: environment)
        #expect(status.status == 0)
        let parsed = try JSONValue(parsing: status.out)
        #expect(parsed["state"] == .string("running"))
        #expect(parsed["stages"]?.arrayValue?.compactMap { $0["state"]?.stringValue } == ["queued", "waiting"])

        let explained = try gantry(["explain", run, "--json"], environment: environment)
        #expect(explained.status == 0)
        let blockers = try JSONValue(parsing: explained.out).arrayValue?.compactMap { $0["blocker"]?.stringValue }
        #expect(blockers == ["queue", "dependency"])
        let text = try gantry(["explain", run, "second"], environment: environment)
        #expect(text.out.contains("second: waiting on first (queued)"))

        let cancelled = try gantry(["cancel", run], environment: environment)
        #expect(cancelled.status == 0)
        #expect(cancelled.out.contains("run \(run) cancelled"))
        let again = try gantry(["cancel", run], environment: environment)
        #expect(again.status == 3)
        let afterCancel = try gantry(["explain", run, "first", "--json"], environment: environment)
        #expect(try JSONValue(parsing: afterCancel.out).arrayValue?.first?["blocker"] == .string("cancelled"))

        let unknown = try gantry(["status", RunID.make().rawValue], environment: environment)
        #expect(unknown.status == 1)
        #expect(unknown.err.contains("does not exist"))
    }
}
