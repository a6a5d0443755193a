import GantryCore

extension PoolConfiguration {
    /// The `pool.*` settings; a key that is not set keeps the default listed on ``PoolConfiguration``.
    ///
    /// Keys: `pool.size` (0 for one child per online core), `pool.executable`, `pool.max_tasks_per_child`, `pool.rss_limit_bytes`
    /// (0 for no limit), `pool.respawn_backoff`, `pool.max_respawn_backoff`,
    /// `pool.termination_grace`, `pool.startup_timeout`, `pool.acquire_timeout`, `pool.max_frame_bytes`.
    public init(settings: GantrySettings) throws {
        self.init()
        func isSet(_ key: String) -> Bool { settings.values[key] != nil }
        if isSet("pool.size") {
            let count = try settings.int("pool.size")
            size = count == 0 ? PoolConfiguration.onlineCores : count
        }
        if isSet("pool.executable"), case let path = try settings.string("pool.executable"), !path.isEmpty { executablePath = path }
        if isSet("pool.max_tasks_per_child") { maxTasksPerChild = try settings.int("pool.max_tasks_per_child") }
        if isSet("pool.rss_limit_bytes") {
            let limit = try settings.int("pool.rss_limit_bytes")
            rssLimitBytes = limit == 0 ? nil : limit
        }
        if isSet("pool.respawn_backoff") { initialRespawnBackoff = try settings.duration("pool.respawn_backoff") }
        if isSet("pool.max_respawn_backoff") { maxRespawnBackoff = try settings.duration("pool.max_respawn_backoff") }
        if isSet("pool.termination_grace") { terminationGrace = try settings.duration("pool.termination_grace") }
        if isSet("pool.startup_timeout") { startupTimeout = try settings.duration("pool.startup_timeout") }
        if isSet("pool.acquire_timeout") { acquireTimeout = try settings.duration("pool.acquire_timeout") }
        if isSet("pool.max_frame_bytes") { maxFrameBytes = try settings.int("pool.max_frame_bytes") }
        if let problem = problems.first { throw GantryError(.configuration, problem) }
    }
}
