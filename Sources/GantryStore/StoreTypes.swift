import GantryCore

/// Settings of the Redis state store; every time is a `Duration`.
public struct StoreConfiguration: Sendable, Hashable {
    /// Prefix of every key. Default `gantry`.
    public var namespace: String
    /// How long results are kept: a run's results expire together, this long after the run's
    /// last commit. Default 7 days.
    public var resultTTL: Duration
    /// How long a finished run's keys are kept. Default 7 days. Until a run finishes its keys
    /// carry four times this as a safety TTL.
    public var retention: Duration
    /// How long a queued node may wait for a worker before its message is published again, in
    /// case the first publish was lost. Duplicates are harmless (claims are fenced). Default 10 minutes.
    public var queueVisibility: Duration
    /// The largest result accepted, in bytes. Default 1 MiB.
    public var maxResultBytes: Int
    /// The largest run input accepted, in bytes. Default 1 MiB.
    public var maxInputBytes: Int
    /// How many times a node's lease may be lost (its worker died) before it is poison. Default 3.
    public var maxLostLeases: Int
    /// How long an idempotency key maps to its run. Default 24 hours.
    public var idempotencyTTL: Duration
    /// How many batches of claims, and of commits, may be in flight to Redis at once. A claim
    /// or commit that finds one free goes at once; the ones that come while all are busy go
    /// together in the next batch. Fewer means larger batches under load (each script call and
    /// round trip costs Redis far more than one more item in it), more means less waiting.
    /// Default 2.
    public var batchesInFlight: Int

    /// The defaults listed on each property.
    public init(
        namespace: String = "gantry",
        resultTTL: Duration = .seconds(7 * 86_400),
        retention: Duration = .seconds(7 * 86_400),
        queueVisibility: Duration = .seconds(600),
        maxResultBytes: Int = 1 << 20,
        maxInputBytes: Int = 1 << 20,
        maxLostLeases: Int = 3,
        idempotencyTTL: Duration = .seconds(86_400),
        batchesInFlight: Int = 2
    ) {
        self.namespace = namespace
        self.resultTTL = resultTTL
        self.retention = retention
        self.queueVisibility = queueVisibility
        self.maxResultBytes = maxResultBytes
        self.maxInputBytes = maxInputBytes
        self.maxLostLeases = maxLostLeases
        self.idempotencyTTL = idempotencyTTL
        self.batchesInFlight = batchesInFlight
    }
}

/// A node that is queued and must be published to the broker with this epoch and attempt.
public struct ReadyNode: Hashable, Sendable, CustomStringConvertible {
    public var runID: RunID
    public var node: NodeID
    public var epoch: UInt64
    public var attempt: UInt32
    /// Already leased to the owner of the commit that made it ready (the commit's `take`): that
    /// owner runs it with this epoch and attempt, and it is not published.
    public var leased: Bool

    public init(runID: RunID, node: NodeID, epoch: UInt64, attempt: UInt32, leased: Bool = false) {
        self.runID = runID
        self.node = node
        self.epoch = epoch
        self.attempt = attempt
        self.leased = leased
    }

    public var description: String { "\(runID)/\(node)@\(epoch)#\(attempt)" }
}

/// The state of a run.
public enum RunState: String, Sendable, Hashable, Codable, CaseIterable {
    case running, succeeded, failed, cancelled

    /// Whether the run has ended.
    public var isFinal: Bool { self != .running }
}

/// The state of a stage or node.
public enum NodeState: String, Sendable, Hashable, Codable, CaseIterable {
    case waiting, queued, running, retrying, succeeded, failed, skipped, cancelled

    /// Whether the node has ended.
    public var isFinal: Bool {
        switch self {
        case .succeeded, .failed, .skipped, .cancelled: return true
        default: return false
        }
    }
}

/// The result of ``RedisStateStore/createRun(_:input:idempotencyKey:)``.
public struct CreatedRun: Sendable {
    /// The run's identifier (the earlier run's, for a repeated idempotency key).
    public var runID: RunID
    /// False when the idempotency key named an existing run and nothing was created.
    public var created: Bool
    /// The root nodes, to publish.
    public var ready: [ReadyNode]
}

/// The answer to a claim.
public enum ClaimOutcome: Sendable, Hashable {
    /// The caller holds the node with this epoch and runs this attempt.
    case claimed(epoch: UInt64, attempt: UInt32)
    /// A newer attempt of the node exists; drop this message.
    case stale(currentEpoch: UInt64)
    /// Another worker holds the lease; drop this message. If that worker died, the coordinator
    /// re-queues the node with a new epoch once the lease expires.
    case busy
    /// The node already finished.
    case done
    /// The node or its run was cancelled.
    case cancelled
    /// The run does not exist (expired or never created).
    case gone
    /// The node is not queued yet (a message ahead of its state); drop it.
    case early
}

/// The answer to a lease renewal.
public enum RenewOutcome: String, Sendable, Hashable {
    /// The lease was extended.
    case renewed = "ok"
    /// The caller no longer holds the node: stop and drop the work.
    case lost
    /// The run was cancelled or failed: stop the work.
    case cancelled
}

/// The answer to a commit.
public enum CommitOutcome: Sendable, Hashable {
    /// The result is stored; `ready` nodes must be published; `runState` is set if this commit
    /// ended the run.
    case committed(ready: [ReadyNode], runState: RunState?)
    /// The caller did not hold the current epoch: the result was refused.
    case stale
}

/// The answer to a recorded failure.
public enum FailureOutcome: Sendable, Hashable {
    /// The node will be retried at this time (Unix milliseconds).
    case retryAt(milliseconds: UInt64)
    /// The node was dead-lettered; `ready` are nodes to publish (when the failure policy let the
    /// run continue); `runState` is set if this ended the run.
    case deadLettered(ready: [ReadyNode], runState: RunState?)
    /// The caller did not hold the node.
    case stale
}

/// What a ``RedisStateStore/wake(_:limit:)`` did.
public struct WakeOutcome: Sendable, Hashable {
    /// Nodes to publish (re-queued after a lost lease, due retries, lost messages).
    public var ready: [ReadyNode]
    /// Whether more timers were due than the limit allowed.
    public var more: Bool
    /// Set when the run has ended (now: deadline, poison task; or earlier).
    public var runState: RunState?
    /// True when the run does not exist (expired, or its creation never completed).
    public var gone: Bool

    public init(ready: [ReadyNode], more: Bool, runState: RunState?, gone: Bool = false) {
        self.ready = ready
        self.more = more
        self.runState = runState
        self.gone = gone
    }
}

/// A snapshot of one stage or node.
public struct NodeStatus: Sendable, Hashable, Codable {
    public var node: NodeID
    public var state: NodeState
    public var epoch: UInt64
    public var attempt: UInt32
    public var owner: String?
    public var leaseExpiresMilliseconds: UInt64?
    public var leasesLost: Int
    public var queuedMilliseconds: UInt64?
    public var startedMilliseconds: UInt64?
    public var finishedMilliseconds: UInt64?
    public var retryAtMilliseconds: UInt64?
    public var error: String?
    public var deadLettered: Bool
    public var resultBytes: Int?
    /// For a mapped stage: its element count and how many are unfinished.
    public var elements: Int?
    public var elementsLeft: Int?
    /// Dependencies not finished yet.
    public var pendingDependencies: Int
    /// For a skipped stage: the dependency that did not succeed.
    public var skippedBecause: String?
}

/// A snapshot of a run: its state and every stage (and mapped element).
public struct RunStatus: Sendable, Codable {
    public var runID: RunID
    public var name: String
    public var state: RunState
    public var reason: String?
    public var createdMilliseconds: UInt64
    public var finishedMilliseconds: UInt64?
    public var totalStages: Int
    public var doneStages: Int
    public var staleCommitsRefused: Int
    public var spec: PipelineSpec
    /// Stages in pipeline order.
    public var stages: [NodeStatus]
    /// Elements of mapped stages, by stage.
    public var elements: [StageName: [NodeStatus]]
}

/// One entry of a run's event stream.
public struct RunEvent: Sendable, Hashable, Codable {
    /// Where the event is in the run's event stream: the stream entry id, or `<entry id>.<index>`
    /// for an event that is not the last of a multi-event entry. Pass it back to read what
    /// follows.
    public var id: String
    /// `run`, `stage` or `node`.
    public var kind: String
    /// The node, or empty for run events.
    public var node: String
    /// When it happened, Unix milliseconds.
    public var milliseconds: UInt64
    /// The other fields (`s` state, `err`, `e` epoch, `o` owner, `why`, `reason`).
    public var fields: [String: String]
}
