import Foundation

/// A validated pipeline compiled for scheduling: stages by index, who depends on whom, and an
/// order in which every stage comes after its dependencies.
public struct PipelinePlan: Sendable {
    /// The pipeline this plan was made from.
    public let spec: PipelineSpec
    /// Stage index by name.
    public let index: [StageName: Int]
    /// For each stage, the indices of the stages that list it in `after`.
    public let dependents: [[Int]]
    /// For each stage, the indices of its dependencies.
    public let dependencies: [[Int]]
    /// Stages with no dependencies: published when the run is created.
    public let roots: [Int]
    /// Every stage index, dependencies before dependents.
    public let topologicalOrder: [Int]
    /// The spec as JSON, as a run keeps it: encoded once per plan rather than per submission.
    public let specJSON: String
    /// For each stage, the names of the stages that depend on it, comma-separated.
    public let dependentNames: [String]

    /// Validates `spec` and compiles it.
    public init(_ spec: PipelineSpec, knownTasks: Set<String>? = nil) throws {
        let spec = try spec.validated(knownTasks: knownTasks)
        self.spec = spec
        var index: [StageName: Int] = [:]
        for (position, stage) in spec.stages.enumerated() { index[stage.name] = position }
        var dependents = [[Int]](repeating: [], count: spec.stages.count)
        var dependencies = [[Int]](repeating: [], count: spec.stages.count)
        for (position, stage) in spec.stages.enumerated() {
            for name in stage.after {
                let upstream = index[name]!  // validated: every dependency exists
                dependencies[position].append(upstream)
                dependents[upstream].append(position)
            }
        }
        var remaining = dependencies.map(\.count)
        var ready = remaining.indices.filter { remaining[$0] == 0 }
        let roots = ready
        var order: [Int] = []
        order.reserveCapacity(spec.stages.count)
        while let next = ready.popLast() {
            order.append(next)
            for dependent in dependents[next] {
                remaining[dependent] -= 1
                if remaining[dependent] == 0 { ready.append(dependent) }
            }
        }
        self.index = index
        self.dependents = dependents
        self.dependencies = dependencies
        self.roots = roots
        self.topologicalOrder = order
        self.specJSON = String(decoding: try JSONEncoder().encode(spec), as: UTF8.self)
        self.dependentNames = dependents.map { $0.map { spec.stages[$0].name.rawValue }.joined(separator: ",") }
    }

    /// The stage at `position`.
    public subscript(position: Int) -> StageSpec { spec.stages[position] }

    /// The stage named `name`.
    public subscript(name: StageName) -> StageSpec? { index[name].map { spec.stages[$0] } }
}
