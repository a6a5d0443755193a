import Foundation
import GantryCore

/// Settings of a worker; every time is a `Duration`.
public struct WorkerConfiguration: Sendable {
    /// The queues to consume. Default `["default"]`.
    public var queues: [String]
    /// The most tasks in flight at once; also the broker credit (prefetch). Default 64.
    public var concurrency: Int
    /// How long a claimed task's lease lasts without renewal. Default 30 s.
    public var lease: Duration
    /// How often held leases are renewed (well inside ``lease``). Default 10 s.
    public var renewInterval: Duration
    /// How often the worker's presence is written to Redis. Default 5 s.
    public var heartbeatInterval: Duration
    /// On shutdown, how long in-flight tasks may run before they are handed back. Default 20 s.
    public var drainTimeout: Duration
    /// The largest task payload accepted, in bytes; larger messages are dead-lettered. Default 16 MiB.
    public var maxPayloadBytes: Int
    /// Keys for verifying signed envelopes by key id; when set, unsigned or tampered messages
    /// are dead-lettered. Default none (signatures not required).
    public var signingKeys: [String: [UInt8]]?
    /// How long Redis may be unreachable before the worker gives a task back to the broker. Default 30 s.
    public var storeRetryDeadline: Duration
    /// This worker's identity in leases and status: `host:pid:random` by default.
    public var workerID: String
    /// Extra fields for every heartbeat (e.g. `metrics`: where the worker serves `/metrics`),
    /// asked each time one is written. Default none.
    public var statusFields: @Sendable () -> [String: String] = { [:] }
    /// The most tasks of one task type (by name) in flight at once, on top of ``concurrency``;
    /// for both in-process and pool stages. A task waiting for its type's slot holds its lease
    /// (renewed) and one of the worker's slots. Default none.
    public var taskLimits: [String: Int] = [:]
    /// Whether a stage this worker's own commit made ready runs here at once, without a trip
    /// through the broker, when its queue is one this worker consumes, its task is registered
    /// here and a slot is free (in-flight tasks below ``concurrency``). The node is queued in
    /// Redis before that, so if this worker dies first the coordinator publishes it after the
    /// queue visibility period, as for any lost message. Default true.
    public var localContinuation = true

    /// The defaults listed on each property.
    public init(
        queues: [String] = ["default"],
        concurrency: Int = 64,
        lease: Duration = .seconds(30),
        renewInterval: Duration = .seconds(10),
        heartbeatInterval: Duration = .seconds(5),
        drainTimeout: Duration = .seconds(20),
        maxPayloadBytes: Int = 16 << 20,
        signingKeys: [String: [UInt8]]? = nil,
        storeRetryDeadline: Duration = .seconds(30),
        workerID: String = ProcessIdentity.make()
    ) {
        self.queues = queues
        self.concurrency = concurrency
        self.lease = lease
        self.renewInterval = renewInterval
        self.heartbeatInterval = heartbeatInterval
        self.drainTimeout = drainTimeout
        self.maxPayloadBytes = maxPayloadBytes
        self.signingKeys = signingKeys
        self.storeRetryDeadline = storeRetryDeadline
        self.workerID = workerID
    }

    /// Problems with the values, each naming the setting; empty when valid.
    public var problems: [String] {
        var result: [String] = []
        if queues.isEmpty { result.append("worker.queues is empty: name at least one queue") }
        if concurrency < 1 { result.append("worker.concurrency must be at least 1, got \(concurrency)") }
        for (task, limit) in taskLimits.sorted(by: { $0.key < $1.key }) where limit < 1 {
            result.append("worker.task_limits: the limit of task '\(task)' must be at least 1, got \(limit)")
        }
        if renewInterval >= lease { result.append("worker.renew_interval (\(renewInterval.shortDescription)) must be shorter than worker.lease (\(lease.shortDescription))") }
        return result
    }
}

extension WorkerConfiguration {
    /// The `worker.*` settings (signing keys are added by the caller).
    public init(settings: GantrySettings) throws {
        self.init(
            queues: try settings.strings("worker.queues"),
            concurrency: try settings.int("worker.concurrency"),
            lease: try settings.duration("worker.lease"),
            renewInterval: try settings.duration("worker.renew_interval"),
            drainTimeout: try settings.duration("worker.drain_timeout"),
            maxPayloadBytes: try settings.int("worker.max_payload_bytes")
        )
        taskLimits = try Self.taskLimits(settings)
        localContinuation = try settings.bool("worker.local_continuation")
    }

    /// `worker.task_limits`: a mapping of task names to limits, or from the environment a text
    /// like `http=16,exec=2`.
    static func taskLimits(_ settings: GantrySettings) throws -> [String: Int] {
        let problem = GantryError(
            .configuration,
            "setting 'worker.task_limits' (from \(settings.source(of: "worker.task_limits"))) must map task names to limits, like { http: 16 } in the file or http=16,exec=2 in GANTRY_WORKER_TASK_LIMITS"
        )
        switch settings.values["worker.task_limits"] {
        case nil, .null?:
            return [:]
        case .object(let object)?:
            return try object.mapValues { value in
                if let number = value.intValue { return Int(number) }
                if let text = value.stringValue, let number = Int(text) { return number }
                throw problem
            }
        case .string(let text)?:
            var limits: [String: Int] = [:]
            for pair in text.split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2, !parts[0].isEmpty, let limit = Int(parts[1]) else { throw problem }
                limits[parts[0]] = limit
            }
            return limits
        default:
            throw problem
        }
    }
}
