import ArgumentParser
import Foundation
import GantryCore
import GantryRuntime

/// Resident memory of the real `gantry-worker` and `gantry-coordinator` processes: idle after
/// start-up, and at their peak during a throughput run (`VmRSS` and `VmHWM` of
/// `/proc/<pid>/status`).
struct MemoryBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory",
        abstract: "RSS of a real gantry-worker and gantry-coordinator idle, and their peak RSS during a no-op throughput run.",
        discussion: """
            Idle is read once the worker heartbeats, its pool children are up and --settle \
            seconds passed. The worker's figure is its own process; its pool children are \
            reported apart. Target: worker RSS idle ≤ 30 MB.
            """
    )

    @OptionGroup var cluster: ClusterOptions

    @Option(help: "No-op tasks of the load phase.")
    var tasks = 20_000

    @Option(help: "Concurrent submitters in the load phase.")
    var submitters = 64

    @Option(help: "Seconds to wait after start-up before reading idle memory.")
    var settle = 2.0

    func validate() throws {
        guard cluster.workerMode == .process else {
            throw ValidationError("memory measures the real gantry-worker and gantry-coordinator processes: use --worker-mode process")
        }
    }

    func run() async throws {
        let bench = try await cluster.startCluster(workers: 1)
        do {
            guard let worker = bench.runningProcesses.first(where: { $0.name.hasPrefix("worker") }),
                  let coordinator = bench.runningProcesses.first(where: { $0.name.hasPrefix("coordinator") }) else {
                throw GantryError(.commandFailed, "the worker or coordinator process is not running")
            }
            // The pool starts its children in the background: wait for all of them.
            let deadline = ContinuousClock.now + .seconds(30)
            while worker.childPIDs.count < cluster.resolvedPoolSize, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            try await Task.sleep(for: .milliseconds(Int64(settle * 1000)))
            guard let workerIdle = worker.memory, let coordinatorIdle = coordinator.memory else {
                throw GantryError(.commandFailed, "cannot read /proc/<pid>/status of the worker or coordinator")
            }
            let children = worker.childPIDs.compactMap(ChildProcess.memory(of:))
            let idleBreakdown = MemoryBreakdown(pid: worker.pid)
            let plan = try BenchCluster.singleTaskPlan("noop")
            try await ThroughputRun.warmUp(cluster: bench, plan: plan, count: 500)
            let load = try await ThroughputRun.measure(cluster: bench, tasks: tasks, submitters: submitters, plan: plan)
            guard let workerAfter = worker.memory, let coordinatorAfter = coordinator.memory else {
                throw GantryError(.commandFailed, "the worker or coordinator exited during the load phase")
            }
            await bench.stop()
            await bench.cleanUp()

            func mb(_ bytes: Int) -> Double { Double(bytes) / 1_048_576 }
            var report = BenchReport(scenario: "memory")
            report.conditions = report.conditions.merging(cluster.conditions(workers: 1, n: tasks)) { $1 }
            report.conditions["task"] = .string("noop")
            report.figure("worker_idle_rss_mb", mb(workerIdle.rss), headline: true)
            if let idleBreakdown {
                // What the RSS is made of: pages of mapped files (the binary, the Swift runtime and
                // Foundation, shared with every process that maps them) and the process's own.
                report.figure("worker_idle_rss_file_mb", mb(idleBreakdown.rssFile))
                report.figure("worker_idle_rss_anon_mb", mb(idleBreakdown.rssAnon))
                report.figure("worker_idle_pss_mb", mb(idleBreakdown.pss))
                report.figure("worker_idle_private_mb", mb(idleBreakdown.privateBytes))
            }
            report.figure("worker_peak_rss_mb", mb(workerAfter.peak), headline: true)
            report.figure("worker_rss_after_load_mb", mb(workerAfter.rss))
            report.figure("coordinator_idle_rss_mb", mb(coordinatorIdle.rss))
            report.figure("coordinator_peak_rss_mb", mb(coordinatorAfter.peak), headline: true)
            report.figure("pool_children", children.count)
            report.figure("pool_child_idle_rss_mb", children.isEmpty ? 0 : mb(children.map(\.rss).reduce(0, +) / children.count))
            report.figure("load_completion_per_s", load.completionPerSecond)
            report.target("worker_idle_rss_mb", atMost: 30)
            report.print(String(
                format: "memory over %@: gantry-worker RSS idle %.1f MB (%@), peak %.1f MB during %d no-op tasks at %.0f/s, %.1f MB after | gantry-coordinator idle %.1f MB, peak %.1f MB | %d pool children, %.1f MB each idle",
                cluster.broker, mb(workerIdle.rss), report.verdict("worker_idle_rss_mb"), mb(workerAfter.peak), tasks, load.completionPerSecond,
                mb(workerAfter.rss), mb(coordinatorIdle.rss), mb(coordinatorAfter.peak), children.count,
                children.isEmpty ? 0 : mb(children.map(\.rss).reduce(0, +) / children.count)
            ))
            if let idleBreakdown {
                print(String(
                    format: "  worker idle RSS = %.1f MB of mapped files (binary, Swift runtime, Foundation) + %.1f MB anonymous; PSS %.1f MB, private %.1f MB",
                    mb(idleBreakdown.rssFile), mb(idleBreakdown.rssAnon), mb(idleBreakdown.pss), mb(idleBreakdown.privateBytes)
                ))
            }
        } catch {
            await bench.stop()
            await bench.cleanUp(keepFiles: true)
            throw error
        }
    }
}

/// A process's resident memory by kind, from `/proc/<pid>/status` and `/proc/<pid>/smaps_rollup`.
struct MemoryBreakdown {
    /// Resident pages of mapped files (`RssFile`).
    var rssFile: Int
    /// Resident anonymous pages: heap, stacks (`RssAnon`).
    var rssAnon: Int
    /// Proportional set size: each shared page divided among the processes that map it.
    var pss: Int
    /// Pages mapped by this process alone (`Private_Clean` + `Private_Dirty`).
    var privateBytes: Int

    init?(pid: Int32) {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let rollup = try? String(contentsOfFile: "/proc/\(pid)/smaps_rollup", encoding: .utf8) else { return nil }
        func bytes(_ name: String, in text: String) -> Int? { ChildProcess.kibibytes(name, in: text).map { $0 * 1024 } }
        guard let file = bytes("RssFile:", in: status), let anon = bytes("RssAnon:", in: status),
              let pss = bytes("Pss:", in: rollup), let clean = bytes("Private_Clean:", in: rollup),
              let dirty = bytes("Private_Dirty:", in: rollup) else { return nil }
        self.rssFile = file
        self.rssAnon = anon
        self.pss = pss
        self.privateBytes = clean + dirty
    }
}
