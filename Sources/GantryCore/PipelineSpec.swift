/// What happens to the rest of a run when a stage fails for good.
public enum FailurePolicy: String, Hashable, Sendable, Codable, CaseIterable {
    /// The run fails; stages not yet started are cancelled. The default.
    case failRun = "fail_run"
    /// The run goes on: stages that depend on the failed one are skipped, the others run.
    case `continue` = "continue"
}

/// One stage of a pipeline: which task runs, where, after what, and how it is retried.
public struct StageSpec: Hashable, Sendable, Codable {
    /// The stage's name, unique within the pipeline.
    public var name: StageName
    /// The registered task that does the work, e.g. `sha256`.
    public var task: String
    /// Whether the stage runs in the worker's child-process pool (`cpu`) or as an async task (`io`).
    public var kind: StageKind
    /// The stages that must succeed before this one starts. Their results are this stage's inputs.
    public var after: [StageName]
    /// Arguments passed to the task, as written in the pipeline.
    public var args: JSONValue
    /// How the stage is retried when it fails with a retriable error.
    public var retry: RetryPolicy
    /// How long one attempt may run before it is cancelled; `nil` means no limit.
    public var timeout: Duration?
    /// The queue (RabbitMQ queue or Kafka topic suffix) the stage's tasks are published to.
    public var queue: String
    /// 0 (lowest, default) to 9 (highest); honoured by brokers that support priorities.
    public var priority: Int
    /// What a permanent failure of this stage does to the run.
    public var onFailure: FailurePolicy
    /// When set, the stage runs once per element of this upstream stage's list result.
    public var map: StageName?
    /// For a mapped stage, how many elements may run at once; `nil` means no limit.
    public var maxParallel: Int?

    /// Creates a stage; defaults match a stage written in YAML with only `name` and `task`.
    public init(
        name: StageName,
        task: String,
        kind: StageKind = .io,
        after: [StageName] = [],
        args: JSONValue = .null,
        retry: RetryPolicy = .default,
        timeout: Duration? = nil,
        queue: String = "default",
        priority: Int = 0,
        onFailure: FailurePolicy = .failRun,
        map: StageName? = nil,
        maxParallel: Int? = nil
    ) {
        self.name = name
        self.task = task
        self.kind = kind
        self.after = after
        self.args = args
        self.retry = retry
        self.timeout = timeout
        self.queue = queue
        self.priority = priority
        self.onFailure = onFailure
        self.map = map
        self.maxParallel = maxParallel
    }

    private enum CodingKeys: String, CodingKey {
        case name, task, kind, after, args, retry, timeoutMs = "timeout_ms", queue, priority
        case onFailure = "on_failure", map, maxParallel = "max_parallel"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(StageName.self, forKey: .name)
        task = try container.decode(String.self, forKey: .task)
        kind = try container.decode(StageKind.self, forKey: .kind)
        after = try container.decode([StageName].self, forKey: .after)
        args = try container.decodeIfPresent(JSONValue.self, forKey: .args) ?? .null
        retry = try container.decode(RetryPolicy.self, forKey: .retry)
        timeout = try container.decodeIfPresent(Int64.self, forKey: .timeoutMs).map { .milliseconds($0) }
        queue = try container.decode(String.self, forKey: .queue)
        priority = try container.decode(Int.self, forKey: .priority)
        onFailure = try container.decode(FailurePolicy.self, forKey: .onFailure)
        map = try container.decodeIfPresent(StageName.self, forKey: .map)
        maxParallel = try container.decodeIfPresent(Int.self, forKey: .maxParallel)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(task, forKey: .task)
        try container.encode(kind, forKey: .kind)
        try container.encode(after, forKey: .after)
        if args != .null { try container.encode(args, forKey: .args) }
        try container.encode(retry, forKey: .retry)
        try container.encodeIfPresent(timeout?.milliseconds, forKey: .timeoutMs)
        try container.encode(queue, forKey: .queue)
        try container.encode(priority, forKey: .priority)
        try container.encode(onFailure, forKey: .onFailure)
        try container.encodeIfPresent(map, forKey: .map)
        try container.encodeIfPresent(maxParallel, forKey: .maxParallel)
    }
}

/// A pipeline: a named DAG of stages, as written in YAML or built in Swift.
public struct PipelineSpec: Hashable, Sendable, Codable {
    /// The pipeline's name, shown in status output.
    public var name: String
    /// The stages in the order they were written.
    public var stages: [StageSpec]
    /// The deadline for the whole run, from submission; `nil` means no limit.
    public var timeout: Duration?

    /// Creates a pipeline. Call ``validated(knownTasks:)`` before running it.
    public init(name: String, stages: [StageSpec], timeout: Duration? = nil) {
        self.name = name
        self.stages = stages
        self.timeout = timeout
    }

    /// The stage with the given name.
    public func stage(_ name: StageName) -> StageSpec? {
        stages.first { $0.name == name }
    }

    /// Checks the pipeline (names, dependencies, cycles, fields, and task names when
    /// `knownTasks` is given) and returns it, or throws an error listing every problem.
    public func validated(knownTasks: Set<String>? = nil) throws -> PipelineSpec {
        var validator = PipelineValidator(file: nil)
        validator.validate(self, knownTasks: knownTasks, locations: PipelineLocations())
        try validator.throwIfProblems()
        return self
    }

    private enum CodingKeys: String, CodingKey { case name, stages, timeoutMs = "timeout_ms" }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        stages = try container.decode([StageSpec].self, forKey: .stages)
        timeout = try container.decodeIfPresent(Int64.self, forKey: .timeoutMs).map { .milliseconds($0) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(stages, forKey: .stages)
        try container.encodeIfPresent(timeout?.milliseconds, forKey: .timeoutMs)
    }
}

/// A place in a pipeline file, for error messages.
public struct SourceLocation: Hashable, Sendable, CustomStringConvertible {
    /// The file name as given by the caller, if any.
    public var file: String?
    /// 1-based line.
    public var line: Int
    /// 1-based column.
    public var column: Int

    public init(file: String?, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String {
        "\(file ?? "<pipeline>"):\(line):\(column)"
    }
}

/// One thing wrong with a pipeline, with where it is when it came from a file.
public struct PipelineProblem: Hashable, Sendable, CustomStringConvertible {
    /// Where the problem is, when known.
    public var location: SourceLocation?
    /// What is wrong and how to fix it.
    public var message: String

    public var description: String {
        if let location { return "\(location): \(message)" }
        return message
    }
}

/// Limits that keep a single pipeline within what one run can hold.
public enum PipelineLimits {
    /// The most stages one pipeline may have.
    public static let maxStages = 10_000
    /// The longest task or queue name.
    public static let maxNameLength = 100
}
