import Foundation
import GantryCore
import GantryRuntime
import GantryStore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What a scenario's fault injector did.
struct InjectedFaults: Sendable {
    /// How many faults were injected (0 means the jobs finished before any).
    var count = 0
    /// What was done, for people: "9 × kill -9 of a worker, 1 worker paused 4.5 s".
    var description = "none"
    /// Scenario figures (takeover time, downtime, OOM kills…).
    var figures: [String: JSONValue] = [:]
    /// Messages that must be in the broker's dead-letter queue, with a reason.
    var expectedBrokerDeadLetters = 0
    /// Jobs that must end dead-lettered in the store, when the scenario knows.
    var expectedStoreDeadLetters: Int?
    /// Things that went wrong while injecting.
    var problems: [String] = []
}

extension ChaosRun {
    /// Runs the scenario's fault injector; it stops once ``finished`` is set (or the deadline)
    /// and leaves the cluster whole (killed processes restarted, servers up again).
    func injectFaults(deadline: ContinuousClock.Instant) async -> InjectedFaults {
        switch scenario {
        case .killWorkers: return await killWorkers()
        case .killCoordinator: return await killCoordinator()
        case .restartRabbitMQ: return await restartServer("RabbitMQ")
        case .restartRedis: return await restartServer("Redis")
        case .oom: return await watchOOM()
        case .flood: return await FloodInjector.flood(run: self)
        }
    }

    private var runningWorkers: [ChildProcess] {
        cluster.runningProcesses.filter { $0.name.hasPrefix("worker") }
    }

    /// Random `kill -9` of a worker every ``ChaosCommand/killPeriod`` (± 50 %), each replaced
    /// at once, up to ``ChaosCommand/kills``; and ``ChaosCommand/pauses`` workers stopped (SIGSTOP) for longer than their
    /// lease and resumed, so that their late commits meet the fence.
    private func killWorkers() async -> InjectedFaults {
        var faults = InjectedFaults()
        guard await waitForProgress(0.05) else { return faults }
        var kills = 0
        var pauses = 0
        var problems: [String] = []
        let pauseLength = Duration.milliseconds(4500)
        var pausing: Task<Void, Never>?
        while kills < command.kills && progress < 0.95 && !finished.load(ordering: .relaxed) {
            let candidates = runningWorkers
            if let victim = candidates.randomElement() {
                if pauses < command.pauses && kills == 1 && candidates.count > 1 {
                    // Pause the oldest other worker (it holds the most work) while this one is killed: its
                    // leases run out meanwhile, and what it commits when resumed must be refused.
                    if let sleeper = candidates.first(where: { $0.pid != victim.pid }) {
                        pauses += 1
                        pausing = Task {
                            kill(sleeper.pid, SIGSTOP)
                            try? await Task.sleep(for: pauseLength)
                            kill(sleeper.pid, SIGCONT)
                        }
                    }
                }
                await victim.killNow()
                kills += 1
                try? await Task.sleep(for: .milliseconds(300))
                do { try startWorker() } catch { problems.append("restarting a worker: \(error)") }
            }
            let pause = command.killPeriod * Double.random(in: 0.5...1.5)
            try? await Task.sleep(for: .milliseconds(Int64(pause * 1000)))
        }
        await pausing?.value
        faults.count = kills + pauses
        faults.description = "\(kills) × kill -9 of a random worker (restarted), \(pauses) worker(s) paused \(pauseLength.shortDescription) past their 3 s lease"
        faults.figures = ["worker_kills": .int(Int64(kills)), "worker_pauses": .int(Int64(pauses))]
        faults.problems = problems
        return faults
    }

    /// `kill -9` of the leader coordinator at a quarter of the run, and of one worker (whose
    /// leases only a coordinator can re-queue); the standby must take over within its lease.
    private func killCoordinator() async -> InjectedFaults {
        var faults = InjectedFaults()
        guard await waitForProgress(0.25) else { return faults }
        let observer = LeaderLease(store: cluster.store, holder: "chaos-observer")
        let coordinators = cluster.runningProcesses.filter { $0.name.hasPrefix("coordinator") }
        guard let holder = try? await observer.currentHolder(),
              let leader = coordinators.first(where: { holder.split(separator: ":").dropFirst(2).first == Substring(String($0.pid)) }) else {
            faults.problems.append("no running coordinator holds the leader lease")
            return faults
        }
        let clock = ContinuousClock()
        let killed = clock.now
        await leader.killNow()
        if let worker = runningWorkers.randomElement() {
            await worker.killNow()
            faults.figures["worker_kills"] = 1
        }
        var takeover: Duration?
        let deadline = killed + .seconds(30)
        while clock.now < deadline {
            if let current = try? await observer.currentHolder(), current != holder {
                takeover = clock.now - killed
                break
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        do {
            try startWorker()
            try cluster.startCoordinator()
        } catch {
            faults.problems.append("restarting: \(error)")
        }
        faults.count = 1
        if let takeover {
            faults.figures["takeover_ms"] = .double(BenchReport.rounded(takeover.seconds * 1000))
            faults.description = "kill -9 of the leader coordinator and of a worker; the standby took over in \(Int(takeover.seconds * 1000)) ms (leader lease 2 s)"
        } else {
            faults.description = "kill -9 of the leader coordinator and of a worker; no standby took over within 30 s"
            faults.problems.append("no standby coordinator took the leader lease within 30 s")
        }
        return faults
    }

    /// Kills the private server at a quarter of the run and starts it again a second later.
    private func restartServer(_ which: String) async -> InjectedFaults {
        var faults = InjectedFaults()
        guard await waitForProgress(0.25) else { return faults }
        let clock = ContinuousClock()
        let down = clock.now
        let at = Int(progress * 100)
        let how: String
        if let redis = servers.redis {
            how = "kill -9 of Redis (AOF, appendfsync everysec)"
            await redis.kill()
            try? await Task.sleep(for: .seconds(1))
            do { try await redis.start() } catch { faults.problems.append("restarting Redis: \(error)") }
        } else if let rabbit = servers.rabbitMQ {
            how = command.graceful ? "clean stop of the RabbitMQ node" : "kill -9 of the RabbitMQ node's Erlang VM"
            if command.graceful { try? await rabbit.stop() } else { await rabbit.kill() }
            try? await Task.sleep(for: .seconds(1))
            do { try await rabbit.start() } catch { faults.problems.append("restarting RabbitMQ: \(error)") }
        } else {
            faults.problems.append("no private \(which) server to restart")
            return faults
        }
        let downtime = clock.now - down
        faults.count = 1
        faults.figures["downtime_ms"] = .double(BenchReport.rounded(downtime.seconds * 1000))
        faults.description = "\(how), started again after \(String(format: "%.1f", downtime.seconds)) s down, at \(at) % of the jobs"
        return faults
    }

    /// The faults of `oom` are its `allocate` jobs; this reports what the kernel did to them.
    private func watchOOM() async -> InjectedFaults {
        var faults = InjectedFaults()
        while !finished.load(ordering: .relaxed) { try? await Task.sleep(for: .milliseconds(100)) }
        let kills = cgroup.value?.oomKills ?? 0
        faults.count = command.allocations
        faults.expectedStoreDeadLetters = command.allocations
        if let limit = cgroup.value {
            faults.figures["oom_kills"] = .int(Int64(kills))
            faults.figures["memory_limit"] = .string("\(limit.kind) \(command.memoryLimitMb) MiB for the pool children")
            faults.description = "\(command.allocations) jobs allocating 1 GiB in pool children limited to \(command.memoryLimitMb) MiB (\(limit.kind)): \(kills) OOM kills"
            if kills < command.allocations { faults.problems.append("only \(kills) OOM kills for \(command.allocations) allocating jobs") }
        } else {
            faults.figures["memory_limit"] = .string("RLIMIT_AS \(max(1024, command.memoryLimitMb)) MiB (no memory cgroup available)")
            faults.description = "\(command.allocations) jobs allocating 1 GiB in pool children with an address-space limit (no memory cgroup could be made)"
        }
        return faults
    }
}

/// A memory cgroup the pool children of the `oom` scenario join, so that the kernel's OOM
/// killer acts inside it: cgroup v1 (`memory.limit_in_bytes`) or v2 (`memory.max`).
final class MemoryCgroup: Sendable {
    let path: String
    /// "cgroup v1 memory.limit_in_bytes" or "cgroup v2 memory.max".
    let kind: String

    private init(path: String, kind: String) {
        self.path = path
        self.kind = kind
    }

    /// Makes the cgroup with its limit, or nil where this process may not (not root, no
    /// memory controller).
    static func make(name: String, limitBytes: Int) -> MemoryCgroup? {
        let fileManager = FileManager.default
        let v1 = "/sys/fs/cgroup/memory"
        if fileManager.fileExists(atPath: v1 + "/memory.limit_in_bytes") {
            let path = "\(v1)/\(name)"
            if (try? fileManager.createDirectory(atPath: path, withIntermediateDirectories: false)) != nil,
               (try? "\(limitBytes)".write(toFile: path + "/memory.limit_in_bytes", atomically: false, encoding: .utf8)) != nil {
                return MemoryCgroup(path: path, kind: "cgroup v1 memory.limit_in_bytes")
            }
            try? fileManager.removeItem(atPath: path)
        }
        let v2 = "/sys/fs/cgroup"
        if let controllers = try? String(contentsOfFile: v2 + "/cgroup.subtree_control", encoding: .utf8), controllers.contains("memory") {
            let path = "\(v2)/\(name)"
            if (try? fileManager.createDirectory(atPath: path, withIntermediateDirectories: false)) != nil,
               (try? "\(limitBytes)".write(toFile: path + "/memory.max", atomically: false, encoding: .utf8)) != nil {
                try? "0".write(toFile: path + "/memory.swap.max", atomically: false, encoding: .utf8)
                return MemoryCgroup(path: path, kind: "cgroup v2 memory.max")
            }
            rmdir(path)
        }
        return nil
    }

    /// OOM kills the kernel made in the cgroup.
    var oomKills: Int {
        for file in ["memory.oom_control", "memory.events"] {
            guard let text = try? String(contentsOfFile: "\(path)/\(file)", encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") where line.hasPrefix("oom_kill ") {
                return Int(line.split(separator: " ").last ?? "") ?? 0
            }
        }
        return 0
    }

    /// Removes the cgroup once its processes are gone (a cgroup directory is removed with rmdir).
    func remove() async {
        let deadline = ContinuousClock.now + .seconds(10)
        while rmdir(path) != 0 && errno != ENOENT && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}
