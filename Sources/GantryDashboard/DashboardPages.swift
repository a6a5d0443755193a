import Foundation
import GantryCore
import GantryStore

/// A live worker as the dashboard lists it, from its heartbeat.
public struct WorkerRow: Sendable, Hashable {
    public var id: String
    public var queues: String
    public var capacity: String
    public var inFlight: String
    public var succeeded: String
    public var failed: String
    public var seenMilliseconds: UInt64?
    /// Where it serves `/metrics`, when it reported it.
    public var metrics: String?

    /// A row from a worker's heartbeat fields.
    public init(id: String, fields: [String: String]) {
        self.id = id
        queues = fields["queues"] ?? ""
        capacity = fields["capacity"] ?? ""
        inFlight = fields["in_flight"] ?? ""
        succeeded = fields["succeeded"] ?? ""
        failed = fields["failed"] ?? ""
        seenMilliseconds = fields["seen"].flatMap { UInt64($0) }
        metrics = fields["metrics"].flatMap { $0.isEmpty ? nil : $0 }
    }
}

/// A queue as the dashboard lists it.
public struct QueueRow: Sendable, Hashable {
    public var name: String
    /// Messages waiting, when the broker tells.
    public var depth: Int?
    /// Messages in its dead-letter queue, when the broker tells.
    public var deadLetters: Int?
    /// Live workers consuming it.
    public var consumers: Int
    /// Why the depth is unknown, if it is.
    public var problem: String?
}

/// Everything the overview page shows.
public struct Overview: Sendable {
    public var runs: [RunView]
    public var workers: [WorkerRow]
    public var queues: [QueueRow]
    public var leader: String?
    public var broker: String
}

/// Server-side rendered HTML of the dashboard.
enum DashboardPages {
    static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(character)
            }
        }
        return out
    }

    static func clock(_ milliseconds: UInt64?) -> String {
        guard let milliseconds else { return "" }
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date(timeIntervalSince1970: Double(milliseconds) / 1000)) + " UTC"
    }

    static func page(title: String, leader: String?, body: String, script: String) -> String {
        """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(escape(title)) · Gantry</title><style>\(DashboardAssets.style)</style></head>
        <body><header><a class="brand" href="/">Gantry</a><a href="/">runs</a><a href="/#workers">workers</a><a href="/#queues">queues</a>
        <span class="leader">leader: <span id="leader">\(escape(leader ?? "none"))</span></span></header>
        <main>\(body)</main><script>\(script)</script></body></html>
        """
    }

    static func badge(_ state: String, id: String? = nil) -> String {
        "<span class=\"badge\" data-state=\"\(escape(state))\"\(id.map { " id=\"\($0)\"" } ?? "")>\(escape(state))</span>"
    }

    static func progressBar(_ fraction: Double, id: String? = nil) -> String {
        let percent = String(format1: max(0, min(1, fraction)) * 100)
        return "<div class=\"progress\"><div\(id.map { " id=\"\($0)\"" } ?? "") style=\"width:\(percent)%\"></div></div>"
    }

    // MARK: Overview

    static func overview(_ overview: Overview, now: UInt64) -> String {
        page(title: "runs", leader: overview.leader, body: "<div id=\"overview\">\(overviewFragment(overview, now: now))</div>", script: DashboardAssets.overviewScript)
    }

    static func overviewFragment(_ overview: Overview, now: UInt64) -> String {
        var html = "<h1>Recent runs</h1>"
        if overview.runs.isEmpty {
            html += "<p class=\"muted\">No runs yet: submit one with <code>gantry submit PIPELINE.yaml</code>.</p>"
        } else {
            html += "<table id=\"runs\"><thead><tr><th>run</th><th>pipeline</th><th>state</th><th>progress</th><th class=\"num\">stages</th><th>started</th><th class=\"num\">duration</th></tr></thead><tbody>"
            for run in overview.runs {
                html += """
                    <tr data-run="\(run.runID)"><td><a class="mono" href="/runs/\(run.runID)">\(run.runID)</a></td><td>\(escape(run.name))</td>\
                    <td>\(badge(run.state.rawValue))</td><td>\(progressBar(run.progress))</td><td class="num">\(run.doneStages)/\(run.totalStages)</td>\
                    <td>\(clock(run.createdMilliseconds))</td><td class="num">\(run.elapsed(now: now).shortDescription)</td></tr>
                    """
            }
            html += "</tbody></table>"
        }
        html += "<div class=\"grid\"><div><h2 id=\"workers\">Workers</h2>"
        if overview.workers.isEmpty {
            html += "<p class=\"muted\">No live workers: start one with <code>gantry-worker</code>.</p>"
        } else {
            html += "<table id=\"worker-table\"><thead><tr><th>worker</th><th>queues</th><th class=\"num\">in flight</th><th class=\"num\">succeeded</th><th class=\"num\">failed</th><th class=\"num\">seen</th><th>metrics</th></tr></thead><tbody>"
            for worker in overview.workers {
                let seen = worker.seenMilliseconds.map { Duration.milliseconds(max(0, Int64(now) - Int64($0))).shortDescription + " ago" } ?? ""
                let metrics = worker.metrics.map { "<a class=\"mono\" href=\"http://\(escape($0))/metrics\">\(escape($0))</a>" } ?? ""
                html += """
                    <tr data-worker="\(escape(worker.id))"><td class="mono">\(escape(worker.id))</td><td>\(escape(worker.queues))</td>\
                    <td class="num">\(escape(worker.inFlight))/\(escape(worker.capacity))</td><td class="num">\(escape(worker.succeeded))</td>\
                    <td class="num">\(escape(worker.failed))</td><td class="num">\(seen)</td><td>\(metrics)</td></tr>
                    """
            }
            html += "</tbody></table>"
        }
        html += "</div><div><h2 id=\"queues\">Queues <span class=\"muted\">(\(escape(overview.broker)))</span></h2>"
        if overview.queues.isEmpty {
            html += "<p class=\"muted\">No queues in use.</p>"
        } else {
            html += "<table id=\"queue-table\"><thead><tr><th>queue</th><th class=\"num\">waiting</th><th class=\"num\">dead letters</th><th class=\"num\">workers</th></tr></thead><tbody>"
            for queue in overview.queues {
                let depth = queue.depth.map(String.init) ?? "<span class=\"muted\" title=\"\(escape(queue.problem ?? "the broker does not tell"))\">?</span>"
                let dead = queue.deadLetters.map(String.init) ?? "<span class=\"muted\">?</span>"
                html += "<tr data-queue=\"\(escape(queue.name))\"><td>\(escape(queue.name))</td><td class=\"num\">\(depth)</td><td class=\"num\">\(dead)</td><td class=\"num\">\(queue.consumers)</td></tr>"
            }
            html += "</tbody></table>"
        }
        html += "</div></div>"
        return html
    }

    // MARK: One run

    static func run(_ view: RunView, leader: String?, now: UInt64) -> String {
        var html = """
            <div id="run" data-run="\(view.runID)" data-last-event="\(escape(view.lastEventID))">
            <h1>\(escape(view.name)) \(badge(view.state.rawValue, id: "run-state"))</h1>
            <div class="meta"><span class="mono">run \(view.runID)</span><span>started \(clock(view.createdMilliseconds))</span>\
            <span id="run-done">\(view.doneStages)/\(view.totalStages) stages</span><span>elapsed <span id="run-elapsed">\(view.elapsed(now: now).shortDescription)</span></span>\
            \(view.staleCommitsRefused > 0 ? "<span>stale commits refused: \(view.staleCommitsRefused)</span>" : "")\
            <span class="live" id="live" data-live="off">\(view.state.isFinal ? "run ended" : "connecting…")</span></div>
            <div class="error" id="run-reason">\(escape(view.reason ?? ""))</div>
            \(progressBar(view.progress, id: "run-bar"))
            <div class="dag">\(dag(view, now: now))</div>
            <div class="legend">\(NodeState.allCases.map { badge($0.rawValue) }.joined())</div>
            <h2>Stages</h2>
            <table id="stages"><thead><tr><th>stage</th><th>task</th><th>kind</th><th>queue</th><th>state</th><th class="num">attempt</th>\
            <th class="num">elements</th><th class="num">queue wait</th><th class="num">run time</th><th>error</th></tr></thead><tbody>
            """
        for stage in view.stages {
            let error = stage.error.map { escape($0) + (stage.deadLettered ? " (dead-lettered)" : "") } ?? ""
            html += """
                <tr data-stage="\(escape(stage.name))" data-state="\(stage.state.rawValue)"><td><b>\(escape(stage.name))</b></td><td>\(escape(stage.task))</td>\
                <td>\(escape(stage.kind))</td><td>\(escape(stage.queue))</td><td>\(badge(stage.state.rawValue))</td>\
                <td class="num attempt">\(stage.attempt > 0 ? String(stage.attempt) : "")</td>\
                <td class="num elements">\(stage.elements.map { "\(stage.elementsDone)/\($0)" } ?? "")</td>\
                <td class="num wait">\(stage.queueWait?.shortDescription ?? "")</td><td class="num runtime">\(stage.runTime(now: now)?.shortDescription ?? "")</td>\
                <td class="error">\(error)</td></tr>
                """
        }
        html += "</tbody></table><h2>Events</h2><ol class=\"events\" id=\"events\">"
        for event in view.events.reversed() {
            let time = clock(event.milliseconds).dropFirst(11).prefix(8)
            html += "<li data-event=\"\(escape(event.id))\">\(time)  \(escape(RunView.describe(event)))</li>"
        }
        html += "</ol></div>"
        return page(title: "\(view.name) \(view.runID)", leader: leader, body: html, script: DashboardAssets.runScript)
    }

    /// The run's stages as an SVG graph, each box coloured by its state (by CSS on `data-state`).
    static func dag(_ view: RunView, now: UInt64) -> String {
        let layout = DAGLayout(stages: view.stages.map { ($0.name, $0.after) })
        let stages = Dictionary(view.stages.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let width = DAGLayout.format(layout.width), height = DAGLayout.format(layout.height)
        var svg = """
            <svg id="dag" xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(height)" viewBox="0 0 \(width) \(height)" role="img" aria-label="pipeline graph">\
            <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">\
            <path d="M0 0 L10 5 L0 10 z" fill="#9ca3af"/></marker></defs>
            """
        for edge in layout.edges {
            svg += "<path class=\"edge\" data-from=\"\(escape(edge.from))\" data-to=\"\(escape(edge.to))\" d=\"\(edge.path)\" marker-end=\"url(#arrow)\"/>"
        }
        let barWidth = DAGLayout.boxWidth - 20
        for box in layout.boxes {
            guard let stage = stages[box.name] else { continue }
            let x = DAGLayout.format(box.x), y = DAGLayout.format(box.y)
            svg += """
                <g class="node" data-stage="\(escape(stage.name))" data-state="\(stage.state.rawValue)" transform="translate(\(x) \(y))">\
                <title>\(escape(stage.name)): \(escape(stage.task)) (\(stage.kind)) on queue \(escape(stage.queue))</title>\
                <rect class="box" width="\(DAGLayout.format(DAGLayout.boxWidth))" height="\(DAGLayout.format(DAGLayout.boxHeight))" rx="8"/>\
                <text class="name" x="10" y="19">\(escape(truncate(stage.name, 24)))</text>\
                <text class="state" x="\(DAGLayout.format(DAGLayout.boxWidth - 10))" y="19" text-anchor="end">\(stage.state.rawValue)</text>\
                <text class="task" x="10" y="36">\(escape(truncate(stage.task, 18))) · \(stage.kind)</text>\
                <text class="summary" x="10" y="53">\(escape(stage.summary(now: now)))</text>\
                <rect class="track" x="10" y="61" width="\(DAGLayout.format(barWidth))" height="5" rx="2"/>\
                <rect class="bar" x="10" y="61" width="\(String(format1: barWidth * stage.progress))" data-full="\(DAGLayout.format(barWidth))" height="5" rx="2"/>\
                </g>
                """
        }
        return svg + "</svg>"
    }

    static func truncate(_ text: String, _ length: Int) -> String {
        text.count <= length ? text : String(text.prefix(length - 1)) + "…"
    }

    static func notFound(_ message: String, leader: String?) -> String {
        page(title: "not found", leader: leader, body: "<h1>Not found</h1><p>\(escape(message))</p><p><a href=\"/\">All runs</a></p>", script: "")
    }
}
