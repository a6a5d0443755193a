import GantryCore

extension RedisClient {
    /// Runs `operation` again while it throws a retriable error (``GantryCore/GantryError``
    /// with `isRetriable`, such as `.connectionFailed` while Redis restarts), until it
    /// succeeds or `deadline` passes.
    ///
    /// Waits between attempts start at ``RedisConfiguration/reconnectBackoffInitial`` and
    /// double up to ``RedisConfiguration/reconnectBackoffMax``, never past the deadline.
    /// Only wrap operations that are safe to repeat: a command that failed with a broken
    /// connection may have run.
    /// - Returns: the first successful result.
    /// - Throws: the first non-retriable error, or the last retriable one once no attempt
    ///   fits before the deadline; `.cancelled` if the task is cancelled while waiting.
    public func retrying<T>(
        until deadline: ContinuousClock.Instant,
        isolation: isolated (any Actor)? = #isolation,
        _ operation: () async throws -> T
    ) async throws -> T {
        var delay = configuration.reconnectBackoffInitial
        while true {
            do {
                return try await operation()
            } catch let error as GantryError where error.isRetriable {
                let now = ContinuousClock.now
                guard now + delay < deadline else { throw error }
                do {
                    try await Task.sleep(until: now + delay, clock: .continuous)
                } catch {
                    throw GantryError(.cancelled, "retrying a Redis operation was cancelled", underlying: error)
                }
                delay = min(delay * 2, configuration.reconnectBackoffMax)
            }
        }
    }
}
