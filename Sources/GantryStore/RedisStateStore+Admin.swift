import GantryCore
import GantryRedis

/// What ``RedisStateStore/retry(_:stages:now:)`` did.
public struct RetryOutcome: Sendable, Hashable {
    /// The run.
    public var runID: RunID
    /// The failed stages that will run again.
    public var retried: [StageName]
    /// Every stage that was reset: the retried ones and those that were skipped or cancelled
    /// because of them.
    public var reset: [StageName]
    /// The nodes queued now, to publish (``TaskDispatcher/publish(_:rootInput:)``).
    public var ready: [ReadyNode]
    /// Entries of the dead-letter stream for the retried stages, removed by the retry.
    public var deadLettersRemoved: Int
}

/// One entry of the store's dead-letter stream `<ns>:dlq`: a node that failed for good.
public struct DeadLetterRecord: Sendable, Hashable, Codable {
    /// The stream entry id (`1700000000000-0`): what `gantry dlq show|requeue` take.
    public var id: String
    /// The run and node that failed.
    public var runID: RunID
    public var node: NodeID
    /// The error it failed with.
    public var error: String
    /// When it was dead-lettered, Unix milliseconds.
    public var milliseconds: UInt64
}

/// What requeueing dead letters did, per run.
public struct DeadLetterRequeue: Sendable {
    /// The run the entries belong to.
    public var runID: RunID
    /// The entries handled.
    public var entries: [String]
    /// The retry, when one happened.
    public var outcome: RetryOutcome?
    /// Why nothing was retried (the run expired, the stage is no longer failed, …).
    public var skipped: String?
    /// Whether the entries were removed from the stream.
    public var removed: Bool
}

extension RedisStateStore {
    // MARK: Retry

    /// Runs the failed stages of `run` again: all of them, or only `stages`; every stage
    /// that was skipped or cancelled because of them is reset too, and a failed run becomes
    /// running again. Returns the nodes to publish and removes the retried stages' entries
    /// from the dead-letter stream.
    ///
    /// A mapped stage keeps its succeeded elements and runs the others again. A failed stage
    /// not named in `stages` stays failed (its dependents are skipped), so the run ends failed
    /// again unless that stage's policy is `on_failure: continue`.
    ///
    /// - Throws: ``GantryError`` `notFound` for a run that does not exist; `invalidArgument`
    ///   for a run that succeeded or was cancelled, a named stage that is not failed, or a run
    ///   with nothing to retry.
    public func retry(_ run: RunID, stages: [StageName] = [], now: UInt64 = currentMilliseconds()) async throws -> RetryOutcome {
        let spec = try await self.spec(run)
        for stage in stages where spec.stage(stage) == nil {
            throw GantryError(.notFound, "run \(run) has no stage '\(stage)'; its stages: \(spec.stages.map(\.name.rawValue).joined(separator: ", "))")
        }
        let plan = try PipelinePlan(spec)
        var args: [RedisArgument] = [
            .integer(Int(now)), .integer(Int(configuration.queueVisibility.milliseconds)),
            .integer(spec.timeout.map { Int(now) + Int($0.milliseconds) } ?? 0),
            .string(stages.map(\.rawValue).joined(separator: ",")), .integer(spec.stages.count),
        ]
        for position in plan.topologicalOrder {
            args.append(.string(plan[position].name.rawValue))
            args.append(.string(plan[position].after.map(\.rawValue).joined(separator: ",")))
        }
        // Indexed as active first, as at creation: a crash after the script leaves a running
        // run the coordinator sweeps, never one nobody does.
        _ = try await client.send("ZADD", activeKey, String(now), run.rawValue)
        let reply = try await client.evalsha(AdminScripts.retry, keys: [.string(runKey(run))], args: args)
        guard let items = reply.array, let status = items.first?.string else {
            throw GantryError(.protocolError, "retry of \(run) returned an unexpected reply: \(reply)")
        }
        guard status == "ok", items.count >= 3 else {
            let code = items.count > 1 ? items[1].string ?? "" : ""
            let detail = items.count > 2 ? items[2].string ?? "" : ""
            let state = items.count > 3 ? items[3].string ?? "" : ""
            if state != RunState.running.rawValue {
                _ = try await client.send("ZREM", activeKey, run.rawValue)
            }
            throw try await retryRefusal(run, code: code, detail: detail)
        }
        func names(_ value: RedisValue) -> [StageName] {
            (value.string ?? "").split(separator: ",").compactMap { StageName(rawValue: String($0)) }
        }
        let retried = names(items[1])
        var ready: [ReadyNode] = []
        var index = 3
        while index + 2 < items.count {
            if let text = items[index].string, let node = NodeID(text) {
                ready.append(ReadyNode(runID: run, node: node, epoch: UInt64(items[index + 1].int ?? 0), attempt: UInt32(items[index + 2].int ?? 1)))
            }
            index += 3
        }
        _ = try await client.send("XADD", globalEventsKey, "MAXLEN", "~", "100000", "*", "run", run.rawValue, "s", RunState.running.rawValue, "name", spec.name)
        let stale = try await deadLetterRecords(matching: { $0.runID == run && retried.contains($0.node.stage) })
        let removed = try await removeDeadLetters(stale.map(\.id))
        return RetryOutcome(runID: run, retried: retried, reset: names(items[2]), ready: ready, deadLettersRemoved: removed)
    }

    private func retryRefusal(_ run: RunID, code: String, detail: String) async throws -> GantryError {
        switch code {
        case "gone":
            return GantryError(.notFound, "run \(run) does not exist (or has expired); `gantry status` lists recent runs")
        case "state" where detail == RunState.succeeded.rawValue:
            return GantryError(.invalidArgument, "run \(run) succeeded: there is nothing to retry")
        case "state":
            return GantryError(.invalidArgument, "run \(run) was \(detail); only a failed run (or a running one with failed stages) can be retried; submit the pipeline again to run it anew")
        case "stage":
            let parts = detail.split(separator: ":", maxSplits: 1).map(String.init)
            let failed = (try? await status(run).stages.filter { $0.state == .failed }.map(\.node.description)) ?? []
            let choices = failed.isEmpty ? "it has no failed stage" : "its failed stages: \(failed.joined(separator: ", "))"
            return GantryError(.invalidArgument, "stage '\(parts.first ?? detail)' of run \(run) is \(parts.last ?? "unknown"), not failed; only failed stages can be retried (\(choices))")
        case "nofailed":
            return GantryError(.invalidArgument, "run \(run) is running and has no failed stage to retry")
        case "notlist":
            let parts = detail.split(separator: ":", maxSplits: 1).map(String.init)
            return GantryError(.invalidArgument, "stage '\(parts.first ?? "")' of run \(run) maps over '\(parts.last ?? "")', whose result is not a JSON list; retrying cannot fix that: fix the pipeline and submit it again")
        case "nothing":
            return GantryError(.invalidArgument, "run \(run) has nothing left that could run again")
        default:
            return GantryError(.protocolError, "retry of \(run) was refused with an unexpected reason '\(code)'")
        }
    }

    // MARK: Dead letters

    /// The number of entries in the dead-letter stream.
    public func deadLetterCount() async throws -> Int {
        try await client.send("XLEN", deadLetterKey).int ?? 0
    }

    /// Up to `limit` entries of the dead-letter stream, newest first (or oldest first).
    public func deadLetterRecords(limit: Int = 100, newestFirst: Bool = true) async throws -> [DeadLetterRecord] {
        let reply = newestFirst
            ? try await client.send("XREVRANGE", deadLetterKey, "+", "-", "COUNT", String(max(1, limit)))
            : try await client.send("XRANGE", deadLetterKey, "-", "+", "COUNT", String(max(1, limit)))
        return Self.deadLetterRecords(reply)
    }

    /// The entry `id` of the dead-letter stream, or nil if there is none.
    public func deadLetterRecord(_ id: String) async throws -> DeadLetterRecord? {
        guard Self.isStreamID(id) else {
            throw GantryError(.invalidArgument, "'\(id)' is not a dead-letter entry id (like 1700000000000-0); `gantry dlq list` shows them")
        }
        return Self.deadLetterRecords(try await client.send("XRANGE", deadLetterKey, id, id)).first
    }

    /// Every entry of the dead-letter stream for which `predicate` holds, oldest first, read
    /// a thousand at a time.
    public func deadLetterRecords(matching predicate: (DeadLetterRecord) -> Bool) async throws -> [DeadLetterRecord] {
        var found: [DeadLetterRecord] = []
        var start = "-"
        while true {
            let reply = try await client.send("XRANGE", deadLetterKey, start, "+", "COUNT", "1000")
            let page = Self.deadLetterRecords(reply)
            let entries = reply.array?.count ?? 0
            found += page.filter(predicate)
            guard entries == 1000, let last = reply.array?.last?.array?.first?.string else { break }
            start = "(" + last
        }
        return found
    }

    /// Removes entries from the dead-letter stream; returns how many existed.
    @discardableResult
    public func removeDeadLetters(_ ids: [String]) async throws -> Int {
        guard !ids.isEmpty else { return 0 }
        var removed = 0
        var start = 0
        while start < ids.count {
            let slice = ids[start..<min(start + 1000, ids.count)]
            start += 1000
            removed += try await client.send(["XDEL", .string(deadLetterKey)] + slice.map { .string($0) }).int ?? 0
        }
        return removed
    }

    /// Empties the dead-letter stream; returns how many entries it held.
    @discardableResult
    public func purgeDeadLetters() async throws -> Int {
        let replies = try await client.pipeline([["XLEN", .string(deadLetterKey)], ["DEL", .string(deadLetterKey)]])
        return replies.first?.int ?? 0
    }

    /// Retries the nodes of `records`, one retry per run with the records' stages, and removes
    /// the records. A record whose run has expired, or whose stage is no longer failed (it was
    /// retried already, or the whole run was), is removed without a retry and reported as
    /// skipped; a run that cannot be retried keeps its records.
    public func requeue(_ records: [DeadLetterRecord], now: UInt64 = currentMilliseconds()) async throws -> [DeadLetterRequeue] {
        var byRun: [RunID: [DeadLetterRecord]] = [:]
        for record in records { byRun[record.runID, default: []].append(record) }
        var results: [DeadLetterRequeue] = []
        for run in byRun.keys.sorted() {
            let entries = byRun[run] ?? []
            let ids = entries.map(\.id)
            guard let state = try await runState(run) else {
                try await removeDeadLetters(ids)
                results.append(DeadLetterRequeue(runID: run, entries: ids, skipped: "run \(run) has expired", removed: true))
                continue
            }
            let current = try await status(run)
            let failed = Set(current.stages.filter { $0.state == .failed }.map(\.node.stage))
            var stages: [StageName] = []
            for stage in entries.map(\.node.stage) where failed.contains(stage) && !stages.contains(stage) { stages.append(stage) }
            guard !stages.isEmpty else {
                try await removeDeadLetters(ids)
                results.append(DeadLetterRequeue(runID: run, entries: ids, skipped: "run \(run) is \(state.rawValue) and these stages are no longer failed", removed: true))
                continue
            }
            do {
                let outcome = try await retry(run, stages: stages, now: now)
                // Entries of stages the retry did not cover (no longer failed) go too.
                try await removeDeadLetters(ids)
                results.append(DeadLetterRequeue(runID: run, entries: ids, outcome: outcome, removed: true))
            } catch let error as GantryError where error.code == .invalidArgument {
                results.append(DeadLetterRequeue(runID: run, entries: ids, skipped: error.message, removed: false))
            }
        }
        return results
    }

    static func isStreamID(_ text: String) -> Bool {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        return (parts.count == 1 || parts.count == 2) && parts.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isNumber) }
    }

    static func deadLetterRecords(_ reply: RedisValue) -> [DeadLetterRecord] {
        (reply.array ?? []).compactMap { entry in
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string else { return nil }
            let fields = fields(parts[1])
            guard let run = fields["run"].flatMap(RunID.init(rawValue:)), let node = fields["node"].flatMap({ NodeID($0) }) else { return nil }
            return DeadLetterRecord(id: id, runID: run, node: node, error: fields["err"] ?? "", milliseconds: fields["t"].flatMap { UInt64($0) } ?? 0)
        }
    }
}
