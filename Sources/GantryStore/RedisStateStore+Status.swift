import Foundation
import GantryCore
import GantryRedis

extension RedisStateStore {
    /// A snapshot of `run`: its state, every stage and every element of mapped stages.
    ///
    /// Reads the run hash and its node hash in one round trip, so the snapshot is consistent.
    public func status(_ run: RunID) async throws -> RunStatus {
        var batch = RedisPipeline(reservingCapacity: 2)
        batch.append(["HGETALL", .string(runKey(run))])
        batch.append(["HGETALL", .string(nodesKey(run))])
        let replies = try await client.pipeline(batch)
        if let message = replies.lazy.compactMap(\.errorMessage).first {
            throw GantryError(.commandFailed, "reading the status of run \(run) failed: \(message)")
        }
        let runHash = Self.fields(replies[0])
        guard let specText = runHash["spec"], let state = runHash["s"].flatMap(RunState.init(rawValue:)) else {
            throw GantryError(.notFound, "run \(run) does not exist (or has expired); `gantry status` lists recent runs")
        }
        let spec = try JSONDecoder().decode(PipelineSpec.self, from: Data(specText.utf8))
        let nodes = Self.nodeFields(replies[1])
        var stages: [NodeStatus] = []
        var elements: [StageName: [NodeStatus]] = [:]
        for stage in spec.stages {
            let fields = nodes[stage.name.rawValue] ?? [:]
            stages.append(nodeStatus(NodeID(stage: stage.name), fields))
            if let count = fields["N"].flatMap(Int.init), count > 0 {
                for index in 0..<count {
                    let node = NodeID(stage: stage.name, index: index)
                    guard let fields = nodes[node.description], !fields.isEmpty else { continue }
                    elements[stage.name, default: []].append(nodeStatus(node, fields))
                }
            }
        }
        return RunStatus(
            runID: run, name: runHash["name"] ?? spec.name, state: state, reason: runHash["reason"].flatMap { $0.isEmpty ? nil : $0 },
            createdMilliseconds: UInt64(runHash["created"] ?? "") ?? 0, finishedMilliseconds: runHash["fin"].flatMap { UInt64($0) },
            totalStages: Int(runHash["total"] ?? "") ?? spec.stages.count, doneStages: Int(runHash["done"] ?? "") ?? 0,
            staleCommitsRefused: Int(runHash["stale"] ?? "") ?? 0, spec: spec, stages: stages, elements: elements
        )
    }

    /// The state of one run, or nil if it does not exist.
    public func runState(_ run: RunID) async throws -> RunState? {
        try await client.send("HGET", runKey(run), "s").string.flatMap(RunState.init(rawValue:))
    }

    /// The pipeline spec of a run.
    public func spec(_ run: RunID) async throws -> PipelineSpec {
        guard let text = try await client.send("HGET", runKey(run), "spec").string else {
            throw GantryError(.notFound, "run \(run) does not exist (or has expired)")
        }
        return try JSONDecoder().decode(PipelineSpec.self, from: Data(text.utf8))
    }

    /// Events of `run` after the event `after` (`"0"` for the beginning), at most `count`.
    public func events(_ run: RunID, after: String = "0", count: Int = 1000) async throws -> [RunEvent] {
        let position = EventPosition(after)
        let key = eventsKey(run)
        var batch = RedisPipeline(reservingCapacity: 2)
        // Resuming inside an entry: the rest of that entry first.
        if position.seen != nil { batch.append(["XRANGE", .string(key), .string(position.entry), .string(position.entry)]) }
        batch.append(["XRANGE", .string(key), .string("(" + position.entry), "+", "COUNT", .integer(max(1, count))])
        let replies = try await client.pipeline(batch)
        if let message = replies.lazy.compactMap(\.errorMessage).first {
            throw GantryError(.commandFailed, "reading the events of run \(run) after '\(after)' failed: \(message)")
        }
        var events: [RunEvent] = []
        if let seen = position.seen { events = Array(Self.decodeEvents(replies[0]).dropFirst(seen)) }
        events += Self.decodeEvents(replies[replies.count - 1])
        return Array(events.prefix(count))
    }

    /// Events of `run` after `after`, waiting up to `timeout` for the first one to arrive.
    public func waitForEvents(_ run: RunID, after: String, timeout: Duration, count: Int = 1000) async throws -> [RunEvent] {
        let position = EventPosition(after)
        if position.seen != nil {
            let rest = try await events(run, after: after, count: count)
            if !rest.isEmpty { return rest }
        }
        let reply = try await client.send("XREAD", "COUNT", String(count), "BLOCK", String(max(1, timeout.milliseconds)), "STREAMS", eventsKey(run), position.entry)
        guard let streams = reply.array, let first = streams.first?.array, first.count == 2 else { return [] }
        return Array(Self.decodeEvents(first[1]).prefix(count))
    }

    /// The count of stale commits the store refused for `run`.
    public func staleCommits(_ run: RunID) async throws -> Int {
        try await client.send("HGET", runKey(run), "stale").int ?? 0
    }

    // MARK: Helpers

    /// The fields of a run's node hash (records `<node>` and fields `<node>.<field>`), by node.
    static func nodeFields(_ reply: RedisValue) -> [String: [String: String]] {
        guard let items = reply.array else { return [:] }
        var nodes: [String: [String: String]] = [:]
        var index = 0
        while index + 1 < items.count {
            defer { index += 2 }
            guard let name = items[index].string, let value = items[index + 1].string else { continue }
            if let dot = name.lastIndex(of: ".") {
                nodes[String(name[..<dot]), default: [:]][String(name[name.index(after: dot)...])] = value
            } else {
                nodes[name, default: [:]].merge(recordFields(value)) { _, record in record }
            }
        }
        return nodes
    }

    static func fields(_ reply: RedisValue) -> [String: String] {
        guard let items = reply.array else { return [:] }
        var result: [String: String] = [:]
        var index = 0
        while index + 1 < items.count {
            if let key = items[index].string { result[key] = items[index + 1].string ?? "" }
            index += 2
        }
        return result
    }

    /// Decodes stream entries into events. An entry holds one event or several (see
    /// ``StoreScripts/base``): the fields before its first `n` belong to every event of the
    /// entry, and each `n` starts an event whose own fields follow it. The last event of an
    /// entry has the entry's id; an earlier one has `<entry id>.<index>`, so a reader can resume
    /// inside an entry.
    static func decodeEvents(_ reply: RedisValue) -> [RunEvent] {
        var events: [RunEvent] = []
        for entry in reply.array ?? [] {
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string, let items = parts[1].array else { continue }
            var shared: [String: String] = [:]
            var current: [String: String]?
            var decoded: [[String: String]] = []
            var index = 0
            while index + 1 < items.count {
                defer { index += 2 }
                guard let key = items[index].string else { continue }
                let value = items[index + 1].string ?? ""
                if key == "n" {
                    if let current { decoded.append(current) }
                    current = shared
                    current?["n"] = value
                } else if current != nil {
                    current?[key] = value
                } else {
                    shared[key] = value
                }
            }
            if let current {
                decoded.append(current)
            } else if !shared.isEmpty {
                decoded.append(shared)
            }
            for (position, var fields) in decoded.enumerated() {
                let kind = fields.removeValue(forKey: "k") ?? ""
                let node = fields.removeValue(forKey: "n") ?? ""
                let time = fields.removeValue(forKey: "t").flatMap { UInt64($0) } ?? 0
                let eventID = position == decoded.count - 1 ? id : "\(id).\(position)"
                events.append(RunEvent(id: eventID, kind: kind, node: node, milliseconds: time, fields: fields))
            }
        }
        return events
    }

    /// Where a reader is in a run's event stream: after the whole entry `entry`, or after the
    /// first `seen` events of it (an event id `<entry id>.<index>`).
    struct EventPosition {
        var entry: String
        var seen: Int?

        init(_ id: String) {
            if let dot = id.lastIndex(of: "."), let index = Int(id[id.index(after: dot)...]), index >= 0 {
                entry = String(id[..<dot])
                seen = index + 1
            } else {
                entry = id
                seen = nil
            }
        }
    }

    private func nodeStatus(_ node: NodeID, _ fields: [String: String]) -> NodeStatus {
        func number<T: FixedWidthInteger>(_ key: String) -> T? { fields[key].flatMap { T($0) } }
        func text(_ key: String) -> String? { fields[key].flatMap { $0.isEmpty ? nil : $0 } }
        let lease: UInt64? = number("l")
        return NodeStatus(
            node: node, state: fields["s"].flatMap(NodeState.init(rawValue:)) ?? .waiting,
            epoch: number("e") ?? 0, attempt: number("a") ?? 0, owner: text("o"),
            leaseExpiresMilliseconds: fields["s"] == "running" ? lease : nil, leasesLost: number("k") ?? 0,
            queuedMilliseconds: number("q"), startedMilliseconds: number("st"), finishedMilliseconds: number("fin"),
            retryAtMilliseconds: fields["s"] == "retrying" ? number("ra") : nil, error: text("err"), deadLettered: fields["dl"] == "1",
            resultBytes: number("sz"), elements: number("N"), elementsLeft: number("left"), pendingDependencies: number("p") ?? 0,
            skippedBecause: text("skip")
        )
    }
}
