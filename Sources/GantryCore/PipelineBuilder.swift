/// Builds a ``PipelineSpec`` in Swift, with the same fields and checks as the YAML form.
///
/// ```swift
/// let spec = try PipelineSpec("wordstats", timeout: .seconds(600)) {
///     Stage("lines", task: "split").kind(.cpu)
///     Stage("hash", task: "sha256").kind(.cpu).after("lines").map("lines", maxParallel: 8)
///     Stage("count", task: "wordcount").kind(.cpu).after("lines")
///     Stage("report", task: "report").after("hash", "count").retry(RetryPolicy(maxAttempts: 3))
/// }
/// ```
///
/// Names are plain strings here; building checks them and the whole pipeline (names,
/// dependencies, cycles, fields, and task names when `knownTasks` is given) and throws one
/// ``GantryError`` with code `invalidPipeline` listing every problem, as the YAML parser does.
public struct Stage: Sendable, Hashable {
    var name: String
    var task: String
    var kind: StageKind = .io
    var after: [String] = []
    var args: JSONValue = .null
    var retry: RetryPolicy = .default
    var timeout: Duration?
    var queue: String = "default"
    var priority: Int = 0
    var onFailure: FailurePolicy = .failRun
    var map: String?
    var maxParallel: Int?

    /// A stage named `name` running the registered task `task`.
    public init(_ name: String, task: String) {
        self.name = name
        self.task = task
    }

    /// Runs the stage in the worker's child-process pool (`.cpu`) or as an async task (`.io`).
    public func kind(_ kind: StageKind) -> Stage { with { $0.kind = kind } }
    /// Starts the stage after these stages succeed; their results are its inputs.
    public func after(_ stages: String...) -> Stage { with { $0.after += stages } }
    /// The arguments the task gets.
    public func args(_ args: JSONValue) -> Stage { with { $0.args = args } }
    /// How failed attempts are retried.
    public func retry(_ policy: RetryPolicy) -> Stage { with { $0.retry = policy } }
    /// How long one attempt may run.
    public func timeout(_ timeout: Duration) -> Stage { with { $0.timeout = timeout } }
    /// The queue (RabbitMQ queue, Kafka topic suffix) the stage's tasks go to.
    public func queue(_ queue: String) -> Stage { with { $0.queue = queue } }
    /// 0 (lowest) to 9 (highest).
    public func priority(_ priority: Int) -> Stage { with { $0.priority = priority } }
    /// What a permanent failure of the stage does to the run.
    public func onFailure(_ policy: FailurePolicy) -> Stage { with { $0.onFailure = policy } }
    /// Runs the stage once per element of `upstream`'s list result, at most `maxParallel` at once;
    /// `upstream` is added to ``after(_:)`` if it is not there.
    public func map(_ upstream: String, maxParallel: Int? = nil) -> Stage {
        with {
            $0.map = upstream
            $0.maxParallel = maxParallel
            if !$0.after.contains(upstream) { $0.after.append(upstream) }
        }
    }

    private func with(_ change: (inout Stage) -> Void) -> Stage {
        var copy = self
        change(&copy)
        return copy
    }
}

/// Collects the ``Stage``s of a ``PipelineSpec`` built in Swift.
@resultBuilder
public enum PipelineBuilder {
    public static func buildExpression(_ stage: Stage) -> [Stage] { [stage] }
    public static func buildExpression(_ stages: [Stage]) -> [Stage] { stages }
    public static func buildBlock(_ parts: [Stage]...) -> [Stage] { parts.flatMap { $0 } }
    public static func buildOptional(_ part: [Stage]?) -> [Stage] { part ?? [] }
    public static func buildEither(first part: [Stage]) -> [Stage] { part }
    public static func buildEither(second part: [Stage]) -> [Stage] { part }
    public static func buildArray(_ parts: [[Stage]]) -> [Stage] { parts.flatMap { $0 } }
}

extension PipelineSpec {
    /// Builds and validates a pipeline named `name` from the stages `stages` lists.
    ///
    /// - Throws: ``GantryError`` with code `invalidPipeline` naming every problem: an invalid
    ///   or duplicate stage name, an unknown dependency, a cycle, a bad field, or (with
    ///   `knownTasks`) an unknown task.
    public init(_ name: String, timeout: Duration? = nil, knownTasks: Set<String>? = nil, @PipelineBuilder stages: () -> [Stage]) throws {
        var problems: [String] = []
        var specs: [StageSpec] = []
        for stage in stages() {
            guard let stageName = Self.stageName(stage.name, "stage '\(stage.name)'", &problems) else { continue }
            let after = stage.after.compactMap { Self.stageName($0, "stage '\(stage.name)' refers to '\($0)', which", &problems) }
            let map = stage.map.flatMap { Self.stageName($0, "stage '\(stage.name)' maps over '\($0)', which", &problems) }
            specs.append(StageSpec(
                name: stageName, task: stage.task, kind: stage.kind, after: after, args: stage.args, retry: stage.retry,
                timeout: stage.timeout, queue: stage.queue, priority: stage.priority, onFailure: stage.onFailure,
                map: map, maxParallel: stage.maxParallel
            ))
        }
        guard problems.isEmpty else {
            throw GantryError(.invalidPipeline, "pipeline '\(name)' is invalid:\n" + problems.map { "  - \($0)" }.joined(separator: "\n"))
        }
        self = try PipelineSpec(name: name, stages: specs, timeout: timeout).validated(knownTasks: knownTasks)
    }

    /// `text` as a stage name, or nil after noting that `subject` is not a valid one.
    private static func stageName(_ text: String, _ subject: String, _ problems: inout [String]) -> StageName? {
        guard let name = StageName(rawValue: text) else {
            problems.append("\(subject) is not a valid stage name (\(StageName.rule))")
            return nil
        }
        return name
    }
}
