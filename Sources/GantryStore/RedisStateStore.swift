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
/// pays the script overhead once for many tasks. A batch's items are grouped by run, and the
/// scripts do a run's work once per group: one read and one write of the run's node records,
/// one timer-set update, one event-stream entry, one counter update.
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
        let batches = max(1, configuration.batchesInFlight)
        claims = Coalescer(maxBatch: 1024, maxConcurrentBatches: batches)
        commits = Coalescer(maxBatch: 1024, maxConcurrentBatches: batches)
    }

    /// Loads every script into Redis, so a script that does not compile is reported at start-up.
    public func loadScripts() async throws {
        for script in StoreScripts.all { try await client.load(script) }
    }

    // MARK: Keys

    func runKey(_ run: RunID) -> String { "\(configuration.namespace):{\(run.rawValue)}:run" }
    /// The hash of every node's fields: its record `<node>` and other fields `<node>.<field>`
    /// (see ``StoreScripts``).
    func nodesKey(_ run: RunID) -> String { "\(configuration.namespace):{\(run.rawValue)}:n" }
    /// The run's timer set (see ``StoreScripts``).
    func timersKey(_ run: RunID) -> String { "\(configuration.namespace):{\(run.rawValue)}:t" }
    /// The name of `field` of `node` in ``nodesKey(_:)``, for a field outside the node's record.
    func nodeField(_ node: String, _ field: String) -> String { "\(node).\(field)" }
    /// The fields of a node's record, in order (see ``StoreScripts``).
    static let recordFieldNames = ["s", "e", "a", "q", "l", "st", "fin", "sz", "out", "o"]

    /// The fields of a node record, by name; unset ones are left out. The owner comes last, so
    /// it may hold `|` itself.
    static func recordFields(_ record: String) -> [String: String] {
        var fields: [String: String] = [:]
        var rest = Substring(record)
        for (position, name) in recordFieldNames.enumerated() {
            let value: Substring
            if position == recordFieldNames.count - 1 {
                value = rest
            } else if let bar = rest.firstIndex(of: "|") {
                value = rest[..<bar]
                rest = rest[rest.index(after: bar)...]
            } else {
                return fields
            }
            if !value.isEmpty { fields[name] = String(value) }
        }
        return fields
    }
    /// The hash of the run's results: node → result bytes.
    func resultsKey(_ run: RunID) -> String { "\(configuration.namespace):{\(run.rawValue)}:r" }
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
        let spec = plan.specJSON
        var args: [RedisArgument] = [
            .integer(Int(now)), .string(plan.spec.name), .string(spec), .bytes(input),
            .integer(Int(configuration.retention.milliseconds)), .integer(Int(configuration.queueVisibility.milliseconds)),
            .integer(plan.spec.timeout.map { Int(now) + Int($0.milliseconds) } ?? 0), .integer(plan.spec.stages.count),
        ]
        args.reserveCapacity(args.count + plan.spec.stages.count * 8)
        for (position, stage) in plan.spec.stages.enumerated() {
            args.append(.string(stage.name.rawValue))
            args.append(.integer(stage.after.count))
            args.append(.string(plan.dependentNames[position]))
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
    ///
    /// With `take`, up to `take.limit` of the nodes this commit makes ready whose stage is in
    /// `take.stages` are leased to `owner` in the same script (``ReadyNode/leased``): the caller
    /// runs them next without claiming them.
    public func commit(
        _ run: RunID, _ node: NodeID, epoch: UInt64, owner: String, result: [UInt8], take: ReadyLease? = nil, now: UInt64? = nil
    ) async throws -> CommitOutcome {
        try checkResultSize(run, node, result)
        let request = CommitRequest(runID: run, node: node, epoch: epoch, result: result, take: take)
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

    /// Of `runs`, those a sweep must ``wake(_:limit:now:)``: one of its timers is due (an expired
    /// lease, a retry, a queued node's visibility deadline, the run deadline), or it is not running
    /// (ended but still indexed as active, or missing). Two reads per run, pipelined a few hundred
    /// runs at a time, instead of one script call per run: most active runs have nothing due.
    public func runsToWake(_ runs: [RunID], now: UInt64 = currentMilliseconds()) async throws -> [RunID] {
        var due: [RunID] = []
        var start = 0
        while start < runs.count {
            let chunk = runs[start..<min(runs.count, start + 500)]
            start = chunk.endIndex
            var batch = RedisPipeline(reservingCapacity: chunk.count * 2)
            for run in chunk {
                batch.append(["HGET", .string(runKey(run)), "s"])
                batch.append(["ZRANGE", .string(timersKey(run)), "0", "0", "WITHSCORES"])
            }
            let replies = try await client.pipeline(batch)
            for (offset, run) in chunk.enumerated() {
                let first = replies[offset * 2 + 1].array ?? []
                let earliest = first.count == 2 ? first[1].string.flatMap(Double.init) : nil
                if replies[offset * 2].string != "running" || earliest.map({ $0 <= Double(now) }) == true {
                    due.append(run)
                }
            }
        }
        return due
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
        /// Ready nodes to lease to the committing owner in the same script, if any.
        public var take: ReadyLease?
        public init(runID: RunID, node: NodeID, epoch: UInt64, result: [UInt8], take: ReadyLease? = nil) {
            self.runID = runID
            self.node = node
            self.epoch = epoch
            self.result = result
            self.take = take
        }
    }

    /// Which of the nodes a commit makes ready its owner leases at once: at most `limit`, of
    /// these stages, for `lease`.
    public struct ReadyLease: Sendable, Hashable {
        public var limit: Int
        public var stages: [StageName]
        public var lease: Duration
        public init(limit: Int, stages: [StageName], lease: Duration) {
            self.limit = limit
            self.stages = stages
            self.lease = lease
        }

        /// The script's text form: `limit|lease ms|stage,stage…`.
        var argument: String {
            "\(limit)|\(lease.milliseconds)|" + stages.map(\.rawValue).joined(separator: ",")
        }
    }

    /// Claims many nodes in one round trip.
    public func claim(_ requests: [ClaimRequest], owner: String, lease: Duration, now: UInt64 = currentMilliseconds()) async throws -> [ClaimOutcome] {
        guard !requests.isEmpty else { return [] }
        let order = Self.groupedByRun(requests.map(\.runID))
        var batch = RedisPipeline(reservingCapacity: 1, bytesPerCommand: 64 * requests.count)
        var chunks: [ArraySlice<Int>] = []
        var start = 0
        while start < order.count {
            let chunk = order[start..<min(start + Self.itemsPerScript, order.count)]
            var keys: [RedisArgument] = []
            var args: [RedisArgument] = [.string(owner), .integer(Int(now)), .integer(Int(lease.milliseconds))]
            args.reserveCapacity(3 + 3 * chunk.count)
            for group in Self.runGroups(chunk, { requests[$0].runID }) {
                keys.append(.string(runKey(requests[group.first!].runID)))
                args.append(.integer(group.count))
                for index in group { args.append(.string(requests[index].node.description)) }
                for index in group { args.append(.integer(Int(requests[index].epoch))) }
            }
            batch.evalsha(StoreScripts.claimBatch, keys: keys, args: args)
            chunks.append(chunk)
            start = chunk.endIndex
        }
        let replies = try await client.pipeline(batch)
        var outcomes = [ClaimOutcome](repeating: .gone, count: requests.count)
        for (reply, chunk) in zip(replies, chunks) {
            guard let items = reply.array, items.count == 3 * chunk.count else {
                throw scriptError("claim_batch", requests[chunk.first!].runID, requests[chunk.first!].node, reply)
            }
            var position = 0
            for index in chunk {
                outcomes[index] = try claimOutcome(requests[index].runID, requests[index].node, code: items[position], epoch: items[position + 1], attempt: items[position + 2])
                position += 3
            }
        }
        return outcomes
    }

    /// Commits many results in one round trip.
    public func commit(_ requests: [CommitRequest], owner: String, now: UInt64 = currentMilliseconds()) async throws -> [CommitOutcome] {
        guard !requests.isEmpty else { return [] }
        for request in requests { try checkResultSize(request.runID, request.node, request.result) }
        let order = Self.groupedByRun(requests.map(\.runID))
        var batch = RedisPipeline(reservingCapacity: 1, bytesPerCommand: requests.reduce(64 * requests.count) { $0 + $1.result.count })
        var chunks: [ArraySlice<Int>] = []
        var start = 0
        while start < order.count {
            var end = start
            var bytes = 0
            while end < order.count, end - start < Self.itemsPerScript, end == start || bytes + requests[order[end]].result.count <= Self.bytesPerScript {
                bytes += requests[order[end]].result.count
                end += 1
            }
            let chunk = order[start..<end]
            var keys: [RedisArgument] = []
            var args: [RedisArgument] = [
                .string(owner), .integer(Int(now)),
                .integer(Int(configuration.resultTTL.milliseconds)), .integer(Int(configuration.queueVisibility.milliseconds)),
            ]
            args.reserveCapacity(4 + 4 * chunk.count)
            for group in Self.runGroups(chunk, { requests[$0].runID }) {
                keys.append(.string(runKey(requests[group.first!].runID)))
                args.append(.integer(group.count))
                for index in group { args.append(.string(requests[index].node.description)) }
                for index in group { args.append(.integer(Int(requests[index].epoch))) }
                for index in group { args.append(.bytes(requests[index].result)) }
                for index in group { args.append(.string(requests[index].take.map(\.argument) ?? "")) }
            }
            batch.evalsha(StoreScripts.commitBatch, keys: keys, args: args)
            chunks.append(chunk)
            start = end
        }
        let replies = try await client.pipeline(batch)
        var outcomes = [CommitOutcome](repeating: .stale, count: requests.count)
        var finished: [(RunID, RunState)] = []
        for (reply, chunk) in zip(replies, chunks) {
            let first = requests[chunk.first!]
            guard let items = reply.array else { throw scriptError("commit_batch", first.runID, first.node, reply) }
            var position = 0
            for index in chunk {
                let request = requests[index]
                guard position + 2 < items.count, let code = items[position].int, let count = items[position + 2].int,
                      count >= 0, position + 3 + 3 * count <= items.count else {
                    throw scriptError("commit_batch", first.runID, first.node, reply)
                }
                switch code {
                case 1:
                    let state = items[position + 1].string.flatMap(RunState.init(rawValue:))
                    if let state { finished.append((request.runID, state)) }
                    outcomes[index] = .committed(ready: readyNodes(request.runID, items[(position + 3)..<(position + 3 + 3 * count)]), runState: state)
                case 0:
                    outcomes[index] = .stale
                default:
                    throw scriptError("commit_batch", request.runID, request.node, reply)
                }
                position += 3 + 3 * count
            }
            guard position == items.count else { throw scriptError("commit_batch", first.runID, first.node, reply) }
        }
        try await runsFinished(finished)
        return outcomes
    }

    /// The indices of `runs` with those of one run together: runs in the order they first
    /// appear, each run's items in their order. The batch scripts then do per-run work once
    /// per run rather than once per item.
    static func groupedByRun(_ runs: [RunID]) -> [Int] {
        guard let first = runs.first, runs.contains(where: { $0 != first }) else { return Array(runs.indices) }
        var bucketOf: [RunID: Int] = [:]
        var buckets: [[Int]] = []
        for (index, run) in runs.enumerated() {
            if let bucket = bucketOf[run] {
                buckets[bucket].append(index)
            } else {
                bucketOf[run] = buckets.count
                buckets.append([index])
            }
        }
        return buckets.flatMap { $0 }
    }

    /// The runs of consecutive items of one run in `chunk` (a slice of ``groupedByRun(_:)``).
    static func runGroups(_ chunk: ArraySlice<Int>, _ run: (Int) -> RunID) -> [ArraySlice<Int>] {
        var groups: [ArraySlice<Int>] = []
        var start = chunk.startIndex
        while start < chunk.endIndex {
            let current = run(chunk[start])
            var end = start + 1
            while end < chunk.endIndex, run(chunk[end]) == current { end += 1 }
            groups.append(chunk[start..<end])
            start = end
        }
        return groups
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
        let reply = try await client.send("HGET", resultsKey(run), node.description)
        return reply.isNull ? nil : reply.bytes
    }

    /// The results of several nodes of one run, in one round trip; nil where there is none.
    public func results(_ run: RunID, _ nodes: [NodeID]) async throws -> [[UInt8]?] {
        guard !nodes.isEmpty else { return [] }
        let reply = try await client.send(["HMGET", .string(resultsKey(run))] + nodes.map { .string($0.description) })
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

    /// Decodes one item of a `claim_batch` reply: its code, epoch and attempt.
    private func claimOutcome(_ run: RunID, _ node: NodeID, code: RedisValue, epoch: RedisValue, attempt: RedisValue) throws -> ClaimOutcome {
        let epoch = UInt64(epoch.int ?? 0)
        switch code.int {
        case 1: return .claimed(epoch: epoch, attempt: UInt32(attempt.int ?? 1))
        case 2: return .stale(currentEpoch: epoch)
        case 3: return .busy
        case 4: return .done
        case 5: return .cancelled
        case 6: return .gone
        case 7: return .early
        default: throw scriptError("claim_batch", run, node, .array([code, .integer(Int(epoch)), attempt]))
        }
    }

    /// Decodes the `node, epoch, attempt` triples a script returns after its status fields.
    private func readyNodes(_ run: RunID, _ items: [RedisValue], from start: Int) -> [ReadyNode] {
        start < items.count ? readyNodes(run, items[start...]) : []
    }

    /// Decodes `node, epoch, attempt` triples.
    private func readyNodes(_ run: RunID, _ items: ArraySlice<RedisValue>) -> [ReadyNode] {
        var nodes: [ReadyNode] = []
        nodes.reserveCapacity(items.count / 3)
        var index = items.startIndex
        while index + 2 < items.endIndex {
            if let text = items[index].string, let node = NodeID(text) {
                // A negative attempt: the node is leased to the committing owner (commit_batch's take).
                let attempt = items[index + 2].int ?? 1
                nodes.append(ReadyNode(
                    runID: run, node: node, epoch: UInt64(items[index + 1].int ?? 0), attempt: UInt32(clamping: abs(attempt)), leased: attempt < 0
                ))
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

