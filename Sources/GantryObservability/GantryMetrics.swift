import CoreMetrics
import GantryCore
import Metrics
import Prometheus
import Synchronization

/// The process-wide metrics backend: swift-metrics bootstrapped with a Prometheus registry.
///
/// The worker, its pool and the coordinator record through swift-metrics (they depend on the
/// `Metrics` API only); ``bootstrap()`` connects that API to a registry that `/metrics` renders
/// in the Prometheus text format. Every metric of a Gantry process:
///
/// | metric | kind | labels | what |
/// |---|---|---|---|
/// | `gantry_tasks_received_total` | counter | task, queue | deliveries taken from the broker (undecodable ones with task `unknown`) |
/// | `gantry_tasks_succeeded_total` | counter | task, queue | results committed |
/// | `gantry_tasks_failed_total` | counter | task, queue | attempts that failed (each is then retried or dead-lettered) |
/// | `gantry_tasks_retried_total` | counter | task, queue | failed attempts with a retry scheduled |
/// | `gantry_tasks_dead_lettered_total` | counter | task, queue | tasks failed for good, and messages moved to the dead-letter queue |
/// | `gantry_tasks_dropped_total` | counter | task, queue | duplicate or stale deliveries acknowledged without running |
/// | `gantry_tasks_handed_back_total` | counter | queue | deliveries given back to the broker (Redis unreachable, shutdown) |
/// | `gantry_stale_commits_refused_total` | counter | task, queue | results refused because the worker no longer held the epoch |
/// | `gantry_task_duration_seconds` | histogram | task, queue | an attempt from its start to its outcome: input, waiting for a pool child, the task |
/// | `gantry_task_queue_wait_seconds` | histogram | task, queue | publish → claim |
/// | `gantry_tasks_in_flight` | gauge | queue | deliveries being handled now |
/// | `gantry_lease_renewals_total` | counter | | leases renewed |
/// | `gantry_lease_expiries_total` | counter | | leases found lost or cancelled at renewal (the attempt is stopped) |
/// | `gantry_pool_children_alive` | gauge | | pool children running |
/// | `gantry_pool_children_spawned_total` | counter | | children started |
/// | `gantry_pool_children_respawned_total` | counter | | children replaced after they died on their own |
/// | `gantry_pool_children_recycled_total` | counter | | children replaced after their task or memory limit |
/// | `gantry_pool_children_killed_total` | counter | | children stopped for a timeout or a cancelled caller |
/// | `gantry_broker_errors_total` | counter | operation | broker operations that failed (publish, ack, nack, dead_letter, consume) |
/// | `gantry_redis_errors_total` | counter | operation | Redis operations that failed after retries |
/// | `gantry_coordinator_leader` | gauge | | 1 while this coordinator holds the leader lease |
/// | `gantry_coordinator_leader_changes_total` | counter | | times this coordinator gained or lost the lease |
/// | `gantry_coordinator_sweeps_total` | counter | | sweeps done as leader |
/// | `gantry_coordinator_republished_total` | counter | | tasks a sweep published (expired leases, due retries, lost messages) |
/// | `gantry_coordinator_runs_finished_total` | counter | state | runs a sweep saw end (deadline, poison task) |
/// | `gantry_process_info` | gauge | kind, id | 1, naming the process |
/// | `gantry_process_start_time_seconds` | gauge | | Unix time the process started |
public enum GantryMetrics {
    private static let registry = Mutex<PrometheusCollectorRegistry?>(nil)

    /// Histogram buckets for task durations and queue waits: 1 ms to 10 minutes.
    public static let durationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
        .seconds(60), .seconds(300), .seconds(600),
    ]

    /// Bootstraps swift-metrics with a Prometheus registry the first time it is called and
    /// returns that registry every time. swift-metrics can be bootstrapped once per process, so
    /// every caller (the server, tests running several services in one process) shares it.
    @discardableResult
    public static func bootstrap() -> PrometheusCollectorRegistry {
        registry.withLock { current in
            if let current { return current }
            let made = PrometheusCollectorRegistry()
            var factory = PrometheusMetricsFactory(registry: made)
            factory.defaultDurationHistogramBuckets = durationBuckets
            MetricsSystem.bootstrap(factory)
            current = made
            return made
        }
    }

    /// Names the process in `gantry_process_info` and records its start time.
    public static func describeProcess(kind: String, id: String) {
        Gauge(label: "gantry_process_info", dimensions: [("kind", kind), ("id", id)]).record(1)
        Gauge(label: "gantry_process_start_time_seconds").record(Double(currentMilliseconds()) / 1000)
    }
}
