import GantryRuntime

#if canImport(Glibc)
import Glibc
#endif

/// What `gantry dev` does with the processes it starts (``ChildProcess`` in a process group of
/// its own): the terminal's Ctrl-C reaches `gantry dev` only, which then stops everything in
/// order, and whatever a process starts itself (pool children, Erlang helpers) is swept with one
/// `kill(-group)` at the end.
extension ChildProcess {
    /// SIGTERM to the process, SIGKILL to its whole group after `grace`; then anything left in
    /// its group (children it started) is killed too. Returns false if it had to be killed.
    @discardableResult
    func stop(grace: Duration) async -> Bool {
        var clean = true
        if isRunning {
            kill(pid, SIGTERM)
            if !(await waitForExit(timeout: grace)) {
                clean = false
                kill(-pid, SIGKILL)
                _ = await waitForExit(timeout: .seconds(10))
            }
        }
        sweepGroup()
        return clean
    }

    /// SIGKILL to the process and its group at once (a second Ctrl-C).
    func killGroup() {
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
    }

    /// Kills whatever is left in the process's group; the group is gone afterwards.
    func sweepGroup() {
        if kill(-pid, 0) == 0 { kill(-pid, SIGKILL) }
    }
}
