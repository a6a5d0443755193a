import GantryCore
import Metrics
import Synchronization

/// What a worker records through swift-metrics (a no-op until the process bootstraps a backend;
/// `gantry-worker` bootstraps Prometheus). Task metrics carry the labels `task` and `queue`;
/// names and meanings are listed on `GantryMetrics` in GantryObservability.
enum WorkerMetrics {
    private static func labels(_ task: String, _ queue: String) -> [(String, String)] { [("task", task), ("queue", queue)] }

    /// The metrics every attempt records, made once per task type and queue: making one asks the
    /// backend's registry (a lock, name checks, label hashing) each time.
    private struct TaskMetrics {
        let received: Counter
        let succeeded: Counter
        let duration: Metrics.Timer
        let queueWait: Metrics.Timer

        init(_ task: String, _ queue: String) {
            received = Counter(label: "gantry_tasks_received_total", dimensions: labels(task, queue))
            succeeded = Counter(label: "gantry_tasks_succeeded_total", dimensions: labels(task, queue))
            duration = Metrics.Timer(label: "gantry_task_duration_seconds", dimensions: labels(task, queue))
            queueWait = Metrics.Timer(label: "gantry_task_queue_wait_seconds", dimensions: labels(task, queue))
        }
    }

    private struct TaskKey: Hashable {
        var task: String
        var queue: String
    }

    private static let taskMetrics = Mutex<[TaskKey: TaskMetrics]>([:])
    private static let inFlightMeters = Mutex<[String: Meter]>([:])

    private static func metrics(_ task: String, _ queue: String) -> TaskMetrics {
        let key = TaskKey(task: task, queue: queue)
        if let known = taskMetrics.withLock({ $0[key] }) { return known }
        let made = TaskMetrics(task, queue)
        return taskMetrics.withLock { cache in
            if let known = cache[key] { return known }
            cache[key] = made
            return made
        }
    }

    /// The task label of a message that could not be decoded.
    static let unknownTask = "unknown"

    static func received(_ task: String, _ queue: String) {
        metrics(task, queue).received.increment()
    }

    static func succeeded(_ task: String, _ queue: String) {
        metrics(task, queue).succeeded.increment()
    }

    /// An attempt failed; `retried` when a retry is scheduled, otherwise the task is dead-lettered.
    static func failed(_ task: String, _ queue: String, retried: Bool) {
        Counter(label: "gantry_tasks_failed_total", dimensions: labels(task, queue)).increment()
        if retried {
            Counter(label: "gantry_tasks_retried_total", dimensions: labels(task, queue)).increment()
        } else {
            deadLettered(task, queue)
        }
    }

    static func deadLettered(_ task: String, _ queue: String) {
        Counter(label: "gantry_tasks_dead_lettered_total", dimensions: labels(task, queue)).increment()
    }

    static func dropped(_ task: String, _ queue: String) {
        Counter(label: "gantry_tasks_dropped_total", dimensions: labels(task, queue)).increment()
    }

    static func handedBack(_ queue: String) {
        Counter(label: "gantry_tasks_handed_back_total", dimensions: [("queue", queue)]).increment()
    }

    static func staleCommitRefused(_ task: String, _ queue: String) {
        Counter(label: "gantry_stale_commits_refused_total", dimensions: labels(task, queue)).increment()
    }

    /// An attempt from its start to its outcome: input assembly, waiting for a pool child or a
    /// task-type slot, and the task itself; not the commit.
    static func duration(_ task: String, _ queue: String, since start: ContinuousClock.Instant) {
        metrics(task, queue).duration.record(duration: ContinuousClock.now - start)
    }

    /// Publish → claim, from the envelope's enqueue time (wall clocks of two machines: a
    /// negative difference from clock skew is recorded as zero).
    static func queueWait(_ task: String, _ queue: String, enqueuedMilliseconds: UInt64) {
        let now = currentMilliseconds()
        let waited = now > enqueuedMilliseconds ? now - enqueuedMilliseconds : 0
        metrics(task, queue).queueWait.recordMilliseconds(Int64(waited))
    }

    static func inFlight(_ queue: String, _ change: Int) {
        let meter = inFlightMeters.withLock { meters in
            if let known = meters[queue] { return known }
            let made = Meter(label: "gantry_tasks_in_flight", dimensions: [("queue", queue)])
            meters[queue] = made
            return made
        }
        if change >= 0 { meter.increment(by: Double(change)) } else { meter.decrement(by: Double(-change)) }
    }

    static func leasesRenewed(_ count: Int) {
        guard count > 0 else { return }
        Counter(label: "gantry_lease_renewals_total").increment(by: count)
    }

    static func leaseExpired() {
        Counter(label: "gantry_lease_expiries_total").increment()
    }

    /// A broker operation failed: `publish`, `settle` (ack, nack or dead-letter), `consume`.
    static func brokerError(_ operation: String) {
        Counter(label: "gantry_broker_errors_total", dimensions: [("operation", operation)]).increment()
    }

    /// A Redis operation failed after its retries.
    static func redisError(_ operation: String) {
        Counter(label: "gantry_redis_errors_total", dimensions: [("operation", operation)]).increment()
    }
}

/// What a ``ChildProcessPool`` records through swift-metrics.
enum PoolMetrics {
    static func childStarted() {
        Counter(label: "gantry_pool_children_spawned_total").increment()
    }

    static func alive(_ count: Int) {
        Gauge(label: "gantry_pool_children_alive").record(count)
    }

    static func respawned() {
        Counter(label: "gantry_pool_children_respawned_total").increment()
    }

    static func recycled() {
        Counter(label: "gantry_pool_children_recycled_total").increment()
    }

    static func killed() {
        Counter(label: "gantry_pool_children_killed_total").increment()
    }
}
