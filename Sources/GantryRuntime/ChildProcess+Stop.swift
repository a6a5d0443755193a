#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Stopping a ``ChildProcess``: politely first, then for sure. A process that leads a process
/// group of its own (``ChildProcess/leadsProcessGroup``) takes its whole group with it, so
/// nothing it started itself (pool children, Erlang helpers) outlives it.
extension ChildProcess {
    /// SIGTERM, then SIGKILL after `grace` (to its whole group when it leads one), then up to
    /// 10 s to reap it; whatever is left in its group is killed too. Returns false if it had
    /// to be killed.
    @discardableResult
    public func stop(grace: Duration) async -> Bool {
        var clean = true
        if isRunning {
            kill(pid, SIGTERM)
            if !(await waitForExit(timeout: grace)) {
                clean = false
                killGroup()
                _ = await waitForExit(timeout: .seconds(10))
            }
        }
        sweepGroup()
        return clean
    }

    /// `kill -9` (what a crash does), then up to 10 s to reap it; its group goes too when it
    /// leads one.
    public func killAndReap() async {
        if isRunning { killGroup() }
        _ = await waitForExit(timeout: .seconds(10))
        sweepGroup()
    }

    /// SIGKILL to the process, and to its whole group when it leads one, without waiting.
    public func killGroup() {
        if leadsProcessGroup { kill(-pid, SIGKILL) }
        send(SIGKILL)
    }

    /// Kills whatever is left in the process's group when it leads one; the group is gone afterwards.
    public func sweepGroup() {
        if leadsProcessGroup, kill(-pid, 0) == 0 { kill(-pid, SIGKILL) }
    }
}
