import GantryCore
import Metrics

/// What a coordinator records through swift-metrics (a no-op until the process bootstraps a
/// backend; `gantry-coordinator` bootstraps Prometheus). Names and meanings are listed on
/// `GantryMetrics` in GantryObservability.
enum CoordinatorMetrics {
    static func leader(_ isLeader: Bool) {
        Gauge(label: "gantry_coordinator_leader").record(isLeader ? 1 : 0)
    }

    static func leaderChanged() {
        Counter(label: "gantry_coordinator_leader_changes_total").increment()
    }

    static func swept() {
        Counter(label: "gantry_coordinator_sweeps_total").increment()
    }

    static func republished(_ count: Int) {
        guard count > 0 else { return }
        Counter(label: "gantry_coordinator_republished_total").increment(by: count)
    }

    static func runFinished(_ state: String) {
        Counter(label: "gantry_coordinator_runs_finished_total", dimensions: [("state", state)]).increment()
    }

    /// A broker operation failed (`publish`).
    static func brokerError(_ operation: String) {
        Counter(label: "gantry_broker_errors_total", dimensions: [("operation", operation)]).increment()
    }

    /// A Redis operation failed (`lease`, `sweep`).
    static func redisError(_ operation: String) {
        Counter(label: "gantry_redis_errors_total", dimensions: [("operation", operation)]).increment()
    }
}

/// Marks an error that came from publishing, so the loop counts it as a broker error.
struct PublishFailure: Error, CustomStringConvertible {
    var underlying: any Error
    var description: String { "\(underlying)" }
}
