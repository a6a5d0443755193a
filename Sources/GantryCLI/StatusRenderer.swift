import Foundation
import GantryCore
import GantryStore

/// Text forms of run status for the terminal.
enum StatusRenderer {
    static func symbol(_ state: NodeState) -> String {
        switch state {
        case .waiting: return "·"
        case .queued: return "○"
        case .running: return "◐"
        case .retrying: return "↻"
        case .succeeded: return "✔"
        case .failed: return "✘"
        case .skipped: return "-"
        case .cancelled: return "⊘"
        }
    }

    /// One run: a header, then its stages in dependency order, drawn as a tree of `after` edges.
    static func render(_ status: RunStatus, now: UInt64) -> String {
        let elapsed = Duration.milliseconds(Int64((status.finishedMilliseconds ?? now) - status.createdMilliseconds))
        var lines = ["run \(status.runID)  \(status.name)  \(status.state.rawValue)  \(status.doneStages)/\(status.totalStages) stages  \(elapsed.shortDescription)"]
        if let reason = status.reason { lines.append("  reason: \(reason)") }
        if status.staleCommitsRefused > 0 { lines.append("  stale commits refused: \(status.staleCommitsRefused)") }
        let byName = Dictionary(uniqueKeysWithValues: status.stages.map { ($0.node.stage, $0) })
        var rows: [[String]] = []
        for stage in orderedStages(status.spec) {
            guard let node = byName[stage.name] else { continue }
            let depth = String(repeating: "  ", count: depthOf(stage.name, spec: status.spec))
            var detail: [String] = []
            if let count = node.elements {
                let done = count - (node.elementsLeft ?? 0)
                detail.append("\(done)/\(count) elements \(bar(done, of: count))")
            }
            if let started = node.startedMilliseconds {
                detail.append(Duration.milliseconds(Int64((node.finishedMilliseconds ?? now) - started)).shortDescription)
            }
            if node.attempt > 1 { detail.append("attempt \(node.attempt)") }
            if let error = node.error, node.state == .failed || node.state == .retrying { detail.append("error: \(error)") }
            if node.deadLettered { detail.append("dead-lettered") }
            if let skipped = node.skippedBecause, node.state == .skipped { detail.append("because \(skipped) did not succeed") }
            if !stage.after.isEmpty && node.state == .waiting { detail.append("after \(stage.after.map(\.rawValue).joined(separator: ", "))") }
            rows.append(["\(depth)\(symbol(node.state)) \(stage.name)", stage.task, node.state.rawValue, detail.joined(separator: "  ")])
        }
        lines.append(columns(rows, indent: "  "))
        return lines.joined(separator: "\n")
    }

    /// Recent runs as a table.
    static func table(_ statuses: [RunStatus], now: UInt64) -> String {
        guard !statuses.isEmpty else { return "no runs yet: submit one with `gantry submit PIPELINE.yaml`" }
        var rows = [["RUN", "PIPELINE", "STATE", "STAGES", "STARTED", "DURATION"]]
        for status in statuses {
            let elapsed = Duration.milliseconds(Int64((status.finishedMilliseconds ?? now) - status.createdMilliseconds))
            rows.append([status.runID.rawValue, status.name, status.state.rawValue, "\(status.doneStages)/\(status.totalStages)",
                         clock(status.createdMilliseconds), elapsed.shortDescription])
        }
        return columns(rows)
    }

    /// Stages so that each comes after its dependencies, otherwise in file order.
    static func orderedStages(_ spec: PipelineSpec) -> [StageSpec] {
        var placed: Set<StageName> = []
        var order: [StageSpec] = []
        while order.count < spec.stages.count {
            let before = order.count
            for stage in spec.stages where !placed.contains(stage.name) && stage.after.allSatisfy(placed.contains) {
                order.append(stage)
                placed.insert(stage.name)
            }
            if order.count == before { break }
        }
        return order
    }

    static func depthOf(_ name: StageName, spec: PipelineSpec) -> Int {
        guard let stage = spec.stage(name), !stage.after.isEmpty else { return 0 }
        return 1 + (stage.after.map { depthOf($0, spec: spec) }.max() ?? 0)
    }

    static func bar(_ done: Int, of total: Int, width: Int = 20) -> String {
        guard total > 0 else { return "" }
        let filled = done * width / total
        return "[" + String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled) + "]"
    }

    static func clock(_ milliseconds: UInt64) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss.SSS"
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date(timeIntervalSince1970: Double(milliseconds) / 1000))
    }

    /// Left-aligned columns.
    static func columns(_ rows: [[String]], indent: String = "") -> String {
        guard let width = rows.map(\.count).max() else { return "" }
        var widths = [Int](repeating: 0, count: width)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        return rows.map { row in
            indent + row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }
}

/// Why a stage is where it is.
struct Explanation: Encodable {
    var node: String
    var state: String
    var blocker: String
    var text: String
}

enum Explainer {
    static func explain(_ node: NodeStatus, in status: RunStatus, now: UInt64) -> Explanation {
        let stage = status.spec.stage(node.node.stage)
        func ago(_ ms: UInt64?) -> String {
            guard let ms else { return "" }
            return " \(Duration.milliseconds(Int64(now) - Int64(ms)).shortDescription) ago"
        }
        let blocker: String
        let text: String
        switch node.state {
        case .waiting:
            let states = Dictionary(uniqueKeysWithValues: status.stages.map { ($0.node.stage, $0.state) })
            let pending = (stage?.after ?? []).filter { states[$0] != .succeeded }
            blocker = "dependency"
            text = "waiting on " + pending.map { "\($0) (\(states[$0]?.rawValue ?? "?"))" }.joined(separator: ", ")
        case .queued:
            blocker = "queue"
            text = "queued\(ago(node.queuedMilliseconds)) on queue '\(stage?.queue ?? "default")' (attempt \(node.attempt), epoch \(node.epoch)); waiting for a worker — see `gantry workers`"
        case .running where node.elements != nil:
            blocker = "elements"
            text = "fanned out: \((node.elements ?? 0) - (node.elementsLeft ?? 0)) of \(node.elements ?? 0) elements done"
        case .running:
            let lease = node.leaseExpiresMilliseconds.map { Int64($0) - Int64(now) } ?? 0
            blocker = "lease"
            text = "running on \(node.owner ?? "?") since\(ago(node.startedMilliseconds)) (attempt \(node.attempt), epoch \(node.epoch)); lease " + (lease >= 0 ? "expires in \(Duration.milliseconds(lease).shortDescription)" : "expired \(Duration.milliseconds(-lease).shortDescription) ago: the coordinator will re-queue it")
        case .retrying:
            let due = node.retryAtMilliseconds.map { Int64($0) - Int64(now) } ?? 0
            blocker = "retry"
            text = "attempt \(node.attempt) failed: \(node.error ?? "?"); retry " + (due > 0 ? "in \(Duration.milliseconds(due).shortDescription)" : "due now")
        case .failed:
            blocker = "dead-letter"
            text = "failed after \(node.attempt) attempt(s): \(node.error ?? "?")" + (node.deadLettered ? "; dead-lettered" : "")
        case .skipped:
            blocker = "dependency-failed"
            text = "skipped: dependency '\(node.skippedBecause ?? "?")' did not succeed"
        case .cancelled:
            blocker = "cancelled"
            text = "cancelled" + (status.reason.map { ": \($0)" } ?? "")
        case .succeeded:
            blocker = "none"
            let took = node.startedMilliseconds.flatMap { started in node.finishedMilliseconds.map { Duration.milliseconds(Int64($0) - Int64(started)).shortDescription } }
            text = "succeeded" + (took.map { " in \($0)" } ?? "") + (node.resultBytes.map { ", result \($0) bytes" } ?? "")
        }
        return Explanation(node: node.node.description, state: node.state.rawValue, blocker: blocker, text: text)
    }
}
