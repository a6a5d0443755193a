import GantryCore
import GantryStore

/// What the dashboard shows of one run: built once from a ``RunStatus`` and used both to render
/// the page on the server and as the JSON the page's live updates apply, so both always agree.
public struct RunView: Sendable, Hashable {
    /// What the dashboard shows of one stage.
    public struct Stage: Sendable, Hashable {
        public var name: String
        public var task: String
        public var kind: String
        public var after: [String]
        public var queue: String
        public var state: NodeState
        public var attempt: Int
        /// For a mapped stage: its element count and how many have ended.
        public var elements: Int?
        public var elementsDone: Int
        public var queuedMilliseconds: UInt64?
        public var startedMilliseconds: UInt64?
        public var finishedMilliseconds: UInt64?
        public var error: String?
        public var deadLettered: Bool
        /// The longest wait in the queue before a worker started it (of any element, for a
        /// mapped stage), if it started.
        public var queueWait: Duration?

        /// 0...1: elements done for a mapped stage, else 1 once ended and 0 before.
        public var progress: Double {
            if let elements, elements > 0 { return Double(elementsDone) / Double(elements) }
            return state.isFinal ? 1 : 0
        }

        /// How long it has run (until `now` while running), if it started.
        public func runTime(now: UInt64) -> Duration? {
            guard let started = startedMilliseconds else { return nil }
            let end = finishedMilliseconds ?? (state.isFinal ? started : now)
            return .milliseconds(Int64(end) - Int64(started))
        }

        static func wait(_ node: NodeStatus) -> UInt64? {
            guard let queued = node.queuedMilliseconds, let started = node.startedMilliseconds, started >= queued else { return nil }
            return started - queued
        }

        /// A one-line summary: elements, run time, attempts.
        public func summary(now: UInt64) -> String {
            var parts: [String] = []
            if let elements { parts.append("\(elementsDone)/\(elements)") }
            if let time = runTime(now: now) { parts.append(time.shortDescription) }
            if attempt > 1 { parts.append("attempt \(attempt)") }
            return parts.joined(separator: " · ")
        }
    }

    public var runID: RunID
    public var name: String
    public var state: RunState
    public var reason: String?
    public var createdMilliseconds: UInt64
    public var finishedMilliseconds: UInt64?
    public var totalStages: Int
    public var doneStages: Int
    public var staleCommitsRefused: Int
    /// Stages in pipeline order.
    public var stages: [Stage]
    /// The newest event's stream id ("0" when none was read).
    public var lastEventID: String
    /// Recent events, oldest first.
    public var events: [RunEvent]

    /// The view of `status` with `events`.
    public init(status: RunStatus, events: [RunEvent] = []) {
        runID = status.runID
        name = status.name
        state = status.state
        reason = status.reason
        createdMilliseconds = status.createdMilliseconds
        finishedMilliseconds = status.finishedMilliseconds
        totalStages = status.totalStages
        doneStages = status.doneStages
        staleCommitsRefused = status.staleCommitsRefused
        let nodes = Dictionary(status.stages.map { ($0.node.stage, $0) }, uniquingKeysWith: { first, _ in first })
        stages = status.spec.stages.map { spec in
            let node = nodes[spec.name]
            let elements = status.elements[spec.name] ?? []
            var stage = Stage(
                name: spec.name.rawValue, task: spec.task, kind: spec.kind.rawValue, after: spec.after.map(\.rawValue), queue: spec.queue,
                state: node?.state ?? .waiting, attempt: Int(node?.attempt ?? 0), elements: node?.elements, elementsDone: 0,
                queuedMilliseconds: node?.queuedMilliseconds, startedMilliseconds: node?.startedMilliseconds,
                finishedMilliseconds: node?.finishedMilliseconds, error: node?.error, deadLettered: node?.deadLettered ?? false,
                queueWait: node.flatMap(Stage.wait).map { .milliseconds(Int64($0)) }
            )
            if let count = node?.elements {
                stage.elementsDone = max(0, count - (node?.elementsLeft ?? count))
                // A mapped stage's timings are those of its elements: first start, last end.
                if stage.startedMilliseconds == nil { stage.startedMilliseconds = elements.compactMap(\.startedMilliseconds).min() }
                if stage.queuedMilliseconds == nil { stage.queuedMilliseconds = elements.compactMap(\.queuedMilliseconds).min() }
                if stage.finishedMilliseconds == nil, stage.state.isFinal { stage.finishedMilliseconds = elements.compactMap(\.finishedMilliseconds).max() }
                if stage.error == nil { stage.error = elements.compactMap(\.error).first }
                stage.attempt = max(stage.attempt, elements.map { Int($0.attempt) }.max() ?? 0)
                if let longest = elements.compactMap(Stage.wait).max() { stage.queueWait = .milliseconds(Int64(longest)) }
            }
            return stage
        }
        self.events = events
        lastEventID = events.last?.id ?? "0"
    }

    /// 0...1 over every stage, mapped stages counted by their elements.
    public var progress: Double {
        guard !stages.isEmpty else { return state.isFinal ? 1 : 0 }
        return stages.map(\.progress).reduce(0, +) / Double(stages.count)
    }

    /// How long the run has taken (until `now` while running).
    public func elapsed(now: UInt64) -> Duration {
        .milliseconds(Int64(finishedMilliseconds ?? now) - Int64(createdMilliseconds))
    }

    /// The JSON the page's live updates apply.
    public func json(now: UInt64 = currentMilliseconds()) -> JSONValue {
        func number(_ value: UInt64?) -> JSONValue { value.map { .int(Int64($0)) } ?? .null }
        return .object([
            "run": .string(runID.rawValue), "name": .string(name), "state": .string(state.rawValue),
            "reason": reason.map(JSONValue.string) ?? .null, "created": number(createdMilliseconds), "finished": number(finishedMilliseconds),
            "total": .int(Int64(totalStages)), "done": .int(Int64(doneStages)), "stale": .int(Int64(staleCommitsRefused)),
            "progress": .double(progress), "elapsed": .string(elapsed(now: now).shortDescription),
            "stages": .array(stages.map { stage in
                .object([
                    "name": .string(stage.name), "task": .string(stage.task), "kind": .string(stage.kind), "queue": .string(stage.queue),
                    "after": .array(stage.after.map(JSONValue.string)), "state": .string(stage.state.rawValue),
                    "attempt": .int(Int64(stage.attempt)), "elements": stage.elements.map { .int(Int64($0)) } ?? .null,
                    "elementsDone": .int(Int64(stage.elementsDone)), "progress": .double(stage.progress),
                    "queued": number(stage.queuedMilliseconds), "started": number(stage.startedMilliseconds), "finished": number(stage.finishedMilliseconds),
                    "summary": .string(stage.summary(now: now)), "wait": stage.queueWait.map { .string($0.shortDescription) } ?? .null,
                    "runTime": stage.runTime(now: now).map { .string($0.shortDescription) } ?? .null,
                    "error": stage.error.map(JSONValue.string) ?? .null, "deadLettered": .bool(stage.deadLettered),
                ])
            }),
            "events": .array(events.map(Self.eventJSON)),
            "lastEvent": .string(lastEventID),
        ])
    }

    /// One event as JSON: `{id, kind, node, t, text}`.
    static func eventJSON(_ event: RunEvent) -> JSONValue {
        .object([
            "id": .string(event.id), "kind": .string(event.kind), "node": .string(event.node), "t": .int(Int64(event.milliseconds)),
            "text": .string(describe(event)),
        ])
    }

    /// An event in words: `count[3] running (attempt 1, epoch 2, worker w1)`.
    static func describe(_ event: RunEvent) -> String {
        var text = event.node.isEmpty ? "run" : event.node
        if let state = event.fields["s"] { text += " " + state }
        var details: [String] = []
        if let owner = event.fields["o"], !owner.isEmpty { details.append("worker \(owner)") }
        if let epoch = event.fields["e"] { details.append("epoch \(epoch)") }
        if let why = event.fields["why"], !why.isEmpty { details.append(why) }
        if let reason = event.fields["reason"], !reason.isEmpty { details.append(reason) }
        if let error = event.fields["err"], !error.isEmpty { details.append(error) }
        if !details.isEmpty { text += " (" + details.joined(separator: ", ") + ")" }
        return text
    }
}
