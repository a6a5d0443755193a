import GantryCore
import GantryRedis

extension RedisStateStore {
    /// The results of `stages` of `run`, as their dependents see them: a plain stage's result, or
    /// for a mapped stage the JSON list of its elements' results. Two round trips at most.
    public func upstreamResults(_ run: RunID, stages: [StageName]) async throws -> [StageName: [UInt8]] {
        guard !stages.isEmpty else { return [:] }
        var batch = RedisPipeline(reservingCapacity: stages.count * 2)
        for stage in stages {
            batch.append(["HGET", .string(resultsKey(run)), .string(stage.rawValue)])
            batch.append(["HGET", .string(nodesKey(run)), .string(nodeField(stage.rawValue, "N"))])
        }
        let replies = try await client.pipeline(batch)
        var results: [StageName: [UInt8]] = [:]
        for (position, stage) in stages.enumerated() {
            let value = replies[position * 2]
            if let bytes = value.bytes, !value.isNull {
                results[stage] = bytes
            } else if let count = replies[position * 2 + 1].int {
                let elements = try await self.results(run, (0..<count).map { NodeID(stage: stage, index: $0) })
                if let missing = elements.firstIndex(where: { $0 == nil }) {
                    throw GantryError(.notFound, "result of \(run)/\(stage)[\(missing)] is missing (expired, or the stage has not finished)")
                }
                results[stage] = StageInput.gather(elements.map { $0! })
            } else {
                throw GantryError(.notFound, "result of \(run)/\(stage) is missing (expired, or the stage has not finished)")
            }
        }
        return results
    }

    /// Records that worker `id` is alive, with what it reports about itself; the entry expires
    /// unless renewed within `ttl`.
    public func heartbeat(worker id: String, fields: [String: String], ttl: Duration, now: UInt64 = currentMilliseconds()) async throws {
        var command: [RedisArgument] = ["HSET", .string(workerKey(id)), "seen", .string(String(now))]
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            command.append(.string(key))
            command.append(.string(value))
        }
        _ = try await client.pipeline([
            command,
            ["PEXPIRE", .string(workerKey(id)), .integer(Int(ttl.milliseconds))],
            ["ZADD", .string(workersKey), .integer(Int(now)), .string(id)],
        ])
    }

    /// Removes worker `id`'s presence (clean shutdown).
    public func removeWorker(_ id: String) async throws {
        _ = try await client.pipeline([["DEL", .string(workerKey(id))], ["ZREM", .string(workersKey), .string(id)]])
    }

    /// Live workers and what they last reported, newest heartbeat first.
    public func workers() async throws -> [(id: String, fields: [String: String])] {
        let ids = (try await client.send("ZREVRANGE", workersKey, "0", "-1").array ?? []).compactMap(\.string)
        guard !ids.isEmpty else { return [] }
        var batch = RedisPipeline(reservingCapacity: ids.count)
        for id in ids { batch.append(["HGETALL", .string(workerKey(id))]) }
        var live: [(id: String, fields: [String: String])] = []
        var gone: [RedisArgument] = []
        for (id, reply) in zip(ids, try await client.pipeline(batch)) {
            let fields = Self.fields(reply)
            if fields.isEmpty { gone.append(.string(id)) } else { live.append((id, fields)) }
        }
        // A worker whose entry expired died without saying so; forget it.
        if !gone.isEmpty { _ = try await client.send(["ZREM", .string(workersKey)] + gone) }
        return live
    }

    var workersKey: String { "\(configuration.namespace):workers" }
    func workerKey(_ id: String) -> String { "\(configuration.namespace):worker:\(id)" }
}
