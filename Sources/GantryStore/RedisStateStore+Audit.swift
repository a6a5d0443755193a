import GantryCore
import GantryRedis

/// What the store holds about one node, read for checking outcomes from the outside: the
/// benchmarks count completions with it and the fault-injection checks prove that every job
/// ended with exactly one committed result or a dead letter.
public struct NodeAudit: Sendable, Hashable {
    /// The run that was audited.
    public var runID: RunID
    /// The node that was audited.
    public var node: NodeID
    /// The run's state, or nil when the run does not exist (never created, or expired).
    public var runState: RunState?
    /// The node's state, or nil when the node does not exist.
    public var nodeState: NodeState?
    /// Whether a result is stored for the node.
    public var hasResult: Bool
    /// How many times the node's event stream records it as succeeded: exactly one commit
    /// succeeded when this is 1 (the commit script appends the event atomically with the result).
    public var commitsRecorded: Int
    /// Late or duplicate commits and failures the run's fenced scripts refused.
    public var staleRefused: Int
    /// Whether the node was dead-lettered.
    public var deadLettered: Bool
    /// The error recorded with the node's last failure, if any.
    public var error: String?
}

/// One entry of the store's dead-letter stream: a node that failed for good, with the reason.
public struct DeadLetterEntry: Sendable, Hashable {
    /// The run of the dead-lettered node.
    public var runID: RunID
    /// The node that failed for good.
    public var node: NodeID
    /// Why: the error of its last attempt.
    public var reason: String
    /// When it was dead-lettered, Unix milliseconds.
    public var milliseconds: UInt64
}

extension RedisStateStore {
    /// The id of the newest entry of the global run-event stream, or `0-0` when it is empty:
    /// pass it to ``runEndings(after:timeout:count:)`` to see only what ends from now on.
    public func lastRunEventID() async throws -> String {
        let reply = try await client.send("XREVRANGE", globalEventsKey, "+", "-", "COUNT", "1")
        return reply.array?.first?.array?.first?.string ?? "0-0"
    }

    /// Runs that ended after the global stream entry `after`, waiting up to `timeout` for the
    /// first; returns them with the id to continue from. One blocking read on the stream the
    /// store appends to whenever a run ends, so a watcher never polls run by run.
    public func runEndings(after: String, timeout: Duration, count: Int = 10_000) async throws -> (next: String, endings: [(RunID, RunState)]) {
        let reply = try await client.send("XREAD", "COUNT", String(count), "BLOCK", String(max(1, timeout.milliseconds)), "STREAMS", globalEventsKey, after)
        guard let streams = reply.array, let first = streams.first?.array, first.count == 2, let entries = first[1].array else {
            return (after, [])
        }
        var next = after
        var endings: [(RunID, RunState)] = []
        for entry in entries {
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string else { continue }
            next = id
            let fields = Self.fields(parts[1])
            if let run = fields["run"].flatMap(RunID.init(rawValue:)), let state = fields["s"].flatMap(RunState.init(rawValue:)), state.isFinal {
                endings.append((run, state))
            }
        }
        return (next, endings)
    }

    /// The states of many runs in pipelined round trips (nil for a run that does not exist).
    public func runStates(_ runs: [RunID], batch: Int = 2000) async throws -> [RunState?] {
        var states: [RunState?] = []
        states.reserveCapacity(runs.count)
        var start = 0
        while start < runs.count {
            let slice = runs[start..<min(start + batch, runs.count)]
            start += batch
            var commands = RedisPipeline(reservingCapacity: slice.count)
            for run in slice { commands.append(["HGET", .string(runKey(run)), "s"]) }
            states += try await client.pipeline(commands).map { $0.string.flatMap(RunState.init(rawValue:)) }
        }
        return states
    }

    /// Audits `nodes` in pipelined batches of `batch` (four commands per node): run state,
    /// node state, result presence, commits recorded in the event stream, refused stale
    /// writes, dead-letter flag and error.
    public func audit(_ nodes: [(runID: RunID, node: NodeID)], batch: Int = 500) async throws -> [NodeAudit] {
        var audits: [NodeAudit] = []
        audits.reserveCapacity(nodes.count)
        var start = 0
        while start < nodes.count {
            let slice = nodes[start..<min(start + batch, nodes.count)]
            start += batch
            var commands = RedisPipeline(reservingCapacity: slice.count * 4)
            for (run, node) in slice {
                commands.append(["HMGET", .string(runKey(run)), "s", "stale"])
                let name = node.description
                commands.append(["HMGET", .string(nodesKey(run)), .string(name), .string(nodeField(name, "dl")), .string(nodeField(name, "err"))])
                commands.append(["HEXISTS", .string(resultsKey(run)), .string(name)])
                commands.append(["XRANGE", .string(eventsKey(run)), "-", "+"])
            }
            let replies = try await client.pipeline(commands)
            for (offset, (run, node)) in slice.enumerated() {
                let runFields = replies[offset * 4].array ?? []
                let nodeFields = replies[offset * 4 + 1].array ?? []
                let events = Self.decodeEvents(replies[offset * 4 + 3])
                let commits = events.filter { $0.kind == "node" && $0.node == node.description && $0.fields["s"] == "succeeded" }.count
                let error = nodeFields.count > 2 ? nodeFields[2].string : nil
                audits.append(NodeAudit(
                    runID: run, node: node,
                    runState: runFields.first?.string.flatMap(RunState.init(rawValue:)),
                    nodeState: nodeFields.first?.string.flatMap { Self.recordFields($0)["s"] }.flatMap(NodeState.init(rawValue:)),
                    hasResult: (replies[offset * 4 + 2].int ?? 0) > 0,
                    commitsRecorded: commits,
                    staleRefused: runFields.count > 1 ? Int(runFields[1].string ?? "") ?? 0 : 0,
                    deadLettered: nodeFields.count > 1 && nodeFields[1].string == "1",
                    error: error.flatMap { $0.isEmpty ? nil : $0 }
                ))
            }
        }
        return audits
    }

    /// Every entry of the store's dead-letter stream (nodes that failed for good), oldest first.
    public func deadLetters(limit: Int = 100_000) async throws -> [DeadLetterEntry] {
        let reply = try await client.send("XRANGE", deadLetterKey, "-", "+", "COUNT", String(limit))
        return (reply.array ?? []).compactMap { entry in
            guard let parts = entry.array, parts.count == 2 else { return nil }
            let fields = Self.fields(parts[1])
            guard let run = fields["run"].flatMap(RunID.init(rawValue:)), let node = fields["node"].flatMap({ NodeID($0) }) else { return nil }
            return DeadLetterEntry(runID: run, node: node, reason: fields["err"] ?? "", milliseconds: fields["t"].flatMap { UInt64($0) } ?? 0)
        }
    }

    /// Deletes every key of this store's namespace (SCAN + UNLINK, so Redis never blocks on
    /// a large delete) and returns how many there were. For benchmark and test namespaces:
    /// never point it at a namespace in use.
    @discardableResult
    public func removeNamespace() async throws -> Int {
        var cursor = "0"
        var removed = 0
        repeat {
            let reply = try await client.send("SCAN", cursor, "MATCH", "\(configuration.namespace):*", "COUNT", "1000")
            guard let parts = reply.array, parts.count == 2 else { break }
            cursor = parts[0].string ?? "0"
            let keys = (parts[1].array ?? []).compactMap(\.string)
            if !keys.isEmpty {
                _ = try await client.send(["UNLINK"] + keys.map { .string($0) })
                removed += keys.count
            }
        } while cursor != "0"
        return removed
    }
}
