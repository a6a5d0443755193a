/// Everything a task function knows about the attempt it is running.
public struct TaskContext: Sendable {
    /// The run the task belongs to.
    public var runID: RunID
    /// The node being computed (stage and map index).
    public var node: NodeID
    /// 1 for the first try.
    public var attempt: UInt32
    /// The stage's `args` from the pipeline.
    public var args: JSONValue
    /// Results of the stages this one depends on, by stage name. For a mapped upstream stage the
    /// value is the JSON array of its element results. An element of a mapped stage gets its
    /// element as its input, and here only its other dependencies' results.
    public var upstream: [StageName: [UInt8]]
    /// When the attempt must finish, in Unix milliseconds, if there is a deadline.
    public var deadlineMilliseconds: UInt64?

    /// Creates a context.
    public init(runID: RunID, node: NodeID, attempt: UInt32 = 1, args: JSONValue = .null, upstream: [StageName: [UInt8]] = [:], deadlineMilliseconds: UInt64? = nil) {
        self.runID = runID
        self.node = node
        self.attempt = attempt
        self.args = args
        self.upstream = upstream
        self.deadlineMilliseconds = deadlineMilliseconds
    }
}

/// A task function: input bytes and context in, result bytes out.
///
/// Throw a ``GantryError`` with `isRetriable: true` for failures worth another attempt
/// (a timeout talking to a service); anything else fails the attempt for good.
public typealias TaskFunction = @Sendable (_ input: [UInt8], _ context: TaskContext) async throws -> [UInt8]

/// A named task a worker can run.
public struct TaskDefinition: Sendable {
    /// The name pipelines use in `task:`.
    public var name: String
    /// Where the task is meant to run when a stage does not say.
    public var kind: StageKind
    /// One line for `gantry tasks` and error messages.
    public var summary: String
    /// The function itself.
    public var function: TaskFunction

    /// Creates a definition.
    public init(name: String, kind: StageKind, summary: String, function: @escaping TaskFunction) {
        self.name = name
        self.kind = kind
        self.summary = summary
        self.function = function
    }
}

/// The tasks compiled into a worker binary, by name.
///
/// Built-in tasks come from `BuiltinTasks.registry` (module GantryTasks); users add their own with
/// ``register(_:kind:summary:_:)`` and run them with `WorkerApp.main(tasks:)` (module GantryWorkerApp).
public struct TaskRegistry: Sendable {
    private var definitions: [String: TaskDefinition] = [:]

    /// An empty registry.
    public init() {}

    /// Adds a task; a later registration under the same name replaces the earlier one.
    public mutating func register(_ name: String, kind: StageKind, summary: String = "", _ function: @escaping TaskFunction) {
        precondition(PipelineValidator.isTaskName(name), "invalid task name '\(name)'")
        definitions[name] = TaskDefinition(name: name, kind: kind, summary: summary, function: function)
    }

    /// Adds every task of `other`.
    public mutating func merge(_ other: TaskRegistry) {
        definitions.merge(other.definitions) { _, new in new }
    }

    /// The task with this name.
    public subscript(name: String) -> TaskDefinition? {
        definitions[name]
    }

    /// The names of every registered task.
    public var names: Set<String> { Set(definitions.keys) }

    /// Every registered task, sorted by name.
    public var all: [TaskDefinition] { definitions.values.sorted { $0.name < $1.name } }

    /// The task with this name, or an error that lists what is available.
    public func require(_ name: String) throws -> TaskDefinition {
        guard let definition = definitions[name] else {
            throw GantryError(.unknownTask, "unknown task '\(name)'\(suggestion(name, among: Array(names))); this worker knows: \(names.sorted().joined(separator: ", "))")
        }
        return definition
    }
}

/// How a stage's input bytes are assembled from the run input and upstream results.
public enum StageInput {
    /// The input of a node:
    /// - a mapped node: its element of the mapped stage's list, as JSON;
    /// - one upstream stage: that stage's result bytes, unchanged;
    /// - several: a JSON object of upstream results by stage name (each parsed as JSON when it
    ///   is JSON, else carried as a string);
    /// - none (a root stage): the run's input.
    public static func assemble(stage: StageSpec, index: Int?, runInput: [UInt8], upstream: [StageName: [UInt8]]) throws -> [UInt8] {
        if let map = stage.map, let index {
            guard let list = upstream[map] else {
                throw GantryError(.notFound, "stage '\(stage.name)' maps over '\(map)' but that result is missing")
            }
            guard let elements = try? JSONValue(parsing: list).arrayValue else {
                throw GantryError(.invalidArgument, "stage '\(stage.name)' maps over '\(map)', whose result is not a JSON list; make '\(map)' return a JSON array")
            }
            guard index < elements.count else {
                throw GantryError(.notFound, "stage '\(stage.name)' element \(index) is beyond the \(elements.count) elements of '\(map)'")
            }
            return encodeElement(elements[index])
        }
        switch stage.after.count {
        case 0:
            return runInput
        case 1:
            return upstream[stage.after[0]] ?? []
        default:
            var object: [String: JSONValue] = [:]
            for name in stage.after {
                object[name.rawValue] = jsonOrString(upstream[name] ?? [])
            }
            return JSONValue.object(object).jsonBytes
        }
    }

    /// A mapped element as the task sees it: a JSON string element is passed as its raw text
    /// (so `sha256` over a list of strings hashes the strings), anything else as JSON.
    public static func encodeElement(_ element: JSONValue) -> [UInt8] {
        if case .string(let text) = element { return Array(text.utf8) }
        return element.jsonBytes
    }

    /// The results of a mapped stage's elements as one JSON array, for its dependents.
    public static func gather(_ results: [[UInt8]]) -> [UInt8] {
        JSONValue.array(results.map(jsonOrString)).jsonBytes
    }

    /// Bytes as JSON when they are JSON, else as a JSON string.
    public static func jsonOrString(_ bytes: [UInt8]) -> JSONValue {
        if let value = try? JSONValue(parsing: bytes) { return value }
        return .string(String(decoding: bytes, as: UTF8.self))
    }
}
