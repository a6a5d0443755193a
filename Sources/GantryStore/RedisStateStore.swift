import Foundation
import GantryCore
import GantryRedis

/// Everything durable about runs, in Redis: specs, node state, attempts, leases, results and
/// events. Each state transition is one Lua script (``StoreScripts``), so it is atomic; result
/// commits are fenced by the node's epoch.
///
/// Besides the per-run keys (all tagged `{run-id}`), a few global indexes are kept with plain
/// commands issued after the run's script: `<ns>:runs` (every run by creation time),
/// `<ns>:active` (runs still running, for the coordinator's sweeps), `<ns>:events` (run-level
/// changes), `<ns>:dlq` (dead-lettered nodes) and `<ns>:idem:<key>` (idempotency keys).
///
/// Claims and commits made one at a time by concurrent callers are gathered into batches (see
/// ``Coalescer``): each batch is one round trip and one script call per owner, so a busy worker
/// pays the script overhead once for many tasks.
public final class RedisStateStore: Sendable {
    /// The Redis client the store talks through.
    public let client: RedisClient
    /// The store's settings.
    public let configuration: StoreConfiguration

    /// The most items one batch script handles; a larger batch is split over several scripts in
    /// one pipeline, so no single script holds Redis for long.
    static let itemsPerScript = 128
    /// The most result bytes one commit script carries.
    static let bytesPerScript = 1 << 20

    private struct ClaimJob: Sendable {
        var request: ClaimRequest
        var owner: String
        var lease: Duration
    }

    private struct CommitJob: Sendable {
        var request: CommitRequest
        var owner: String
    }

    private let claims: Coalescer<ClaimJob, ClaimOutcome>
    private let commits: Coalescer<CommitJob, CommitOutcome>

    /// Creates a store over `client`.
    public init(client: RedisClient, configuration: StoreConfiguration = StoreConfiguration()) {
        self.client = client
        self.configuration = configuration
        let batches = max(2, client.configuration.poolSize)
        claims = Coalescer(maxBatch: 1024, maxConcurrentBatches: batches)
        commits = Coalescer(maxBatch: 1024, maxConcurrentBatches: batches)
    }

    /// Loads every script into Redis, so a script that does not compile is reported at start-up.
    public func loadScripts() async throws {
        for script in StoreScripts.all { try await client.load(script) }
    }

    // MARK: Keys

    func runKey(_ run: RunID) -> String { "\(configuration.namespace):{\(run.rawValue)}:run" }
    func nodeKey(_ run: RunID, _ node: String) -> String { "\(configuration.namespace):{\(run.rawValue)}:n:\(node)" }
    func resultKey(_ run: RunID, _ node: String) -> String { "\(configuration.namespace):{\(run.rawValue)}:r:\(node)" }
    func eventsKey(_ run: RunID) -> String { "\(configuration.namespace):{\(run.rawValue)}:ev" }
    func inputKey(_ run: RunID) -> String { "\(configuration.namespace):{\(run.rawValue)}:in" }
    var runsKey: String { "\(configuration.namespace):runs" }
    var activeKey: String { "\(configuration.namespace):active" }
    var globalEventsKey: String { "\(configuration.namespace):events" }
    var deadLetterKey: String { "\(configuration.namespace):dlq" }
    func idempotencyKey(_ key: String) -> String { "\(configuration.namespace):idem:\(key)" }

    // MARK: Runs

    /// Creates a run of `plan` with `input`, returning its root nodes to publish.
    ///
    /// With an `idempotencyKey`, a second submission under the same key returns the first
    /// run's id and creates nothing.
    public func createRun(_ plan: PipelinePlan, input: [UInt8], idempotencyKey: String? = nil, now: UInt64 = currentMilliseconds()) async throws -> CreatedRun {
        guard input.count <= configuration.maxInputBytes else {
            throw GantryError(.payloadTooLarge, "run input is \(input.count) bytes, over the limit of \(configuration.maxInputBytes) bytes; raise store.max_input_bytes or pass a reference (a URL or path) instead of the data")
        }
        var runID = RunID.make()
        if let idempotencyKey {
            let key = self.idempotencyKey(idempotencyKey)
            let set = try await client.send("SET", key, runID.rawValue, "NX", "PX", Int(configuration.idempotencyTTL.milliseconds))
            if set.isNull {
                guard let existing = try await client.send("GET", key).string.flatMap(RunID.init(rawValue:)) else {
                    throw GantryError(.commandFailed, "idempotency key '\(idempotencyKey)' expired while it was being read; submit again")
                }
                runID = existing
            }
        }
        let spec = String(decoding: try JSONEncoder().encode(plan.spec), as: UTF8.self)
        var args: [RedisArgument] = [
            .integer(Int(now)), .string(plan.spec.name), .string(spec), .bytes(input),
            .integer(Int(configuration.retention.milliseconds)), .integer(Int(configuration.queueVisibility.milliseconds)),
            .integer(plan.spec.timeout.map { Int(now) + Int($0.milliseconds) } ?? 0), .integer(plan.spec.stages.count),
        ]
        args.reserveCapacity(args.count + plan.spec.stages.count * 8)
        for (position, stage) in plan.spec.stages.enumerated() {
            args.append(.string(stage.name.rawValue))
            args.append(.integer(stage.after.count))
            args.append(.string(plan.dependents[position].map { plan[$0].name.rawValue }.joined(separator: ",")))
            args.append(.string(stage.map?.rawValue ?? ""))
            args.append(.integer(stage.maxParallel ?? 0))
            args.append(.string(stage.onFailure == .continue ? "c" : "f"))
            args.append(.integer(stage.retry.maxAttempts))
            args.append(.integer(configuration.maxLostLeases))
        }
        // One round trip, run in this order: the run is indexed as active first, so a failure
        // after it leaves an index entry the coordinator drops, never a run nobody sweeps. The
        // run id is new (or its idempotency key was just taken), so the script creates it.
        var batch = RedisPipeline(reservingCapacity: 4, bytesPerCommand: 64 + input.count / 4 + spec.utf8.count / 4)
        batch.append(["ZADD", .string(activeKey), .integer(Int(now)), .string(runID.rawValue)])
        batch.append(["ZADD", .string(runsKey), .integer(Int(now)), .string(runID.rawValue)])
        batch.evalsha(StoreScripts.createRun, keys: [.string(runKey(runID))], args: args)
        batch.append(["XADD", .string(globalEventsKey), "MAXLEN", "~", "100000", "*", "run", .string(runID.rawValue), "s", "running", "name", .string(plan.spec.name)])
        let replies = try await client.pipeline(batch)
        let reply = replies[2]
        if let message = reply.errorMessage {
            throw GantryError(.commandFailed, "create_run of \(runID) failed: \(message)")
        }
        let items = reply.array ?? []
        let created = items.first?.string == "created"
        return CreatedRun(runID: runID, created: created, ready: readyNodes(runID, items, from: 1))
    }

    /// What a cancellation did.
    public enum CancelOutcome: Sendable, Hashable {
        /// The run was running and is now cancelled.
        case cancelled
        /// The run had already ended in this state; nothing changed.
        case alreadyEnded(RunState)
    }

    /// Cancels a run: unfinished nodes are cancelled, running ones learn it at their next renew.
    @discardableResult
    public func cancel(_ run: RunID, reason: String = "cancelled by user", now: UInt64 = currentMilliseconds()) async throws -> CancelOutcome {
        let reply = try await client.evalsha(StoreScripts.cancel, keys: [.string(runKey(run))], args: [.integer(Int(now)), .string(reason)])
        switch reply.string {
        case "cancelled":
            try await runFinished(run, state: .cancelled)
            return .cancelled
        case let text? where text.hasPrefix("ended:"):
            guard let state = RunState(rawValue: String(text.dropFirst("ended:".count))) else { break }
            return .alreadyEnded(state)
        case "gone":
            throw GantryError(.notFound, "run \(run) does not exist (or has expired); `gantry status` lists recent runs")
        default:
            break
        }
        throw scriptError("cancel", run, nil, reply)
    }

    // MARK: Node transitions

    /// Takes the lease of `node` for `owner` for `lease`, if `epoch` is current.
    ///
    /// Without `now`, the claim joins the next batch of concurrent claims (and is timed when the
    /// batch goes); with it, it goes alone at that time.
    public func claim(_ run: RunID, _ node: NodeID, epoch: UInt64, owner: String, lease: Duration, now: UInt64? = nil) async throws -> ClaimOutcome {
        let request = ClaimRequest(runID: run, node: node, epoch: epoch)
        guard let now else {
            return try await claims.submit(ClaimJob(request: request, owner: owner, lease: lease)) { try await self.claimJobs($0) }
        }
        return try await claim([request], owner: owner, lease: lease, now: now)[0]
    }

    /// Extends the lease on `node`.
    public func renew(_ run: RunID, _ node: NodeID, epoch: UInt64, owner: String, lease: Duration, now: UInt64 = currentMilliseconds()) async throws -> RenewOutcome {
        try await renew([LeaseRef(runID: run, node: node, epoch: epoch)], owner: owner, lease: lease, now: now)[0]
    }

    /// Extends many leases in one round trip (the worker renews everything it runs at once).
    public func renew(_ leases: [LeaseRef], owner: String, lease: Duration, now: UInt64 = currentMilliseconds()) async throws -> [RenewOutcome] {
        guard !leases.isEmpty else { return [] }
        var batch = RedisPipeline(reservingCapacity: leases.count)
        for ref in leases {
            batch.evalsha(StoreScripts.renew, keys: [.string(runKey(ref.runID))], args: [
                .string(ref.node.description), .integer(Int(ref.epoch)), .string(owner), .integer(Int(now)), .integer(Int(lease.milliseconds)),
            ])
        }
        return try await client.pipeline(batch).enumerated().map { index, reply in
            guard let text = reply.string, let outcome = RenewOutcome(rawValue: text) else {
                throw scriptError("renew", leases[index].runID, leases[index].node, reply)
            }
            return outcome
        }
    }

    /// Hands a held node back (graceful shutdown). Returns false if the caller no longer held it.
    @discardableResult
    public func release(_ run: RunID, _ node: NodeID, epoch: UInt64, owner: String, now: UInt64 = currentMilliseconds()) async throws -> Bool {
        let reply = try await client.evalsha(StoreScripts.release, keys: [.string(runKey(run))], args: [
            .string(node.description), .integer(Int(epoch)), .string(owner), .integer(Int(now)), .integer(Int(configuration.queueVisibility.milliseconds)),
        ])
        return reply.string == "ok"
    }

    /// Commits `result` for `node` if `owner` holds `epoch`, returning the nodes that became ready.
    ///
    /// Without `now`, the commit joins the next batch of concurrent commits (and is timed when
    /// the batch goes); with it, it goes alone at that time.
    public func commit(_ run: RunID, _ node: NodeID, epoch: UInt64, owner: String, result: [UInt8], now: UInt64? = nil) async throws -> CommitOutcome {
        try checkResultSize(run, node, result)
        let request = CommitRequest(runID: run, node: node, epoch: epoch, result: result)
        guard let now else {
            return try await commits.submit(CommitJob(request: request, owner: owner)) { try await self.commitJobs($0) }
        }
        return try await commit([request], owner: owner, now: now)[0]
    }

    /// Records a failed attempt of `node`: retried after `backoff` if `retriable` and attempts
    /// remain, else dead-lettered with `error`.
    public func fail(
        _ run: RunID, _ node: NodeID, epoch: UInt64, owner: String, error: String, retriable: Bool, backoff: Duration,
        now: UInt64 = currentMilliseconds()
    ) async throws -> FailureOutcome {
        let reply = try await client.evalsha(StoreScripts.fail, keys: [.string(runKey(run))], args: [
            .string(node.description), .integer(Int(epoch)), .string(owner), .integer(Int(now)), .string(error),
            .integer(retriable ? 1 : 0), .integer(Int(backoff.milliseconds)), .integer(Int(configuration.queueVisibility.milliseconds)),
        ])
        guard let items = reply.array, let status = items.first?.string else { throw scriptError("fail", run, node, reply) }
        switch status {
        case "retry":
            return .retryAt(milliseconds: UInt64(items[1].int ?? 0))
        case "dead":
            try await deadLettered(run, node, error: error, now: now)
            let state = items.count > 1 ? RunState(rawValue: items[1].string ?? "") : nil
            if let state { try await runFinished(run, state: state) }
            return .deadLettered(ready: readyNodes(run, items, from: 2), runState: state)
        case "stale":
            return .stale
        default:
            throw scriptError("fail", run, node, reply)
        }
    }

    /// Handles up to `limit` due timers of `run` (expired leases, due retries, lost messages,
    /// the run deadline) and returns the nodes to publish.
    public func wake(_ run: RunID, limit: Int = 500, now: UInt64 = currentMilliseconds()) async throws -> WakeOutcome {
        let reply = try await client.evalsha(StoreScripts.wake, keys: [.string(runKey(run))], args: [
            .integer(Int(now)), .integer(limit), .integer(Int(configuration.queueVisibility.milliseconds)),
        ])
        guard let items = reply.array, items.count >= 2 else { throw scriptError("wake", run, nil, reply) }
        let state = RunState(rawValue: items[0].string ?? "")
        if let state { try await runFinished(run, state: state) }
        return WakeOutcome(ready: readyNodes(run, items, from: 2), more: items[1].int == 1, runState: state, gone: items[0].string == "gone")
    }

    // MARK: Pipelined transitions

    /// A claim request for ``claim(_:owner:lease:now:)``: the node and the epoch its message carries.
    public typealias ClaimRequest = LeaseRef

    /// A commit request for ``commit(_:owner:now:)``.
    public struct CommitRequest: Sendable {
        public var runID: RunID
        public var node: NodeID
        public var epoch: UInt64
        public var result: [UInt8]
        public init(runID: RunID, node: NodeID, epoch: UInt64, result: [UInt8]) {
            self.runID = runID
            self.node = node
            self.epoch = epoch
            self.result = result
        }
    }

    /// Claims many nodes in one round trip.
    public func claim(_ requests: [ClaimRequest], owner: String, lease: Duration, now: UInt64 = currentMilliseconds()) async throws -> [ClaimOutcome] {
        guard !requests.isEmpty else { return [] }
        var batch = RedisPipeline(reservingCapacity: 1, bytesPerCommand: 64 * requests.count)
        var chunks: [Range<Int>] = []
        var start = 0
        while start < requests.count {
            let chunk = start..<min(start + Self.itemsPerScript, requests.count)
            var keys: [RedisArgument] = []
            keys.reserveCapacity(chunk.count)
            var args: [RedisArgument] = [.string(owner), .integer(Int(now)), .integer(Int(lease.milliseconds))]
            args.reserveCapacity(3 + 2 * chunk.count)
            for request in requests[chunk] {
                keys.append(.string(runKey(request.runID)))
                args.append(.string(request.node.description))
                args.append(.integer(Int(request.epoch)))
            }
            batch.evalsha(StoreScripts.claimBatch, keys: keys, args: args)
            chunks.append(chunk)
            start = chunk.upperBound
        }
        let replies = try await client.pipeline(batch)
        var outcomes: [ClaimOutcome] = []
        outcomes.reserveCapacity(requests.count)
        for (reply, chunk) in zip(replies, chunks) {
            guard let items = reply.array, items.count == chunk.count else {
                throw scriptError("claim_batch", requests[chunk.lowerBound].runID, requests[chunk.lowerBound].node, reply)
            }
            for (item, index) in zip(items, chunk) {
                outcomes.append(try claimOutcome(requests[index].runID, requests[index].node, item))
            }
        }
        return outcomes
    }

    /// Commits many results in one round trip.
    public func commit(_ requests: [CommitRequest], owner: String, now: UInt64 = currentMilliseconds()) async throws -> [CommitOutcome] {
        guard !requests.isEmpty else { return [] }
        for request in requests { try checkResultSize(request.runID, request.node, request.result) }
        var batch = RedisPipeline(reservingCapacity: 1, bytesPerCommand: requests.reduce(64 * requests.count) { $0 + $1.result.count })
        var chunks: [Range<Int>] = []
        var start = 0
        while start < requests.count {
            var end = start
            var bytes = 0
            while end < requests.count, end - start < Self.itemsPerScript, end == start || bytes + requests[end].result.count <= Self.bytesPerScript {
                bytes += requests[end].result.count
                end += 1
            }
            let chunk = start..<end
            var keys: [RedisArgument] = []
            keys.reserveCapacity(chunk.count)
            var args: [RedisArgument] = [
                .string(owner), .integer(Int(now)),
                .integer(Int(configuration.resultTTL.milliseconds)), .integer(Int(configuration.queueVisibility.milliseconds)),
            ]
            args.reserveCapacity(4 + 3 * chunk.count)
            for request in requests[chunk] {
                keys.append(.string(runKey(request.runID)))
                args.append(.string(request.node.description))
                args.append(.integer(Int(request.epoch)))
                args.append(.bytes(request.result))
            }
            batch.evalsha(StoreScripts.commitBatch, keys: keys, args: args)
            chunks.append(chunk)
            start = end
        }
        let replies = try await client.pipeline(batch)
        var outcomes: [CommitOutcome] = []
        outcomes.reserveCapacity(requests.count)
        var finished: [(RunID, RunState)] = []
        for (reply, chunk) in zip(replies, chunks) {
            guard let items = reply.array, items.count == chunk.count else {
                throw scriptError("commit_batch", requests[chunk.lowerBound].runID, requests[chunk.lowerBound].node, reply)
            }
            for (item, index) in zip(items, chunk) {
                let outcome = try commitOutcome(requests[index].runID, requests[index].node, item)
                if case .committed(_, let state?) = outcome { finished.append((requests[index].runID, state)) }
                outcomes.append(outcome)
            }
        }
        try await runsFinished(finished)
        return outcomes
    }

    /// Runs one batch of coalesced claims: one ``claim(_:owner:lease:now:)`` per owner and lease.
    private func claimJobs(_ jobs: [ClaimJob]) async throws -> [ClaimOutcome] {
        let now = currentMilliseconds()
        var outcomes = [ClaimOutcome?](repeating: nil, count: jobs.count)
        for group in Dictionary(grouping: jobs.indices, by: { GroupKey(owner: jobs[$0].owner, lease: jobs[$0].lease) }) {
            let results = try await claim(group.value.map { jobs[$0].request }, owner: group.key.owner, lease: group.key.lease, now: now)
            for (index, outcome) in zip(group.value, results) { outcomes[index] = outcome }
        }
        return outcomes.map { $0! }
    }

    /// Runs one batch of coalesced commits: one ``commit(_:owner:now:)`` per owner.
    private func commitJobs(_ jobs: [CommitJob]) async throws -> [CommitOutcome] {
        let now = currentMilliseconds()
        var outcomes = [CommitOutcome?](repeating: nil, count: jobs.count)
        for group in Dictionary(grouping: jobs.indices, by: { jobs[$0].owner }) {
            let results = try await commit(group.value.map { jobs[$0].request }, owner: group.key, now: now)
            for (index, outcome) in zip(group.value, results) { outcomes[index] = outcome }
        }
        return outcomes.map { $0! }
    }

    private struct GroupKey: Hashable {
        var owner: String
        var lease: Duration
    }

    // MARK: Reading

    /// The committed result of `node`, or nil if there is none (not finished, or expired).
    public func result(_ run: RunID, _ node: NodeID) async throws -> [UInt8]? {
        let reply = try await client.send("GET", resultKey(run, node.description))
        return reply.isNull ? nil : reply.bytes
    }

    /// The results of several nodes of one run, in one round trip; nil where there is none.
    public func results(_ run: RunID, _ nodes: [NodeID]) async throws -> [[UInt8]?] {
        guard !nodes.isEmpty else { return [] }
        let reply = try await client.send(["MGET"] + nodes.map { .string(resultKey(run, $0.description)) })
        return (reply.array ?? []).map { $0.isNull ? nil : $0.bytes }
    }

    /// The run's input.
    public func input(_ run: RunID) async throws -> [UInt8] {
        try await client.send("GET", inputKey(run)).bytes ?? []
    }

    /// Runs still running, oldest first, `limit` at a time after `cursor` (a creation time).
    public func activeRuns(limit: Int = 1000) async throws -> [RunID] {
        let reply = try await client.send("ZRANGE", activeKey, "0", String(limit - 1))
        return (reply.array ?? []).compactMap { $0.string.flatMap(RunID.init(rawValue:)) }
    }

    /// The most recent runs, newest first.
    public func recentRuns(limit: Int = 20) async throws -> [RunID] {
        let reply = try await client.send("ZREVRANGE", runsKey, "0", String(max(0, limit - 1)))
        return (reply.array ?? []).compactMap { $0.string.flatMap(RunID.init(rawValue:)) }
    }

    /// Drops a run that does not exist from the active index, once it is old enough that its
    /// creation cannot still be under way.
    public func forgetMissingRun(_ run: RunID, now: UInt64 = currentMilliseconds()) async throws {
        guard run.milliseconds + 60_000 < now else { return }
        _ = try await client.send("ZREM", activeKey, run.rawValue)
    }

    /// Drops `run` from the active index (it finished) and records its end in the global stream.
    func runFinished(_ run: RunID, state: RunState) async throws {
        try await runsFinished([(run, state)])
    }

    /// ``runFinished(_:state:)`` for many runs in one round trip.
    func runsFinished(_ runs: [(RunID, RunState)]) async throws {
        guard !runs.isEmpty else { return }
        var batch = RedisPipeline(reservingCapacity: 1 + runs.count)
        var remove: [RedisArgument] = ["ZREM", .string(activeKey)]
        remove.reserveCapacity(2 + runs.count)
        for (run, _) in runs { remove.append(.string(run.rawValue)) }
        batch.append(remove)
        for (run, state) in runs {
            batch.append(["XADD", .string(globalEventsKey), "MAXLEN", "~", "100000", "*", "run", .string(run.rawValue), "s", .string(state.rawValue)])
        }
        _ = try await client.pipeline(batch)
    }

    private func deadLettered(_ run: RunID, _ node: NodeID, error: String, now: UInt64) async throws {
        _ = try await client.send("XADD", deadLetterKey, "MAXLEN", "~", "100000", "*", "run", run.rawValue, "node", node.description, "err", error, "t", String(now))
    }

    // MARK: Reply decoding

    private func checkResultSize(_ run: RunID, _ node: NodeID, _ result: [UInt8]) throws {
        guard result.count <= configuration.maxResultBytes else {
            throw GantryError(.payloadTooLarge, "result of \(run)/\(node) is \(result.count) bytes, over the limit of \(configuration.maxResultBytes) bytes; raise store.max_result_bytes or store large data elsewhere and return a reference")
        }
    }

    private func claimOutcome(_ run: RunID, _ node: NodeID, _ reply: RedisValue) throws -> ClaimOutcome {
        guard let items = reply.array, let status = items.first?.string else { throw scriptError("claim", run, node, reply) }
        switch status {
        case "ok": return .claimed(epoch: UInt64(items[1].int ?? 0), attempt: UInt32(items[2].int ?? 1))
        case "stale": return .stale(currentEpoch: UInt64(items[1].int ?? 0))
        case "busy": return .busy
        case "done": return .done
        case "cancelled": return .cancelled
        case "gone": return .gone
        case "early": return .early
        default: throw scriptError("claim", run, node, reply)
        }
    }

    /// Decodes one commit reply; the caller records a run it finished (``runsFinished(_:)``).
    private func commitOutcome(_ run: RunID, _ node: NodeID, _ reply: RedisValue) throws -> CommitOutcome {
        guard let items = reply.array, let status = items.first?.string else { throw scriptError("commit", run, node, reply) }
        switch status {
        case "ok":
            let state = RunState(rawValue: items.count > 1 ? items[1].string ?? "" : "")
            return .committed(ready: readyNodes(run, items, from: 2), runState: state)
        case "stale":
            return .stale
        default:
            throw scriptError("commit", run, node, reply)
        }
    }

    /// Decodes the `node, epoch, attempt` triples a script returns after its status fields.
    private func readyNodes(_ run: RunID, _ items: [RedisValue], from start: Int) -> [ReadyNode] {
        var nodes: [ReadyNode] = []
        var index = start
        while index + 2 < items.count {
            if let text = items[index].string, let node = NodeID(text) {
                nodes.append(ReadyNode(runID: run, node: node, epoch: UInt64(items[index + 1].int ?? 0), attempt: UInt32(items[index + 2].int ?? 1)))
            }
            index += 3
        }
        return nodes
    }

    private func scriptError(_ script: String, _ run: RunID, _ node: NodeID?, _ reply: RedisValue) -> GantryError {
        let target = node.map { "\(run)/\($0)" } ?? "\(run)"
        if let message = reply.errorMessage {
            return GantryError(.commandFailed, "\(script) of \(target) failed: \(message)")
        }
        return GantryError(.protocolError, "\(script) of \(target) returned an unexpected reply: \(reply)")
    }
}

/// A node and an epoch: a lease held by a worker (for batched renewal), or a claim to make.
public struct LeaseRef: Hashable, Sendable {
    public var runID: RunID
    public var node: NodeID
    public var epoch: UInt64
    public init(runID: RunID, node: NodeID, epoch: UInt64) {
        self.runID = runID
        self.node = node
        self.epoch = epoch
    }
}

