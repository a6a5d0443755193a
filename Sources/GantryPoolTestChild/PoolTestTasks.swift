import GantryCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Tasks that let the process-pool tests see where a task ran and make children misbehave.
///
/// | task | does |
/// |---|---|
/// | `pid` | returns the child's pid as text |
/// | `crash` | SIGKILLs its own process |
/// | `hang` | never returns; `args.ignore_term: 1` also ignores SIGTERM |
/// | `spin` | busy-loops `args.ms` (default 300) and returns `{"pid","start","end"}` in monotonic ns |
/// | `grow` | allocates and touches `args.bytes` and keeps them, then returns the pid |
/// | `fail` | throws a retriable `.taskFailed` with `args.message` |
/// | `bloat` | returns `args.bytes` bytes |
/// | `noisy` | prints to stdout and stderr, then returns its input |
/// | `context` | returns its context as JSON |
/// | `wait-first` | on attempt 1 sleeps `args.ms` (default 60000) in C, then returns the pid; later attempts return the pid at once |
enum PoolTestTasks {
    /// What `grow` allocated, kept so the child's resident size stays up after the task returns.
    static let ballast = Mutex<[[UInt8]]>([])

    static var registry: TaskRegistry {
        var registry = TaskRegistry()
        registry.register("pid", kind: .cpu) { _, _ in Array(String(getpid()).utf8) }
        registry.register("crash", kind: .cpu) { _, _ in
            kill(getpid(), SIGKILL)
            fatalError("SIGKILL did not end the process")
        }
        registry.register("hang", kind: .cpu) { _, context in
            if context.args["ignore_term"]?.intValue == 1 { signal(SIGTERM, SIG_IGN) }
            // Stuck in C code, as a runaway native library would be: no await, no cancellation point.
            while true { sleep(3600) }
        }
        registry.register("spin", kind: .cpu) { _, context in
            let nanoseconds = (context.args["ms"]?.intValue ?? 300) * 1_000_000
            let start = monotonicNanoseconds()
            var end = start
            while end - start < nanoseconds { end = monotonicNanoseconds() }
            return JSONValue.object(["pid": .int(Int64(getpid())), "start": .int(start), "end": .int(end)]).jsonBytes
        }
        registry.register("grow", kind: .cpu) { _, context in
            let count = Int(context.args["bytes"]?.intValue ?? 64 << 20)
            // Writing every byte makes the pages resident, not just reserved.
            ballast.withLock { $0.append([UInt8](repeating: 0x5A, count: count)) }
            return Array(String(getpid()).utf8)
        }
        registry.register("fail", kind: .cpu) { _, context in
            throw GantryError(.taskFailed, context.args["message"]?.stringValue ?? "failed on purpose", isRetriable: true)
        }
        registry.register("bloat", kind: .cpu) { _, context in
            [UInt8](repeating: 0x42, count: Int(context.args["bytes"]?.intValue ?? 0))
        }
        registry.register("noisy", kind: .cpu) { input, _ in
            print("noise on stdout that must not corrupt the frames")
            let line = Array("noise on stderr\n".utf8)
            _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress!, $0.count) }
            return input
        }
        registry.register("wait-first", kind: .cpu) { _, context in
            if context.attempt == 1 {
                // Stuck in C code with no cancellation point, so only a signal ends it early.
                usleep(UInt32(min(context.args["ms"]?.intValue ?? 60_000, 3_600_000) * 1000))
            }
            return Array(String(getpid()).utf8)
        }
        registry.register("context", kind: .cpu) { _, context in
            var upstream: [String: JSONValue] = [:]
            for (stage, bytes) in context.upstream { upstream[stage.rawValue] = .string(String(decoding: bytes, as: UTF8.self)) }
            return JSONValue.object([
                "run": .string(context.runID.rawValue),
                "node": .string(context.node.description),
                "attempt": .int(Int64(context.attempt)),
                "args": context.args,
                "upstream": .object(upstream),
                "deadline": context.deadlineMilliseconds.map { .int(Int64($0)) } ?? .null,
            ]).jsonBytes
        }
        return registry
    }

    private static func monotonicNanoseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }
}
