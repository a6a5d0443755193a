import GantryCore
import GantryStore
import Logging
import ServiceLifecycle
import Synchronization

/// Settings of a coordinator; every time is a `Duration`.
public struct CoordinatorConfiguration: Sendable {
    /// How long the leader lease lasts without renewal: a standby takes over within this. Default 5 s.
    public var leaderLease: Duration
    /// How often the leader sweeps active runs for due timers (expired leases, retries, lost
    /// messages, deadlines). Default 100 ms.
    public var sweepInterval: Duration
    /// The most timers handled per run per sweep. Default 500.
    public var batchLimit: Int
    /// This coordinator's identity: `coordinator:host:pid:random` by default.
    public var coordinatorID: String

    /// The defaults listed on each property.
    public init(
        leaderLease: Duration = .seconds(5), sweepInterval: Duration = .milliseconds(100), batchLimit: Int = 500,
        coordinatorID: String = "coordinator:" + ProcessIdentity.make()
    ) {
        self.leaderLease = leaderLease
        self.sweepInterval = sweepInterval
        self.batchLimit = batchLimit
        self.coordinatorID = coordinatorID
    }
}

/// Keeps every run moving: the leader re-queues tasks whose lease expired (a lost worker),
/// publishes retries when they are due and queued tasks whose message may have been lost, and
/// fails runs past their deadline. Any number may run; one holds the leader lease in Redis and
/// the others stand by, taking over within one lease period.
public final class Coordinator: Service, Sendable {
    private let configuration: CoordinatorConfiguration
    private let store: RedisStateStore
    private let dispatcher: TaskDispatcher
    private let lease: LeaderLease
    private let logger: Logger
    private let leading = Atomic<Bool>(false)
    private let sweeps = Atomic<Int>(0)

    /// Creates a coordinator publishing through `dispatcher`.
    public init(configuration: CoordinatorConfiguration, store: RedisStateStore, dispatcher: TaskDispatcher, logger: Logger = Logger(label: "gantry.coordinator")) {
        self.configuration = configuration
        self.store = store
        self.dispatcher = dispatcher
        self.lease = LeaderLease(store: store, holder: configuration.coordinatorID)
        var logger = logger
        logger[metadataKey: "coordinator"] = .string(configuration.coordinatorID)
        self.logger = logger
    }

    /// Whether this coordinator currently holds the leader lease.
    public var isLeader: Bool { leading.load(ordering: .relaxed) }

    /// Sweeps completed as leader.
    public var sweepCount: Int { sweeps.load(ordering: .relaxed) }

    /// Runs until graceful shutdown or cancellation, resigning the lease on the way out.
    public func run() async throws {
        CoordinatorMetrics.leader(false)
        await cancelWhenGracefulShutdown {
            var lastRenewal = ContinuousClock.now - self.configuration.leaderLease
            while !Task.isCancelled {
                do {
                    // Renew at a third of the lease, so a slow sweep never lets it lapse.
                    if ContinuousClock.now - lastRenewal >= self.configuration.leaderLease / 3 {
                        let leader: Bool
                        do {
                            leader = try await self.lease.acquireOrExtend(ttl: self.configuration.leaderLease)
                        } catch {
                            CoordinatorMetrics.redisError("lease")
                            throw error
                        }
                        lastRenewal = ContinuousClock.now
                        if leader != self.leading.load(ordering: .relaxed) {
                            self.logger.info(leader ? "became leader" : "lost leadership")
                            self.leading.store(leader, ordering: .relaxed)
                            CoordinatorMetrics.leader(leader)
                            CoordinatorMetrics.leaderChanged()
                        }
                    }
                    if self.leading.load(ordering: .relaxed) {
                        do {
                            try await self.sweepRuns(now: currentMilliseconds())
                        } catch let failure as PublishFailure {
                            CoordinatorMetrics.brokerError("publish")
                            throw failure.underlying
                        } catch {
                            CoordinatorMetrics.redisError("sweep")
                            throw error
                        }
                        self.sweeps.add(1, ordering: .relaxed)
                        CoordinatorMetrics.swept()
                    }
                } catch {
                    self.logger.warning("coordinator loop error (will retry): \(error)")
                }
                try? await Task.sleep(for: self.configuration.sweepInterval)
            }
        }
        if leading.load(ordering: .relaxed) {
            try? await lease.resign()
            leading.store(false, ordering: .relaxed)
            CoordinatorMetrics.leader(false)
            logger.info("resigned leadership")
        }
    }

    /// One pass over the active runs that have a due timer or have ended (``RedisStateStore/runsToWake(_:now:)``):
    /// handle their due timers and publish what they released.
    public func sweep(now: UInt64 = currentMilliseconds()) async throws {
        do {
            try await sweepRuns(now: now)
        } catch let failure as PublishFailure {
            throw failure.underlying
        }
    }

    /// ``sweep(now:)`` with publishing errors wrapped in ``PublishFailure``, to count them apart.
    private func sweepRuns(now: UInt64) async throws {
        let active = try await store.activeRuns(limit: 10_000)
        for run in try await store.runsToWake(active, now: now) {
            var more = true
            var outcome = WakeOutcome(ready: [], more: false, runState: nil, gone: false)
            while more {
                do {
                    outcome = try await store.wake(run, limit: configuration.batchLimit, now: now)
                } catch let error as GantryError where error.code == .commandFailed || error.code == .protocolError {
                    logger.error("cannot wake run \(run): \(error)")
                    break
                }
                if !outcome.ready.isEmpty {
                    do {
                        try await dispatcher.publish(outcome.ready)
                    } catch {
                        throw PublishFailure(underlying: error)
                    }
                    CoordinatorMetrics.republished(outcome.ready.count)
                    logger.debug("re-published \(outcome.ready.count) tasks of run \(run)")
                }
                if let state = outcome.runState {
                    CoordinatorMetrics.runFinished(state.rawValue)
                    logger.info("run \(run) finished: \(state.rawValue)", metadata: ["run": .string(run.rawValue), "trace": .string(TraceContext.traceID(of: run))])
                }
                more = outcome.more
            }
            if outcome.runState == nil && outcome.gone { try await store.forgetMissingRun(run, now: now) }
        }
    }
}


extension CoordinatorConfiguration {
    /// The `coordinator.*` settings.
    public init(settings: GantrySettings) throws {
        self.init(leaderLease: try settings.duration("coordinator.leader_lease"), sweepInterval: try settings.duration("coordinator.sweep_interval"))
    }
}
