/// Where each part of a pipeline was written, so that problems found after parsing still point
/// at a line.
struct PipelineLocations {
    var stages: [StageName: SourceLocation] = [:]
    var fields: [StageName: [String: SourceLocation]] = [:]
    /// The location of each stage by its position, so that a duplicate points at itself.
    var byIndex: [Int: SourceLocation] = [:]

    func locate(_ stage: StageName, _ field: String? = nil) -> SourceLocation? {
        if let field, let location = fields[stage]?[field] { return location }
        return stages[stage]
    }
}

/// Checks a pipeline's structure and collects every problem, not just the first.
struct PipelineValidator {
    let file: String?
    private(set) var problems: [PipelineProblem] = []

    init(file: String?) {
        self.file = file
    }

    mutating func report(_ message: String, at location: SourceLocation?) {
        problems.append(PipelineProblem(location: location, message: message))
    }

    func throwIfProblems() throws {
        guard !problems.isEmpty else { return }
        let header = problems.count == 1 ? "pipeline is invalid:" : "pipeline is invalid (\(problems.count) problems):"
        throw GantryError(.invalidPipeline, ([header] + problems.map { "  \($0)" }).joined(separator: "\n"))
    }

    mutating func validate(_ spec: PipelineSpec, knownTasks: Set<String>?, locations: PipelineLocations) {
        if spec.name.isEmpty || spec.name.count > PipelineLimits.maxNameLength {
            report("pipeline 'name' must be 1 to \(PipelineLimits.maxNameLength) characters", at: nil)
        }
        if spec.stages.isEmpty {
            report("pipeline has no stages: add at least one under 'stages:'", at: nil)
            return
        }
        if spec.stages.count > PipelineLimits.maxStages {
            report("pipeline has \(spec.stages.count) stages; at most \(PipelineLimits.maxStages) are allowed", at: nil)
        }
        if let timeout = spec.timeout, timeout <= .zero {
            report("pipeline 'timeout' must be positive", at: nil)
        }

        var firstSeen: [StageName: Int] = [:]
        for (index, stage) in spec.stages.enumerated() {
            if let earlier = firstSeen[stage.name] {
                let earlierAt = locations.locate(spec.stages[earlier].name).map { " (first defined at line \($0.line))" } ?? ""
                report("duplicate stage name '\(stage.name)'\(earlierAt): stage names must be unique", at: locations.byIndex[index] ?? locations.locate(stage.name))
            } else {
                firstSeen[stage.name] = index
            }
        }

        let names = Set(spec.stages.map(\.name))
        for stage in spec.stages {
            checkFields(stage, knownTasks: knownTasks, locations: locations)
            var seenDependencies: Set<StageName> = []
            for dependency in stage.after {
                if dependency == stage.name {
                    report("stage '\(stage.name)' lists itself in 'after'", at: locations.locate(stage.name, "after"))
                } else if !names.contains(dependency) {
                    report("stage '\(stage.name)' depends on unknown stage '\(dependency)'\(suggestion(dependency.rawValue, among: names.map(\.rawValue)))", at: locations.locate(stage.name, "after"))
                } else if !seenDependencies.insert(dependency).inserted {
                    report("stage '\(stage.name)' lists '\(dependency)' twice in 'after'", at: locations.locate(stage.name, "after"))
                }
            }
            if let map = stage.map {
                if !names.contains(map) {
                    report("stage '\(stage.name)' maps over unknown stage '\(map)'\(suggestion(map.rawValue, among: names.map(\.rawValue)))", at: locations.locate(stage.name, "map"))
                } else if !stage.after.contains(map) {
                    report("stage '\(stage.name)' maps over '\(map)' but does not list it in 'after'", at: locations.locate(stage.name, "map"))
                }
            } else if stage.maxParallel != nil {
                report("stage '\(stage.name)' sets 'max_parallel' but has no 'map'", at: locations.locate(stage.name, "max_parallel"))
            }
        }
        if problems.isEmpty, let cycle = findCycle(spec) {
            let path = (cycle + [cycle[0]]).map(\.rawValue).joined(separator: " → ")
            report("dependency cycle: \(path); remove one of these 'after' entries", at: locations.locate(cycle[0], "after"))
        }
    }

    private mutating func checkFields(_ stage: StageSpec, knownTasks: Set<String>?, locations: PipelineLocations) {
        if !Self.isTaskName(stage.task) {
            report("stage '\(stage.name)': task '\(stage.task)' is not a valid task name (letters, digits, '.', '_', '-')", at: locations.locate(stage.name, "task"))
        } else if let knownTasks, !knownTasks.contains(stage.task) {
            report("stage '\(stage.name)': unknown task '\(stage.task)'\(suggestion(stage.task, among: Array(knownTasks))); known tasks: \(knownTasks.sorted().joined(separator: ", "))", at: locations.locate(stage.name, "task"))
        }
        if !Self.isQueueName(stage.queue) {
            report("stage '\(stage.name)': queue '\(stage.queue)' must be 1 to \(PipelineLimits.maxNameLength) letters, digits, '.', '_' or '-'", at: locations.locate(stage.name, "queue"))
        }
        if !(0...9).contains(stage.priority) {
            report("stage '\(stage.name)': priority must be 0...9, got \(stage.priority)", at: locations.locate(stage.name, "priority"))
        }
        if let timeout = stage.timeout, timeout <= .zero {
            report("stage '\(stage.name)': timeout must be positive", at: locations.locate(stage.name, "timeout"))
        }
        if let maxParallel = stage.maxParallel, maxParallel < 1 {
            report("stage '\(stage.name)': max_parallel must be at least 1, got \(maxParallel)", at: locations.locate(stage.name, "max_parallel"))
        }
        for problem in stage.retry.problems {
            report("stage '\(stage.name)': retry \(problem)", at: locations.locate(stage.name, "retry"))
        }
    }

    /// A cycle as the list of stages on it, or `nil`; a depth-first search with colouring.
    private func findCycle(_ spec: PipelineSpec) -> [StageName]? {
        var dependencies: [StageName: [StageName]] = [:]
        for stage in spec.stages { dependencies[stage.name] = stage.after }
        enum Colour { case grey, black }
        var colour: [StageName: Colour] = [:]
        var stack: [StageName] = []

        func visit(_ name: StageName) -> [StageName]? {
            colour[name] = .grey
            stack.append(name)
            for next in dependencies[name] ?? [] {
                switch colour[next] {
                case .grey:
                    let start = stack.lastIndex(of: next)!
                    return Array(stack[start...]).reversed()
                case .black:
                    continue
                case nil:
                    if let cycle = visit(next) { return cycle }
                }
            }
            stack.removeLast()
            colour[name] = .black
            return nil
        }
        for stage in spec.stages where colour[stage.name] == nil {
            if let cycle = visit(stage.name) { return cycle }
        }
        return nil
    }

    static func isTaskName(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= PipelineLimits.maxNameLength && text.utf8.allSatisfy { isNameByte($0) }
    }

    static func isQueueName(_ text: String) -> Bool {
        isTaskName(text)
    }

    private static func isNameByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }
}

/// " (did you mean 'x'?)" when a candidate is within a small edit distance of `word`.
func suggestion(_ word: String, among candidates: [String]) -> String {
    let scored = candidates.map { ($0, editDistance(word, $0)) }.filter { $0.1 <= max(2, word.count / 2) }
    guard let best = scored.min(by: { $0.1 < $1.1 || ($0.1 == $1.1 && $0.0 < $1.0) }) else { return "" }
    return " (did you mean '\(best.0)'?)"
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
