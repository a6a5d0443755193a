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

    /// The ANSI colour of a state, for terminals.
    static func color(_ state: NodeState) -> String {
        switch state {
        case .succeeded: return "\u{1B}[32m"
        case .failed: return "\u{1B}[31m"
        case .retrying: return "\u{1B}[33m"
        case .running, .queued: return "\u{1B}[36m"
        case .waiting, .skipped, .cancelled: return "\u{1B}[2m"
        }
    }

    static func color(_ state: RunState) -> String {
        switch state {
        case .succeeded: return "\u{1B}[32m"
        case .failed: return "\u{1B}[31m"
        case .running: return "\u{1B}[36m"
        case .cancelled: return "\u{1B}[2m"
        }
    }

    /// Whether standard output is a terminal that takes colours (`NO_COLOR` turns them off).
    static var useColor: Bool {
        isatty(1) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil && ProcessInfo.processInfo.environment["TERM"] != "dumb"
    }

    /// One run: a header, then its pipeline drawn as a tree of `after` edges (each stage under
    /// its deepest dependency; a stage with several dependencies names the others), one line
    /// per stage with its state, progress, timing, attempts and error.
    ///
    /// With `width`, every line is cut to fit it (a redrawn screen must not wrap).
    static func render(_ status: RunStatus, now: UInt64, color: Bool = false, width: Int? = nil) -> String {
        let end = status.finishedMilliseconds ?? now
        let elapsed = Duration.milliseconds(Int64(end) - Int64(status.createdMilliseconds))
        var header = clip("run \(status.runID)  \(status.name)  \(status.state.rawValue)  \(status.doneStages)/\(status.totalStages) stages  \(elapsed.shortDescription)", to: width)
        if color { header = Self.color(status.state) + header + "\u{1B}[0m" }
        var lines = [header]
        if let reason = status.reason { lines.append(clip("  reason: \(reason)", to: width)) }
        if status.staleCommitsRefused > 0 { lines.append("  stale commits refused: \(status.staleCommitsRefused)") }
        let byName = Dictionary(status.stages.map { ($0.node.stage, $0) }, uniquingKeysWith: { first, _ in first })
        var rows: [[String]] = [["STAGE", "TASK", "STATE", "PROGRESS", "TIME", "ATTEMPTS", "DETAIL"]]
        var colors: [String?] = [nil]
        for (prefix, stage, others) in tree(status.spec) {
            guard let node = byName[stage.name] else { continue }
            let elements = status.elements[stage.name] ?? []
            rows.append([
                "\(prefix)\(symbol(node.state)) \(stage.name)", stage.task, node.state.rawValue,
                progress(node, elements: elements), timing(node, now: now), attempts(node, stage: stage, elements: elements),
                detail(node, stage: stage, others: others, elements: elements, now: now),
            ])
            colors.append(color ? Self.color(node.state) : nil)
        }
        lines.append(columns(rows, indent: "  ", colors: colors, width: width))
        return lines.joined(separator: "\n")
    }

    /// Stages in drawing order, each with its tree prefix and the dependencies its line does
    /// not show by position.
    static func tree(_ spec: PipelineSpec) -> [(prefix: String, stage: StageSpec, others: [StageName])] {
        let order = orderedStages(spec)
        let position = Dictionary(order.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { first, _ in first })
        var depth: [StageName: Int] = [:]
        for stage in order { depth[stage.name] = (stage.after.compactMap { depth[$0] }.max() ?? -1) + 1 }
        // Each stage hangs under its deepest dependency (the latest in run order on a tie).
        var parent: [StageName: StageName] = [:]
        var children: [StageName: [StageSpec]] = [:]
        var roots: [StageSpec] = []
        for stage in order {
            let chosen = stage.after.max { a, b in
                (depth[a] ?? 0, position[a] ?? 0) < (depth[b] ?? 0, position[b] ?? 0)
            }
            if let chosen {
                parent[stage.name] = chosen
                children[chosen, default: []].append(stage)
            } else {
                roots.append(stage)
            }
        }
        var result: [(String, StageSpec, [StageName])] = []
        func walk(_ stage: StageSpec, lead: String, branch: String) {
            result.append((lead + branch, stage, stage.after.filter { $0 != parent[stage.name] }))
            let kids = children[stage.name] ?? []
            let continuation = lead + (branch == "├─ " ? "│  " : branch.isEmpty ? "" : "   ")
            for (index, child) in kids.enumerated() {
                walk(child, lead: continuation, branch: index == kids.count - 1 ? "└─ " : "├─ ")
            }
        }
        for root in roots { walk(root, lead: "", branch: "") }
        return result
    }

    static func progress(_ node: NodeStatus, elements: [NodeStatus]) -> String {
        if let count = node.elements {
            let done = count - (node.elementsLeft ?? 0)
            return "\(bar(done, of: max(count, 1), width: 12)) \(done)/\(count)"
        }
        let done = node.state == .succeeded ? 1 : 0
        return "\(bar(done, of: 1, width: 12)) \(done)/1"
    }

    static func timing(_ node: NodeStatus, now: UInt64) -> String {
        if let started = node.startedMilliseconds {
            let end = node.finishedMilliseconds ?? now
            return Duration.milliseconds(max(0, Int64(end) - Int64(started))).shortDescription
        }
        if node.state == .queued, let queued = node.queuedMilliseconds {
            return "queued \(Duration.milliseconds(max(0, Int64(now) - Int64(queued))).shortDescription)"
        }
        return ""
    }

    static func attempts(_ node: NodeStatus, stage: StageSpec, elements: [NodeStatus]) -> String {
        let limit = stage.retry.maxAttempts
        if node.elements != nil {
            let most = elements.map(\.attempt).max() ?? 0
            return most == 0 ? "" : "≤\(most)/\(limit)"
        }
        return node.attempt == 0 ? "" : "\(node.attempt)/\(limit)"
    }

    static func detail(_ node: NodeStatus, stage: StageSpec, others: [StageName], elements: [NodeStatus], now: UInt64) -> String {
        var parts: [String] = []
        switch node.state {
        case .failed:
            parts.append("error: \(node.error ?? "?")")
            if node.deadLettered { parts.append("dead-lettered") }
        case .retrying:
            let due = node.retryAtMilliseconds.map { Int64($0) - Int64(now) } ?? 0
            parts.append("retry \(due > 0 ? "in \(Duration.milliseconds(due).shortDescription)" : "due"): \(node.error ?? "?")")
        case .skipped:
            if let cause = node.skippedBecause { parts.append("skipped: \(cause) did not succeed") }
        case .waiting where !stage.after.isEmpty:
            parts.append("after \(stage.after.map(\.rawValue).joined(separator: ", "))")
        case .running where node.elements == nil, .queued:
            if let owner = node.owner, node.state == .running { parts.append("on \(owner)") }
            // The error of the attempt before this one stays on the node until it ends.
            if node.attempt > 1, let error = node.error { parts.append("attempt \(node.attempt - 1) failed: \(error)") }
        default:
            break
        }
        if node.elements != nil, node.state == .running || node.state == .failed {
            var counts: [NodeState: Int] = [:]
            for element in elements where !element.state.isFinal || element.state == .failed { counts[element.state, default: 0] += 1 }
            let order: [NodeState] = [.running, .queued, .retrying, .failed]
            let summary = order.compactMap { state in counts[state].map { "\($0) \(state.rawValue)" } }
            if !summary.isEmpty { parts.append(summary.joined(separator: ", ")) }
            if node.state == .running, let failing = elements.first(where: { $0.state == .retrying && $0.error != nil }) {
                parts.append("\(failing.node): \(failing.error ?? "")")
            }
        }
        if !others.isEmpty && node.state != .waiting { parts.append("also after \(others.map(\.rawValue).joined(separator: ", "))") }
        return parts.joined(separator: "  ")
    }

    /// One line per run state for logs and pipes: `12.3s running 2/5 stages: chunks ✔ 1/1, count ◐ 4/10, …`.
    static func line(_ status: RunStatus, now: UInt64) -> String {
        let elapsed = Duration.milliseconds(Int64(status.finishedMilliseconds ?? now) - Int64(status.createdMilliseconds))
        let stages = status.stages.map { node -> String in
            var text = "\(node.node.stage) \(symbol(node.state))"
            if let count = node.elements { text += " \(count - (node.elementsLeft ?? 0))/\(count)" }
            return text
        }
        return "\(elapsed.shortDescription) \(status.state.rawValue) \(status.doneStages)/\(status.totalStages) stages: \(stages.joined(separator: ", "))"
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

    static func bar(_ done: Int, of total: Int, width: Int = 20) -> String {
        guard total > 0 else { return "" }
        let filled = min(width, max(0, done * width / total))
        return String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
    }

    static func clock(_ milliseconds: UInt64) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss.SSS"
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date(timeIntervalSince1970: Double(milliseconds) / 1000))
    }

    /// `line` cut to `width` characters, ending in `…` when cut.
    static func clip(_ line: String, to width: Int?) -> String {
        guard let width, width > 1, line.count > width else { return line }
        return String(line.prefix(width - 1)) + "…"
    }

    /// Left-aligned columns; a row with a colour is wrapped in it (widths ignore the codes);
    /// with `width`, each line is cut to fit.
    static func columns(_ rows: [[String]], indent: String = "", colors: [String?] = [], width: Int? = nil) -> String {
        guard let columnCount = rows.map(\.count).max() else { return "" }
        var widths = [Int](repeating: 0, count: columnCount)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        return rows.enumerated().map { rowIndex, row in
            var line = indent + row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
            while line.hasSuffix(" ") { line.removeLast() }
            line = clip(line, to: width)
            if rowIndex < colors.count, let color = colors[rowIndex] { line = color + line + "\u{1B}[0m" }
            return line
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
        func at(_ ms: UInt64) -> String { "\(clock(ms)) UTC" }
        let blocker: String
        let text: String
        switch node.state {
        case .waiting:
            let states = Dictionary(status.stages.map { ($0.node.stage, $0.state) }, uniquingKeysWith: { first, _ in first })
            let pending = (stage?.after ?? []).filter { states[$0] != .succeeded }
            blocker = "dependency"
            text = "waiting on " + pending.map { "\($0) (\(states[$0]?.rawValue ?? "?"))" }.joined(separator: ", ")
        case .queued:
            blocker = "queue"
            text = "queued\(ago(node.queuedMilliseconds)) on queue '\(stage?.queue ?? "default")' (attempt \(node.attempt), epoch \(node.epoch)); waiting for a worker — see `gantry workers` and `gantry queues`"
        case .running where node.elements != nil:
            blocker = "elements"
            text = "fanned out: \((node.elements ?? 0) - (node.elementsLeft ?? 0)) of \(node.elements ?? 0) elements done; `gantry explain RUN \(node.node.stage)[i]` for one element"
        case .running:
            let lease = node.leaseExpiresMilliseconds.map { Int64($0) - Int64(now) } ?? 0
            blocker = "lease"
            text = "leased by worker \(node.owner ?? "?") since\(ago(node.startedMilliseconds))\(node.startedMilliseconds.map { " (\(at($0)))" } ?? "") (attempt \(node.attempt), epoch \(node.epoch)); lease " + (lease >= 0 ? "expires in \(Duration.milliseconds(lease).shortDescription)" : "expired \(Duration.milliseconds(-lease).shortDescription) ago: the coordinator will re-queue it")
        case .retrying:
            let due = node.retryAtMilliseconds.map { Int64($0) - Int64(now) } ?? 0
            blocker = "retry"
            text = "attempt \(node.attempt) failed: \(node.error ?? "?"); delayed for retry until \(node.retryAtMilliseconds.map(at) ?? "?") (" + (due > 0 ? "in \(Duration.milliseconds(due).shortDescription)" : "due now") + ")"
        case .failed:
            blocker = node.deadLettered ? "dead-letter" : "failed"
            text = "failed after \(node.attempt) attempt(s): \(node.error ?? "?")" + (node.deadLettered ? "; in the dead-letter queue (`gantry dlq list`, `gantry retry RUN \(node.node.stage)`)" : "")
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

    private static func clock(_ milliseconds: UInt64) -> String { StatusRenderer.clock(milliseconds) }
}
