import GantryCore
import GantryTasks
import GantryWorker

#if canImport(Glibc)
import Glibc
#endif

// A pool child for ProcessPoolTests: the built-in tasks plus ones that misbehave on purpose.
// Like a worker's main, it first checks for the hidden argument, before anything else runs.
var registry = BuiltinTasks.registry
registry.merge(PoolTestTasks.registry)
if ChildProcessMain.isRequested() {
    ChildProcessMain.run(registry: registry)
}

// `--as-parent`: a pool with the production defaults (re-spawn /proc/self/exe with the hidden
// argument) runs `pid` once and prints "<own pid> <child pid>", as a worker would.
guard CommandLine.arguments.dropFirst().first == "--as-parent" else {
    print("GantryPoolTestChild is started by the process-pool tests: '\(ChildProcessMain.argument)' or '--as-parent'")
    exit(64)
}
do {
    let pool = try ChildProcessPool(configuration: PoolConfiguration(size: 1))
    let output = try await withThrowingTaskGroup(of: [UInt8]?.self) { group in
        group.addTask {
            try await pool.run()
            return nil
        }
        let output = try await pool.run(task: "pid", input: [], context: TaskContext(runID: RunID.make(), node: NodeID(stage: "cpu")), timeout: .seconds(30))
        await pool.shutdown()
        return output
    }
    print("\(getpid()) \(String(decoding: output, as: UTF8.self))")
    exit(0)
} catch {
    print("error: \(error)")
    exit(1)
}
