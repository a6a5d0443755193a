import ArgumentParser
import Foundation
import GantryCore
import GantryStore

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show recent runs, or one run's stages with their state, progress, timing and errors.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var output: OutputOptions

    @Argument(help: "A run id; without one, recent runs are listed.")
    var run: String?

    @Option(help: "How many recent runs to list.")
    var limit = 20

    func run() async throws {
        try await reportingErrors {
            let (store, _) = try await cluster.store()
            if let run {
                let status = try await store.status(try parseRun(run))
                if output.json { try printJSON(statusJSON(status)) } else { print(StatusRenderer.render(status, now: currentMilliseconds(), color: StatusRenderer.useColor)) }
            } else {
                var statuses: [RunStatus] = []
                for id in try await store.recentRuns(limit: limit) {
                    if let status = try? await store.status(id) { statuses.append(status) }
                }
                if output.json { try printJSON(statuses.map(RunSummary.init)) } else { print(StatusRenderer.table(statuses, now: currentMilliseconds())) }
            }
        }
    }
}

/// A run's status for scripts: as ``RunStatus`` encodes, with `elements` an object of
/// stage name → element list.
func statusJSON(_ status: RunStatus) throws -> JSONValue {
    guard case .object(var object) = try JSONValue(parsing: Array(JSONEncoder().encode(status))) else {
        throw GantryError(.protocolError, "run status did not encode as a JSON object")
    }
    var elements: [String: JSONValue] = [:]
    for (stage, nodes) in status.elements {
        elements[stage.rawValue] = try JSONValue(parsing: Array(JSONEncoder().encode(nodes)))
    }
    object["elements"] = .object(elements)
    return .object(object)
}

/// One line of `gantry status` for scripts.
struct RunSummary: Encodable {
    var run: String
    var name: String
    var state: String
    var doneStages: Int
    var totalStages: Int
    var createdMilliseconds: UInt64
    var finishedMilliseconds: UInt64?
    var reason: String?

    init(_ status: RunStatus) {
        run = status.runID.rawValue
        name = status.name
        state = status.state.rawValue
        doneStages = status.doneStages
        totalStages = status.totalStages
        createdMilliseconds = status.createdMilliseconds
        finishedMilliseconds = status.finishedMilliseconds
        reason = status.reason
    }
}

struct Explain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Say why a run's stages are not running yet (or how they ended).")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var output: OutputOptions

    @Argument(help: "The run id.")
    var run: String

    @Argument(help: "A stage (or element, e.g. hash[3]); without one, every unfinished stage is explained.")
    var stage: String?

    func run() async throws {
        try await reportingErrors {
            let (store, _) = try await cluster.store()
            let status = try await store.status(try parseRun(run))
            let now = currentMilliseconds()
            var explanations: [Explanation] = []
            if let stage {
                guard let node = NodeID(stage) else {
                    throw GantryError(.invalidArgument, "'\(stage)' is not a stage name or element (stage[index])")
                }
                let all = status.stages + status.elements.values.flatMap { $0 }
                guard let found = all.first(where: { $0.node == node }) else {
                    throw GantryError(.notFound, "run \(status.runID) has no stage or element '\(stage)'; its stages: \(status.stages.map(\.node.description).joined(separator: ", "))")
                }
                explanations = [Explainer.explain(found, in: status, now: now)]
                if found.node.index == nil { explanations += unfinishedElements(of: found.node.stage, in: status, now: now, limit: 20) }
            } else {
                for stage in status.stages where !stage.state.isFinal || stage.state == .failed || stage.state == .skipped {
                    explanations.append(Explainer.explain(stage, in: status, now: now))
                    explanations += unfinishedElements(of: stage.node.stage, in: status, now: now, limit: 5)
                }
                if explanations.isEmpty { explanations = status.stages.map { Explainer.explain($0, in: status, now: now) } }
            }
            if output.json {
                try printJSON(explanations)
            } else {
                print("run \(status.runID) (\(status.name)) is \(status.state.rawValue)\(status.reason.map { ": \($0)" } ?? "")")
                for explanation in explanations { print("  \(explanation.node): \(explanation.text)") }
            }
        }
    }
}

/// The elements of a mapped stage that have not succeeded, explained (at most `limit`).
private func unfinishedElements(of stage: StageName, in status: RunStatus, now: UInt64, limit: Int) -> [Explanation] {
    let open = (status.elements[stage] ?? []).filter { $0.state != .succeeded && $0.state != .cancelled }
    return open.prefix(limit).map { Explainer.explain($0, in: status, now: now) }
}

struct Cancel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cancel a run: stages not started are cancelled, running ones are stopped at their next lease renewal.")

    @OptionGroup var cluster: ClusterOptions

    @Argument(help: "The run id.")
    var run: String

    @Option(help: "Why, recorded with the run.")
    var reason = "cancelled by user"

    func run() async throws {
        try await reportingErrors {
            let (store, _) = try await cluster.store()
            let id = try parseRun(run)
            switch try await store.cancel(id, reason: reason) {
            case .cancelled:
                print("run \(id) cancelled")
            case .alreadyEnded(let state):
                print("run \(id) had already ended: \(state.rawValue)")
                throw ExitCode(3)
            }
        }
    }
}

struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Follow a run's events live until it ends.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var output: OutputOptions

    @Argument(help: "The run id.")
    var run: String

    func run() async throws {
        try await reportingErrors {
            let (store, _) = try await cluster.store()
            let id = try parseRun(run)
            guard try await store.runState(id) != nil else {
                throw GantryError(.notFound, "run \(id) does not exist (or has expired); `gantry status` lists recent runs")
            }
            var last = "0"
            while true {
                let events = try await store.waitForEvents(id, after: last, timeout: .seconds(2))
                for event in events {
                    last = event.id
                    if output.json {
                        try printJSON(event)
                    } else {
                        let detail = event.fields.sorted { $0.key < $1.key }.filter { $0.key != "s" }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
                        let subject = event.kind == "run" ? "run" : "\(event.kind) \(event.node)"
                        print("\(StatusRenderer.clock(event.milliseconds))  \(subject) → \(event.fields["s"] ?? "?")  \(detail)")
                    }
                    if event.kind == "run", let state = event.fields["s"].flatMap(RunState.init(rawValue:)), state.isFinal {
                        throw state == .succeeded ? ExitCode.success : ExitCode(2)
                    }
                }
                if events.isEmpty, let state = try await store.runState(id), state.isFinal {
                    throw state == .succeeded ? ExitCode.success : ExitCode(2)
                }
            }
        }
    }
}

struct Workers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List live workers: queues, capacity, in-flight tasks, last heartbeat.")

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try await reportingErrors {
            let (store, _) = try await cluster.store()
            let workers = try await store.workers()
            if output.json {
                try printJSON(workers.map { ["id": $0.id].merging($0.fields) { a, _ in a } })
                return
            }
            guard !workers.isEmpty else {
                print("no live workers")
                return
            }
            let now = currentMilliseconds()
            var rows = [["WORKER", "QUEUES", "CAPACITY", "IN FLIGHT", "SUCCEEDED", "FAILED", "LAST SEEN"]]
            for worker in workers {
                let seen = UInt64(worker.fields["seen"] ?? "") ?? 0
                rows.append([worker.id, worker.fields["queues"] ?? "", worker.fields["capacity"] ?? "", worker.fields["in_flight"] ?? "",
                             worker.fields["succeeded"] ?? "", worker.fields["failed"] ?? "", "\(Duration.milliseconds(Int64(now) - Int64(seen)).shortDescription) ago"])
            }
            print(StatusRenderer.columns(rows))
        }
    }
}
