import Yams

extension PipelineSpec {
    /// Parses and validates a pipeline written in YAML.
    ///
    /// Every problem found is reported at once, each with `file:line:column`:
    ///
    /// ```yaml
    /// name: report
    /// timeout: 10m                 # optional deadline for the whole run
    /// defaults:                    # optional; any stage field except name/after/map/args
    ///   queue: default
    ///   retry: { max_attempts: 3, initial_backoff: 200ms, max_backoff: 1m, multiplier: 2, jitter: 0.2 }
    /// stages:
    ///   - name: fetch
    ///     task: http
    ///     args: { url: "https://example.com" }
    ///   - name: hash
    ///     task: sha256
    ///     kind: cpu
    ///     after: [fetch]
    /// ```
    ///
    /// - Parameters:
    ///   - yaml: the document.
    ///   - file: the file name to show in error messages.
    ///   - knownTasks: when given, a stage naming a task outside this set is an error.
    public static func parse(yaml: String, file: String? = nil, knownTasks: Set<String>? = nil) throws -> PipelineSpec {
        var parser = PipelineYAMLParser(file: file)
        let spec = parser.parse(yaml)
        if let spec {
            parser.validator.validate(spec, knownTasks: knownTasks, locations: parser.locations)
        }
        try parser.validator.throwIfProblems()
        guard let spec else {
            throw GantryError(.invalidPipeline, "pipeline is invalid")
        }
        return spec
    }
}

/// Walks the YAML node tree by hand (rather than through `Decodable`) so that every problem can
/// name the line it is on.
private struct PipelineYAMLParser {
    var validator: PipelineValidator
    var locations = PipelineLocations()
    let file: String?

    init(file: String?) {
        self.file = file
        self.validator = PipelineValidator(file: file)
    }

    private static let topLevelKeys: Set<String> = ["name", "timeout", "defaults", "stages", "description"]
    private static let stageKeys: Set<String> = [
        "name", "task", "kind", "after", "args", "retry", "timeout", "queue", "priority", "on_failure", "map", "max_parallel", "description",
    ]
    private static let defaultableKeys: Set<String> = ["task", "kind", "retry", "timeout", "queue", "priority", "on_failure", "max_parallel"]
    private static let retryKeys: Set<String> = ["max_attempts", "initial_backoff", "max_backoff", "multiplier", "jitter"]

    mutating func parse(_ yaml: String) -> PipelineSpec? {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            report(yamlErrorMessage(error), at: yamlErrorMark(error))
            return nil
        } catch {
            report("cannot read YAML: \(error)", at: nil)
            return nil
        }
        guard let root, case .mapping(let mapping) = root else {
            report("a pipeline is a YAML mapping with 'name' and 'stages'", at: root?.mark)
            return nil
        }
        checkKeys(mapping, allowed: Self.topLevelKeys, context: "pipeline")

        var name = "pipeline"
        if let node = mapping["name"] {
            if let text = scalarString(node, field: "name") { name = text }
        } else {
            report("pipeline has no 'name': add `name: my-pipeline` at the top", at: root.mark)
        }
        let timeout = mapping["timeout"].flatMap { duration($0, field: "timeout") }

        var defaults = StageSpec(name: "defaults", task: "")
        if let node = mapping["defaults"] {
            if case .mapping(let defaultsMap) = node {
                checkKeys(defaultsMap, allowed: Self.defaultableKeys, context: "defaults")
                applyFields(defaultsMap, to: &defaults, stageName: nil)
            } else {
                report("'defaults' must be a mapping of stage fields", at: node.mark)
            }
        }

        var stages: [StageSpec] = []
        if let node = mapping["stages"] {
            guard case .sequence(let sequence) = node else {
                report("'stages' must be a list, each item starting with `- name:`", at: node.mark)
                return nil
            }
            for item in sequence {
                if let stage = parseStage(item, index: stages.count, defaults: defaults) { stages.append(stage) }
            }
        } else {
            report("pipeline has no 'stages': add a list of stages", at: root.mark)
        }
        return PipelineSpec(name: name, stages: stages, timeout: timeout)
    }

    private mutating func parseStage(_ node: Node, index: Int, defaults: StageSpec) -> StageSpec? {
        guard case .mapping(let mapping) = node else {
            report("each stage must be a mapping with at least 'name' and 'task'", at: node.mark)
            return nil
        }
        guard let nameNode = mapping["name"] else {
            report("stage has no 'name'", at: node.mark)
            return nil
        }
        guard let nameText = scalarString(nameNode, field: "name") else { return nil }
        guard let name = StageName(rawValue: nameText) else {
            report("stage name '\(nameText)' is invalid: \(StageName.rule)", at: nameNode.mark)
            return nil
        }
        if locations.stages[name] == nil {
            locations.stages[name] = location(nameNode.mark)
        }
        locations.byIndex[index] = location(nameNode.mark)
        checkKeys(mapping, allowed: Self.stageKeys, context: "stage '\(name)'")

        var stage = defaults
        stage.name = name
        applyFields(mapping, to: &stage, stageName: name)
        if mapping["task"] == nil && defaults.task.isEmpty {
            report("stage '\(name)' has no 'task': name the registered task that does its work", at: node.mark)
        }
        if let afterNode = mapping["after"] {
            locations.fields[name, default: [:]]["after"] = location(afterNode.mark)
            stage.after = stageNames(afterNode, field: "after")
        }
        if let mapNode = mapping["map"] {
            locations.fields[name, default: [:]]["map"] = location(mapNode.mark)
            if let text = scalarString(mapNode, field: "map") {
                if let upstream = StageName(rawValue: text) {
                    stage.map = upstream
                } else {
                    report("'map' must name an upstream stage, got '\(text)'", at: mapNode.mark)
                }
            }
        }
        if let argsNode = mapping["args"] {
            stage.args = jsonValue(argsNode)
        }
        return stage
    }

    /// Fields that may appear both in a stage and in `defaults`.
    private mutating func applyFields(_ mapping: Node.Mapping, to stage: inout StageSpec, stageName: StageName?) {
        func remember(_ field: String, _ node: Node) {
            if let stageName { locations.fields[stageName, default: [:]][field] = location(node.mark) }
        }
        if let node = mapping["task"], let text = scalarString(node, field: "task") {
            remember("task", node)
            stage.task = text
        }
        if let node = mapping["kind"], let text = scalarString(node, field: "kind") {
            if let kind = StageKind(rawValue: text) {
                stage.kind = kind
            } else {
                report("'kind' must be 'cpu' or 'io', got '\(text)'", at: node.mark)
            }
        }
        if let node = mapping["timeout"] {
            remember("timeout", node)
            if let value = duration(node, field: "timeout") { stage.timeout = value }
        }
        if let node = mapping["queue"], let text = scalarString(node, field: "queue") {
            remember("queue", node)
            stage.queue = text
        }
        if let node = mapping["priority"], let value = integer(node, field: "priority") {
            remember("priority", node)
            stage.priority = value
        }
        if let node = mapping["max_parallel"], let value = integer(node, field: "max_parallel") {
            remember("max_parallel", node)
            stage.maxParallel = value
        }
        if let node = mapping["on_failure"], let text = scalarString(node, field: "on_failure") {
            if let policy = FailurePolicy(rawValue: text) {
                stage.onFailure = policy
            } else {
                report("'on_failure' must be one of \(FailurePolicy.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", ")), got '\(text)'", at: node.mark)
            }
        }
        if let node = mapping["retry"] {
            remember("retry", node)
            stage.retry = retryPolicy(node, base: stage.retry)
        }
    }

    private mutating func retryPolicy(_ node: Node, base: RetryPolicy) -> RetryPolicy {
        var policy = base
        if let attempts = node.int, case .scalar = node {
            policy.maxAttempts = attempts
            return policy
        }
        guard case .mapping(let mapping) = node else {
            report("'retry' must be a number of attempts or a mapping of \(Self.retryKeys.sorted().joined(separator: ", "))", at: node.mark)
            return policy
        }
        checkKeys(mapping, allowed: Self.retryKeys, context: "retry")
        if let node = mapping["max_attempts"], let value = integer(node, field: "max_attempts") { policy.maxAttempts = value }
        if let node = mapping["initial_backoff"], let value = duration(node, field: "initial_backoff") { policy.initialBackoff = value }
        if let node = mapping["max_backoff"], let value = duration(node, field: "max_backoff") { policy.maxBackoff = value }
        if let node = mapping["multiplier"], let value = number(node, field: "multiplier") { policy.multiplier = value }
        if let node = mapping["jitter"], let value = number(node, field: "jitter") { policy.jitter = value }
        return policy
    }

    // MARK: Scalars

    private mutating func scalarString(_ node: Node, field: String) -> String? {
        guard case .scalar(let scalar) = node else {
            report("'\(field)' must be a single value, not a list or mapping", at: node.mark)
            return nil
        }
        return scalar.string
    }

    private mutating func integer(_ node: Node, field: String) -> Int? {
        guard case .scalar = node, let value = node.int else {
            report("'\(field)' must be a whole number, got '\(node.string ?? "a list or mapping")'", at: node.mark)
            return nil
        }
        return value
    }

    private mutating func number(_ node: Node, field: String) -> Double? {
        guard case .scalar = node, let value = node.float else {
            report("'\(field)' must be a number, got '\(node.string ?? "a list or mapping")'", at: node.mark)
            return nil
        }
        return value
    }

    private mutating func duration(_ node: Node, field: String) -> Duration? {
        guard let text = scalarString(node, field: field) else { return nil }
        guard let value = Duration(parsing: text) else {
            report("'\(field)' must be a duration like 500ms, 30s, 5m or 1h, got '\(text)'", at: node.mark)
            return nil
        }
        return value
    }

    private mutating func stageNames(_ node: Node, field: String) -> [StageName] {
        let items: [Node]
        switch node {
        case .scalar: items = [node]
        case .sequence(let sequence): items = Array(sequence)
        default:
            report("'\(field)' must be a stage name or a list of stage names", at: node.mark)
            return []
        }
        var names: [StageName] = []
        for item in items {
            guard let text = scalarString(item, field: field) else { continue }
            if let name = StageName(rawValue: text) {
                names.append(name)
            } else {
                report("'\(text)' in '\(field)' is not a stage name: \(StageName.rule)", at: item.mark)
            }
        }
        return names
    }

    /// Converts arbitrary YAML (stage arguments) to JSON, resolving scalars by their YAML tags.
    private mutating func jsonValue(_ node: Node) -> JSONValue {
        switch node {
        case .scalar(let scalar):
            if scalar.style == .plain {
                if node.null != nil { return .null }
                if let value = node.bool { return .bool(value) }
                if let value = node.int { return .int(Int64(value)) }
                if let value = node.float { return .double(value) }
            }
            return .string(scalar.string)
        case .sequence(let sequence):
            return .array(sequence.map { jsonValue($0) })
        case .mapping(let mapping):
            var object: [String: JSONValue] = [:]
            for (key, value) in mapping {
                guard case .scalar(let keyScalar) = key else {
                    report("argument keys must be plain strings", at: key.mark)
                    continue
                }
                object[keyScalar.string] = jsonValue(value)
            }
            return .object(object)
        case .alias:
            report("YAML aliases are not supported in pipelines; write the value out", at: node.mark)
            return .null
        }
    }

    // MARK: Reporting

    private mutating func checkKeys(_ mapping: Node.Mapping, allowed: Set<String>, context: String) {
        var seen: Set<String> = []
        for (key, _) in mapping {
            guard case .scalar(let scalar) = key else {
                report("\(context): keys must be plain strings", at: key.mark)
                continue
            }
            if !seen.insert(scalar.string).inserted {
                report("\(context): '\(scalar.string)' is given twice", at: key.mark)
            } else if !allowed.contains(scalar.string) {
                report("\(context): unknown field '\(scalar.string)'\(suggestion(scalar.string, among: Array(allowed))); allowed: \(allowed.sorted().joined(separator: ", "))", at: key.mark)
            }
        }
    }

    private mutating func report(_ message: String, at mark: Mark?) {
        validator.report(message, at: location(mark))
    }

    private func location(_ mark: Mark?) -> SourceLocation? {
        mark.map { SourceLocation(file: file, line: $0.line, column: $0.column) }
    }

    private func yamlErrorMark(_ error: YamlError) -> Mark? {
        switch error {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _): return mark
        case .duplicatedKeysInMapping(_, let context): return context.mark
        default: return nil
        }
    }

    private func yamlErrorMessage(_ error: YamlError) -> String {
        switch error {
        case .scanner(let context, let problem, _, _), .parser(let context, let problem, _, _), .composer(let context, let problem, _, _):
            let detail = context.map { " \($0.text)" } ?? ""
            return "YAML syntax error: \(problem)\(detail)"
        case .duplicatedKeysInMapping(let duplicates, _):
            return "YAML mapping repeats the key(s) \(duplicates.joined(separator: ", "))"
        default:
            return "YAML error: \(error)"
        }
    }
}
