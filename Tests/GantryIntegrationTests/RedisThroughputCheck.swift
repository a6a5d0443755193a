import Foundation
import GantryCore
import GantryRedis
import Testing

/// A throughput check of pipelined `EVALSHA`, run by hand; it asserts nothing about speed.
///
/// ```
/// GANTRY_REDIS_THROUGHPUT=1 swift test -c release --scratch-path .build-redis --filter RedisThroughput
/// ```
/// Optional: `GANTRY_REDIS_THROUGHPUT_CALLS` (default 600000), `…_BATCH` (1000),
/// `…_CALLERS` (comma-separated concurrent callers to try, default `1,2,4`).
@Suite("Redis throughput (manual)", .enabled(if: ProcessInfo.processInfo.environment["GANTRY_REDIS_THROUGHPUT"] == "1"))
struct RedisThroughputCheck {
    @Test("pipelined EVALSHA calls per second")
    func pipelinedEvalsha() async throws {
        let environment = ProcessInfo.processInfo.environment
        let totalCalls = Int(environment["GANTRY_REDIS_THROUGHPUT_CALLS"] ?? "") ?? 600_000
        let batchSize = Int(environment["GANTRY_REDIS_THROUGHPUT_BATCH"] ?? "") ?? 1000
        let callerCounts = (environment["GANTRY_REDIS_THROUGHPUT_CALLERS"] ?? "1,2,4").split(separator: ",").compactMap { Int($0) }

        let client = try RedisTestEnvironment.client(poolSize: callerCounts.max() ?? 1)
        defer { client.close() }
        // A small state-store-like script: a fenced counter bump on a hash.
        let script = RedisScript(name: "bump", source: """
            if redis.call('HGET', KEYS[1], 'e') == ARGV[1] then return -1 end
            return redis.call('HINCRBY', KEYS[1], 'n', ARGV[2])
            """)
        try await client.load(script)
        let prefix = RedisTestEnvironment.key("throughput")
        let keys = (0..<1000).map { "\(prefix):{\($0)}" }

        print("redis throughput: \(totalCalls) EVALSHA calls in batches of \(batchSize), Redis at \(client.configuration.address)")
        for callers in callerCounts {
            let batchesPerCaller = totalCalls / batchSize / callers
            let clock = ContinuousClock()
            let elapsed = try await clock.measure {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for caller in 0..<callers {
                        group.addTask {
                            var batch = RedisPipeline(reservingCapacity: batchSize)
                            for round in 0..<batchesPerCaller {
                                batch.removeAll()
                                for index in 0..<batchSize {
                                    batch.evalsha(script, keys: keys[(index &+ round &+ caller) % keys.count], args: "x", 1)
                                }
                                let replies = try await client.pipeline(batch)
                                guard replies.count == batchSize, !replies[0].isError else {
                                    throw GantryError(.commandFailed, "unexpected reply \(replies[0])")
                                }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            }
            let calls = batchesPerCaller * batchSize * callers
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            print("redis throughput: \(callers) caller(s): \(calls) calls in \(String(format: "%.2f", seconds)) s = \(Int(Double(calls) / seconds)) calls/s")
        }

        // Unbatched: one EVALSHA per call, one caller, then 64 callers sharing the pool.
        for callers in [1, 64] {
            let callsPerCaller = 20_000 / callers
            let clock = ContinuousClock()
            let elapsed = try await clock.measure {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for caller in 0..<callers {
                        group.addTask {
                            for index in 0..<callsPerCaller {
                                _ = try await client.evalsha(script, keys: [.string(keys[(index &+ caller) % keys.count])], args: ["x", 1])
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            }
            let calls = callsPerCaller * callers
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            print("redis throughput: unbatched, \(callers) caller(s): \(Int(Double(calls) / seconds)) calls/s, \(String(format: "%.1f", seconds * 1e6 / Double(callsPerCaller))) µs per call per caller")
        }

        // Client-side cost alone: encoding a batch, no I/O.
        let encodeClock = ContinuousClock()
        var batch = RedisPipeline(reservingCapacity: batchSize)
        let rounds = 200
        let encoding = encodeClock.measure {
            for round in 0..<rounds {
                batch.removeAll()
                for index in 0..<batchSize {
                    batch.evalsha(script, keys: keys[(index + round) % keys.count], args: "x", 1)
                }
            }
        }
        let encodeSeconds = Double(encoding.components.seconds) + Double(encoding.components.attoseconds) / 1e18
        print("redis throughput: encoding alone: \(Int(Double(rounds * batchSize) / encodeSeconds)) calls/s (\(batch.byteCount) bytes per batch)")

        var cleanup = RedisPipeline()
        for key in keys { cleanup.append("DEL", key) }
        _ = try await client.pipeline(cleanup)
    }
}
