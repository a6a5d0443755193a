import ArgumentParser
import Foundation
import GantryCore
import GantryTasks
import GantryWorker
import Logging

@main
struct GantryCommand: AsyncParsableCommand {
    /// The CLI reports failures itself, once, as `error: …`; library logs below errors stay quiet.
    static func main() async {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .error
            return handler
        }
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "gantry",
        abstract: "Submit and inspect Gantry jobs and pipelines.",
        subcommands: [
            Submit.self, RunTask.self, Status.self, Watch.self, Explain.self, Cancel.self, Retry.self, DeadLetters.self,
            Workers.self, Queues.self, Dev.self, Validate.self, RunLocal.self, Tasks.self, Config.self,
        ]
    )
}

/// Reads a pipeline file and validates it against the tasks this binary knows.
func loadPipeline(_ path: String) throws -> PipelineSpec {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw GantryError(.notFound, "cannot read pipeline file '\(path)': no such file or not readable")
    }
    return try PipelineSpec.parse(yaml: String(decoding: data, as: UTF8.self), file: path, knownTasks: BuiltinTasks.registry.names)
}

/// `--input` as given: inline text, or `@path` for a file's bytes.
func readInput(_ argument: String?) throws -> [UInt8] {
    guard let argument else { return [] }
    if argument.hasPrefix("@") {
        let path = String(argument.dropFirst())
        guard let data = FileManager.default.contents(atPath: path) else {
            throw GantryError(.notFound, "cannot read input file '\(path)'")
        }
        return Array(data)
    }
    return Array(argument.utf8)
}

/// Prints a Gantry error the way a person needs it and exits non-zero.
func fail(_ error: any Error) -> ExitCode {
    if let error = error as? GantryError {
        FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
    } else {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    }
    return ExitCode(1)
}

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check a pipeline file and print its stages in run order.")

    @Argument(help: "The pipeline YAML file.")
    var pipeline: String

    func run() throws {
        do {
            let plan = try PipelinePlan(loadPipeline(pipeline))
            print("pipeline '\(plan.spec.name)' is valid: \(plan.spec.stages.count) stages")
            for position in plan.topologicalOrder {
                let stage = plan[position]
                let after = stage.after.isEmpty ? "" : " after \(stage.after.map(\.rawValue).joined(separator: ", "))"
                let map = stage.map.map { " (map over \($0))" } ?? ""
                print("  \(stage.name)  \(stage.task) [\(stage.kind.rawValue)]\(after)\(map)")
            }
        } catch {
            throw fail(error)
        }
    }
}

struct RunLocal: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run-local",
        abstract: "Run a pipeline inside this process, without a cluster, and print each stage's outcome."
    )

    @Argument(help: "The pipeline YAML file.")
    var pipeline: String

    @Option(help: "The run input: text, or @path to read a file.")
    var input: String?

    @Flag(help: "Print each stage's result.")
    var results = false

    func run() async throws {
        do {
            let plan = try PipelinePlan(loadPipeline(pipeline))
            let payload = try readInput(input)
            let showResults = results
            let report = try await LocalPipelineRunner(registry: BuiltinTasks.registry).run(plan, input: payload) { name, outcome in
                switch outcome {
                case .succeeded(let result, let attempts, let elapsed):
                    print("✔ \(name)  \(elapsed.shortDescription)  attempts=\(attempts)  \(result.count) bytes")
                    if showResults { print("    \(String(decoding: result.prefix(2000), as: UTF8.self))") }
                case .failed(let error, let attempts):
                    print("✘ \(name)  attempts=\(attempts)  \(error)")
                case .skipped(let reason):
                    print("- \(name)  skipped: \(reason)")
                }
            }
            print(report.succeeded ? "run succeeded in \(report.elapsed.shortDescription)" : "run failed")
            if !report.succeeded { throw ExitCode(2) }
        } catch let exit as ExitCode {
            throw exit
        } catch {
            throw fail(error)
        }
    }
}

struct Tasks: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the tasks this build of Gantry can run.")

    func run() {
        for task in BuiltinTasks.registry.all {
            print("\(task.name.padding(toLength: 12, withPad: " ", startingAt: 0)) \(task.kind.rawValue.padding(toLength: 4, withPad: " ", startingAt: 0)) \(task.summary)")
        }
    }
}
