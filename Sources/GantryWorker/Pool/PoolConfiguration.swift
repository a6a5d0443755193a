import GantryCore

#if canImport(Glibc)
import Glibc
#endif

/// Settings of a ``ChildProcessPool``; every time is a `Duration`.
///
/// | key (suggested `pool.` settings) | property | default |
/// |---|---|---|
/// | `pool.size` | ``size`` | the number of online cores |
/// | `pool.executable` | ``executablePath`` | `/proc/self/exe` (the worker's own binary) |
/// | `pool.max_tasks_per_child` | ``maxTasksPerChild`` | 1000 |
/// | `pool.rss_limit_bytes` | ``rssLimitBytes`` | 1 GiB |
/// | `pool.respawn_backoff` | ``initialRespawnBackoff`` | 100 ms |
/// | `pool.max_respawn_backoff` | ``maxRespawnBackoff`` | 5 s |
/// | `pool.termination_grace` | ``terminationGrace`` | 2 s |
/// | `pool.startup_timeout` | ``startupTimeout`` | 10 s |
/// | `pool.acquire_timeout` | ``acquireTimeout`` | 5 min |
/// | `pool.max_frame_bytes` | ``maxFrameBytes`` | 256 MiB |
public struct PoolConfiguration: Sendable {
    /// How many children run at once, so how many CPU tasks run in parallel. Default: the
    /// number of online cores.
    public var size: Int
    /// The program each child runs. Default `/proc/self/exe`: the worker re-spawns its own binary,
    /// which keeps working even if the file on disk was replaced by a deploy.
    public var executablePath: String
    /// The arguments a child gets. Default `[ChildProcessMain.argument]`, the hidden argument a
    /// worker's `main` checks first.
    public var arguments: [String]
    /// A child is replaced after running this many tasks, so that slow leaks cannot build up. Default 1000.
    public var maxTasksPerChild: Int
    /// A child whose resident memory is above this many bytes after a task is replaced;
    /// `nil` for no limit. Default 1 GiB.
    public var rssLimitBytes: Int?
    /// The wait before replacing a child that crashed; it doubles for each crash in a row, up to
    /// ``maxRespawnBackoff``, and starts over once a child completes a task. Default 100 ms.
    public var initialRespawnBackoff: Duration
    /// The longest wait before replacing a crashed child. Default 5 s.
    public var maxRespawnBackoff: Duration
    /// How long a child may take to exit after SIGTERM before it gets SIGKILL. Default 2 s.
    public var terminationGrace: Duration
    /// How long a new child may take to announce itself before it is considered broken. Default 10 s.
    public var startupTimeout: Duration
    /// The longest a call waits for a free child before failing with a retriable `.timeout`. Default 5 min.
    public var acquireTimeout: Duration
    /// The largest frame (task request or result) either side may send. Default 256 MiB.
    public var maxFrameBytes: Int

    /// The defaults listed on each property.
    public init(
        size: Int = PoolConfiguration.onlineCores,
        executablePath: String = "/proc/self/exe",
        arguments: [String] = [ChildProcessMain.argument],
        maxTasksPerChild: Int = 1000,
        rssLimitBytes: Int? = 1 << 30,
        initialRespawnBackoff: Duration = .milliseconds(100),
        maxRespawnBackoff: Duration = .seconds(5),
        terminationGrace: Duration = .seconds(2),
        startupTimeout: Duration = .seconds(10),
        acquireTimeout: Duration = .seconds(300),
        maxFrameBytes: Int = 256 << 20
    ) {
        self.size = size
        self.executablePath = executablePath
        self.arguments = arguments
        self.maxTasksPerChild = maxTasksPerChild
        self.rssLimitBytes = rssLimitBytes
        self.initialRespawnBackoff = initialRespawnBackoff
        self.maxRespawnBackoff = maxRespawnBackoff
        self.terminationGrace = terminationGrace
        self.startupTimeout = startupTimeout
        self.acquireTimeout = acquireTimeout
        self.maxFrameBytes = maxFrameBytes
    }

    /// The number of online cores, at least 1.
    public static var onlineCores: Int {
        max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    }

    /// Problems with the values, each naming the setting; empty when valid.
    public var problems: [String] {
        var result: [String] = []
        if size < 1 { result.append("pool.size must be at least 1, got \(size)") }
        if executablePath.isEmpty { result.append("pool.executable is empty: leave it at /proc/self/exe or name the worker binary") }
        if maxTasksPerChild < 1 { result.append("pool.max_tasks_per_child must be at least 1, got \(maxTasksPerChild)") }
        if let rssLimitBytes, rssLimitBytes < 1 << 20 { result.append("pool.rss_limit_bytes must be at least 1 MiB, got \(rssLimitBytes)") }
        if initialRespawnBackoff <= .zero { result.append("pool.respawn_backoff must be positive, got \(initialRespawnBackoff.shortDescription)") }
        if maxRespawnBackoff < initialRespawnBackoff {
            result.append("pool.max_respawn_backoff (\(maxRespawnBackoff.shortDescription)) must be at least pool.respawn_backoff (\(initialRespawnBackoff.shortDescription))")
        }
        if terminationGrace <= .zero { result.append("pool.termination_grace must be positive, got \(terminationGrace.shortDescription)") }
        if startupTimeout <= .zero { result.append("pool.startup_timeout must be positive, got \(startupTimeout.shortDescription)") }
        if acquireTimeout <= .zero { result.append("pool.acquire_timeout must be positive, got \(acquireTimeout.shortDescription)") }
        if maxFrameBytes < 1 << 16 || maxFrameBytes > Int(UInt32.max) {
            result.append("pool.max_frame_bytes must be between 64 KiB and 4 GiB, got \(maxFrameBytes)")
        }
        return result
    }
}
