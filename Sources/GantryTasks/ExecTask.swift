import Foundation
import GantryCore
import Subprocess

#if canImport(Glibc)
import Glibc
#endif

/// The `exec` built-in task: runs an allowed command with the task's input on its stdin and
/// returns what it writes to stdout.
///
/// Arguments (the stage's `args`):
///
/// | arg | meaning |
/// |---|---|
/// | `command` | a program (`wc`), or a list of the program and its arguments (`[wc, -l]`) |
/// | `retriable_exit_codes` | exit statuses worth another attempt (default none) |
///
/// The program must be listed in `tasks.exec_allow` (`GANTRY_TASKS_EXEC_ALLOW`, comma-separated)
/// exactly as the stage writes it; the list is empty by default, so `exec` is off until a
/// worker's operator allows commands. No shell is involved: arguments are passed as they are.
/// The command inherits the worker's environment without its `GANTRY_*` variables (they may
/// hold secrets), plus `GANTRY_RUN`, `GANTRY_NODE` and `GANTRY_ATTEMPT`.
///
/// A non-zero exit fails the task with the status and the tail of stderr; a stage timeout (or
/// any cancellation) stops the command and its process group with SIGTERM, then SIGKILL.
public enum ExecTask {
    /// How much of stderr a failure message quotes.
    static let stderrTailBytes = 2048

    /// Runs the command `args` names with `input` on stdin.
    public static func run(input: [UInt8], context: TaskContext, configuration: BuiltinTaskConfiguration) async throws -> [UInt8] {
        let command = try commandLine(context.args)
        let program = command[0]
        guard configuration.execAllow.contains(program) else {
            if configuration.execAllow.isEmpty {
                throw GantryError(.configuration, "exec is disabled on this worker: setting 'tasks.exec_allow' is empty; list the commands it may run, e.g. 'tasks: { exec_allow: [\(program)] }' in config/gantry.yaml or GANTRY_TASKS_EXEC_ALLOW=\(program)")
            }
            throw GantryError(.configuration, "exec: command '\(program)' is not allowed on this worker; add it to setting 'tasks.exec_allow' (config/gantry.yaml, or GANTRY_TASKS_EXEC_ALLOW, comma-separated); allowed now: \(configuration.execAllow.joined(separator: ", "))")
        }
        let retriableCodes = try exitCodes(context.args["retriable_exit_codes"])
        _ = ignoreBrokenPipes

        var options = PlatformOptions()
        let ownGroup = configuration.execOwnProcessGroup
        if ownGroup { options.processGroupID = 0 }
        let teardown: [TeardownStep] = [.gracefulShutDown(toProcessGroup: ownGroup, allowedDurationToNextStep: .seconds(1))]
        options.teardownSequence = teardown
        let executable: Executable = program.hasPrefix("/") ? .path(.init(program)) : .name(program)
        let limit = configuration.execMaxOutputBytes

        let output: [UInt8]
        let stderrTail: [UInt8]
        let status: TerminationStatus
        do {
            let result = try await Subprocess.run(
                executable,
                arguments: Arguments(Array(command.dropFirst())),
                environment: environment(context),
                platformOptions: options,
                input: .inputWriter,
                output: .bytes(limit: limit),
                error: .sequence
            ) { execution in
                // stdin is written while stderr is drained, so that neither side can fill a pipe
                // and wait for the other. A command that exits without reading all of its input
                // is not an error: many filters stop early (`head`).
                try await withThrowingTaskGroup(of: [UInt8]?.self) { group in
                    group.addTask {
                        _ = try? await execution.standardInputWriter.write(input)
                        try? await execution.standardInputWriter.finish()
                        return nil
                    }
                    group.addTask {
                        var tail: [UInt8] = []
                        for try await chunk in execution.standardError {
                            chunk.withUnsafeBytes { tail.append(contentsOf: $0) }
                            if tail.count > 2 * stderrTailBytes { tail.removeFirst(tail.count - stderrTailBytes) }
                        }
                        return Array(tail.suffix(stderrTailBytes))
                    }
                    var tail: [UInt8] = []
                    for try await value in group { if let value { tail = value } }
                    return tail
                }
            }
            output = result.standardOutput
            stderrTail = result.closureResult
            status = result.terminationStatus
        } catch let error as SubprocessError {
            throw translate(error, program: program, limit: limit)
        }
        let text = String(decoding: stderrTail, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let said = text.isEmpty ? "" : "; stderr ends: \(text)"
        switch status {
        case .exited(0):
            return output
        case .exited(let code):
            throw GantryError(.taskFailed, "exec: '\(command.joined(separator: " "))' exited with status \(code)\(said)", isRetriable: retriableCodes.contains(Int(code)))
        case .signaled(let signal):
            throw GantryError(.taskFailed, "exec: '\(command.joined(separator: " "))' was killed by signal \(signal)\(said)", isRetriable: true)
        }
    }

    /// `args.command` as a program and its arguments.
    static func commandLine(_ args: JSONValue) throws -> [String] {
        let usage = "set args.command to a program name or a list of the program and its arguments, e.g. { command: [wc, -l] }"
        switch args["command"] {
        case .string(let program)?:
            guard !program.isEmpty else { throw GantryError(.invalidArgument, "exec: args.command is empty; \(usage)") }
            return [program]
        case .array(let items)?:
            let words = try items.map { item -> String in
                switch item {
                case .string(let text): return text
                case .int, .double, .bool: return item.jsonString
                default: throw GantryError(.invalidArgument, "exec: args.command items must be text, got \(item); \(usage)")
                }
            }
            guard let first = words.first, !first.isEmpty else { throw GantryError(.invalidArgument, "exec: args.command is empty; \(usage)") }
            return words
        case nil:
            throw GantryError(.invalidArgument, "exec: no command; \(usage)")
        case let other?:
            throw GantryError(.invalidArgument, "exec: args.command must be text or a list, got \(other); \(usage)")
        }
    }

    private static func exitCodes(_ value: JSONValue?) throws -> Set<Int> {
        guard let value else { return [] }
        guard let items = value.arrayValue, let codes = Optional(items.compactMap(\.intValue)), codes.count == items.count else {
            throw GantryError(.invalidArgument, "exec: args.retriable_exit_codes must be a list of exit statuses like [75], got \(value)")
        }
        return Set(codes.map { Int($0) })
    }

    /// The worker's environment without its own settings, plus the attempt's identity.
    private static func environment(_ context: TaskContext) -> Environment {
        var changes: [Environment.Key: String?] = [:]
        for name in ProcessInfo.processInfo.environment.keys where name.hasPrefix("GANTRY_") {
            changes[Environment.Key(stringLiteral: name)] = .some(nil)
        }
        changes["GANTRY_RUN"] = context.runID.rawValue
        changes["GANTRY_NODE"] = context.node.description
        changes["GANTRY_ATTEMPT"] = String(context.attempt)
        return .inherit.updating(changes)
    }

    private static func translate(_ error: SubprocessError, program: String, limit: Int) -> GantryError {
        switch error.code {
        case .outputLimitExceeded:
            return GantryError(.payloadTooLarge, "exec: '\(program)' wrote more than \(limit) bytes to stdout; raise tasks.exec_max_output_bytes or make it write less", underlying: error, isRetriable: false)
        case .executableNotFound, .spawnFailed, .failedToChangeWorkingDirectory:
            return GantryError(.configuration, "exec: cannot start '\(program)' (\(error)); install it on the worker or list its absolute path in tasks.exec_allow", underlying: error, isRetriable: false)
        default:
            return GantryError(.taskFailed, "exec: running '\(program)' failed: \(error)", underlying: error, isRetriable: true)
        }
    }

    /// Writing to a command that already exited must be an error the task sees (EPIPE), not a
    /// signal that kills the worker. Set once, for the whole process, on the first `exec`.
    private static let ignoreBrokenPipes: Void = {
        signal(SIGPIPE, SIG_IGN)
    }()
}
