import Foundation
import GantryCore
import GantryRedis

extension RedisStateStore {
    /// A snapshot of `run`: its state, every stage and every element of mapped stages.
    ///
    /// Reads in two round trips (the run hash, then every node hash), so it is consistent per
    /// node but not across nodes: good for status displays, not for decisions.
    public func status(_ run: RunID) async throws -> RunStatus {
        let runHash = try await hash(runKey(run))
        guard let specText = runHash["spec"], let state = runHash["s"].flatMap(RunState.init(rawValue:)) else {
            throw GantryError(.notFound, "run \(run) does not exist (or has expired); `gantry status` lists recent runs")
        }
        let spec = try JSONDecoder().decode(PipelineSpec.self, from: Data(specText.utf8))
        let stageHashes = try await hashes(spec.stages.map { nodeKey(run, $0.name.rawValue) })
        var stages: [NodeStatus] = []
        var elementKeys: [(StageName, Int)] = []
        for (stage, fields) in zip(spec.stages, stageHashes) {
            stages.append(nodeStatus(NodeID(stage: stage.name), fields))
            if let count = fields["N"].flatMap(Int.init), count > 0 {
                elementKeys += (0..<count).map { (stage.name, $0) }
            }
        }
        var elements: [StageName: [NodeStatus]] = [:]
        if !elementKeys.isEmpty {
            let elementHashes = try await hashes(elementKeys.map { nodeKey(run, NodeID(stage: $0.0, index: $0.1).description) })
            for ((stage, index), fields) in zip(elementKeys, elementHashes) where !fields.isEmpty {
                elements[stage, default: []].append(nodeStatus(NodeID(stage: stage, index: index), fields))
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

    /// Events of `run` after the entry `after` (`"0"` for the beginning), at most `count`.
    public func events(_ run: RunID, after: String = "0", count: Int = 1000) async throws -> [RunEvent] {
        let reply = try await client.send("XRANGE", eventsKey(run), "(" + after, "+", "COUNT", String(count))
        return Self.decodeEvents(reply)
    }

    /// Events of `run` after `after`, waiting up to `timeout` for the first one to arrive.
    public func waitForEvents(_ run: RunID, after: String, timeout: Duration, count: Int = 1000) async throws -> [RunEvent] {
        let reply = try await client.send("XREAD", "COUNT", String(count), "BLOCK", String(max(1, timeout.milliseconds)), "STREAMS", eventsKey(run), after)
        guard let streams = reply.array, let first = streams.first?.array, first.count == 2 else { return [] }
        return Self.decodeEvents(first[1])
    }

    /// The count of stale commits the store refused for `run`.
    public func staleCommits(_ run: RunID) async throws -> Int {
        try await client.send("HGET", runKey(run), "stale").int ?? 0
    }

    // MARK: Helpers

    private func hash(_ key: String) async throws -> [String: String] {
        Self.fields(try await client.send("HGETALL", key))
    }

    private func hashes(_ keys: [String]) async throws -> [[String: String]] {
        guard !keys.isEmpty else { return [] }
        var batch = RedisPipeline(reservingCapacity: keys.count)
        for key in keys { batch.append(["HGETALL", .string(key)]) }
        return try await client.pipeline(batch).map(Self.fields)
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

    static func decodeEvents(_ reply: RedisValue) -> [RunEvent] {
        (reply.array ?? []).compactMap { entry in
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string else { return nil }
            var fields = fields(parts[1])
            let kind = fields.removeValue(forKey: "k") ?? ""
            let node = fields.removeValue(forKey: "n") ?? ""
            let time = fields.removeValue(forKey: "t").flatMap { UInt64($0) } ?? 0
            return RunEvent(id: id, kind: kind, node: node, milliseconds: time, fields: fields)
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
