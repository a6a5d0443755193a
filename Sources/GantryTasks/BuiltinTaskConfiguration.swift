import GantryCore

/// Settings of the built-in tasks that reach outside the worker: `http` and `exec`.
///
/// | key | property | default |
/// |---|---|---|
/// | `tasks.exec_allow` | ``execAllow`` | `[]`: `exec` is disabled |
/// | `tasks.exec_max_output_bytes` | ``execMaxOutputBytes`` | 1 MiB |
/// | `tasks.http_timeout` | ``httpTimeout`` | 30 s |
/// | `tasks.http_max_response_bytes` | ``httpMaxResponseBytes`` | 1 MiB |
///
/// A task's result must also fit `store.max_result_bytes` to be committed.
public struct BuiltinTaskConfiguration: Sendable {
    /// The commands `exec` may run, each a program name looked up on `PATH` (`wc`) or an absolute
    /// path (`/usr/local/bin/convert`); a stage's command must match an entry exactly. Empty
    /// (the default) disables `exec`. Allowing a shell allows anything.
    public var execAllow: [String]
    /// The most bytes a command may write to stdout; more fails the task. Default 1 MiB.
    public var execMaxOutputBytes: Int
    /// Whether `exec` starts each command in a process group of its own, so that a timeout stops
    /// everything the command started without touching the worker. Default true. A pool child
    /// sets it to false: the pool stops the child's whole process group, command included.
    public var execOwnProcessGroup: Bool
    /// How long an `http` request may take, head and body, when the stage's `args.timeout` does
    /// not say. Default 30 s.
    public var httpTimeout: Duration
    /// The largest `http` response body accepted; a larger one fails the task. Default 1 MiB.
    public var httpMaxResponseBytes: Int

    /// The defaults listed on each property.
    public init(
        execAllow: [String] = [],
        execMaxOutputBytes: Int = 1 << 20,
        execOwnProcessGroup: Bool = true,
        httpTimeout: Duration = .seconds(30),
        httpMaxResponseBytes: Int = 1 << 20
    ) {
        self.execAllow = execAllow
        self.execMaxOutputBytes = execMaxOutputBytes
        self.execOwnProcessGroup = execOwnProcessGroup
        self.httpTimeout = httpTimeout
        self.httpMaxResponseBytes = httpMaxResponseBytes
    }

    /// The `tasks.*` settings.
    public init(settings: GantrySettings) throws {
        self.init(
            execAllow: try settings.strings("tasks.exec_allow").filter { !$0.isEmpty },
            execMaxOutputBytes: try settings.int("tasks.exec_max_output_bytes"),
            httpTimeout: try settings.duration("tasks.http_timeout"),
            httpMaxResponseBytes: try settings.int("tasks.http_max_response_bytes")
        )
        if let problem = problems.first { throw GantryError(.configuration, problem) }
    }

    /// Problems with the values, each naming the setting; empty when valid.
    public var problems: [String] {
        var result: [String] = []
        for entry in execAllow where entry.contains("/") && !entry.hasPrefix("/") {
            result.append("tasks.exec_allow: '\(entry)' is a relative path; list a program name (looked up on PATH) or an absolute path")
        }
        if execMaxOutputBytes < 1 { result.append("tasks.exec_max_output_bytes must be at least 1, got \(execMaxOutputBytes)") }
        if httpTimeout <= .zero { result.append("tasks.http_timeout must be positive, got \(httpTimeout.shortDescription)") }
        if httpMaxResponseBytes < 1 { result.append("tasks.http_max_response_bytes must be at least 1, got \(httpMaxResponseBytes)") }
        return result
    }
}
