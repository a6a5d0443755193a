import ArgumentParser
import Foundation
import GantryCore
import GantryRedis
import GantryStore

/// Claim+commit throughput of the Redis state store, beside `redis-benchmark` against the same
/// server in the same run.
struct StoreBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Claim+commit pairs per second, pipelined and not, beside redis-benchmark -P 16 SET."
    )

    @Option(help: "Redis URL.")
    var redis = ProcessInfo.processInfo.environment["GANTRY_REDIS_URL"] ?? "redis://127.0.0.1:6390"

    @Option(help: "Claim+commit pairs in the pipelined measurement.")
    var pairs = 200_000

    @Option(help: "Claim+commit pairs in the one-at-a-time measurement.")
    var singlePairs = 20_000

    @Option(help: "Commands per pipelined round trip.")
    var batch = 1000

    @Option(help: "Connections (and concurrent callers).")
    var connections = 4

    @Option(help: "Independent stages per run (nodes are spread over runs of this size).")
    var stagesPerRun = 1000

    @Option(help: "SET requests for the redis-benchmark reference (0 skips it).")
    var referenceRequests = 2_000_000

    func run() async throws {
        var redisConfiguration = try RedisConfiguration(url: redis)
        redisConfiguration.poolSize = connections
        let client = try RedisClient(configuration: redisConfiguration)
        let store = RedisStateStore(client: client, configuration: StoreConfiguration(namespace: "gantry-bench-\(UUID().uuidString.prefix(8))", retention: .seconds(300)))
        try await store.loadScripts()
        let stageNames = (0..<stagesPerRun).map { "s\($0)" }
        let plan = try PipelinePlan(PipelineSpec(name: "bench", stages: stageNames.map { StageSpec(name: StageName(rawValue: $0)!, task: "noop") }))

        func makeNodes(_ count: Int) async throws -> [ReadyNode] {
            var nodes: [ReadyNode] = []
            while nodes.count < count {
                nodes += try await store.createRun(plan, input: []).ready
            }
            return Array(nodes.prefix(count))
        }

        // One claim and one commit per round trip, `connections` callers at once.
        let singleNodes = try await makeNodes(singlePairs)
        let singleCPU = try await serverCPUSeconds(client)
        let single = try await measure(count: singleNodes.count) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                let slice = (singleNodes.count + connections - 1) / connections
                for worker in 0..<connections {
                    let part = singleNodes[min(worker * slice, singleNodes.count)..<min((worker + 1) * slice, singleNodes.count)]
                    group.addTask {
                        for node in part {
                            guard case .claimed(let epoch, _) = try await store.claim(node.runID, node.node, epoch: node.epoch, owner: "bench", lease: .seconds(60)) else {
                                throw GantryError(.commandFailed, "claim of \(node) did not succeed")
                            }
                            _ = try await store.commit(node.runID, node.node, epoch: epoch, owner: "bench", result: [])
                        }
                    }
                }
                try await group.waitForAll()
            }
        }

        let singleServer = try await serverCPUSeconds(client) - singleCPU

        // Claims then commits in batches of `batch` per round trip, `connections` batches at once.
        let pipelinedNodes = try await makeNodes(pairs)
        let pipelinedCPU = try await serverCPUSeconds(client)
        let pipelined = try await measure(count: pipelinedNodes.count) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                var start = 0
                var inFlight = 0
                while start < pipelinedNodes.count {
                    let chunk = Array(pipelinedNodes[start..<min(start + batch, pipelinedNodes.count)])
                    start += batch
                    if inFlight == connections {
                        try await group.next()
                        inFlight -= 1
                    }
                    inFlight += 1
                    group.addTask {
                        let claims = try await store.claim(chunk.map { .init(runID: $0.runID, node: $0.node, epoch: $0.epoch) }, owner: "bench", lease: .seconds(60))
                        var commits: [RedisStateStore.CommitRequest] = []
                        commits.reserveCapacity(chunk.count)
                        for (node, claim) in zip(chunk, claims) {
                            guard case .claimed(let epoch, _) = claim else { throw GantryError(.commandFailed, "claim of \(node) gave \(claim)") }
                            commits.append(.init(runID: node.runID, node: node.node, epoch: epoch, result: []))
                        }
                        let outcomes = try await store.commit(commits, owner: "bench")
                        guard !outcomes.contains(.stale) else { throw GantryError(.commandFailed, "a commit was refused as stale") }
                    }
                }
                try await group.waitForAll()
            }
        }

        let pipelinedServer = try await serverCPUSeconds(client) - pipelinedCPU
        // Redis CPU time (main thread) per pair: what the server spends, however busy the machine is
        // (on a server other clients use too, their commands count as well).
        let singleMicros = singleNodes.isEmpty ? 0 : singleServer * 1e6 / Double(singleNodes.count)
        let pipelinedMicros = pipelinedNodes.isEmpty ? 0 : pipelinedServer * 1e6 / Double(pipelinedNodes.count)

        let reference: Double? = referenceRequests > 0 ? try redisBenchmarkSetRate(configuration: redisConfiguration, requests: referenceRequests) : nil
        let report: [String: JSONValue] = [
            "scenario": .string("store"),
            "redis": .string(redisConfiguration.address),
            "connections": .int(Int64(connections)),
            "batch": .int(Int64(batch)),
            "single_pairs": .int(Int64(singlePairs)),
            "single_pairs_per_s": .int(Int64(single)),
            "pipelined_pairs": .int(Int64(pairs)),
            "pipelined_pairs_per_s": .int(Int64(pipelined)),
            "single_server_cpu_us_per_pair": .double((singleMicros * 10).rounded() / 10),
            "pipelined_server_cpu_us_per_pair": .double((pipelinedMicros * 10).rounded() / 10),
            "redis_benchmark_P16_set_per_s": reference.map { .int(Int64($0)) } ?? .null,
            "pipelined_ratio_to_set": reference.map { .double((pipelined / $0 * 1000).rounded() / 1000) } ?? .null,
        ]
        print(JSONValue.object(report).jsonString)
        print("""
            store claim+commit pairs/s: one at a time \(Int(single)), pipelined \(Int(pipelined)) \
            | redis-benchmark -P 16 SET \(reference.map { "\(Int($0))/s" } ?? "skipped") | pipelined ratio \(reference.map { String(format: "%.3f", pipelined / $0) } ?? "n/a") (target ≥ 0.10) \
            | Redis CPU per pair: one at a time \(String(format: "%.1f", singleMicros)) µs, pipelined \(String(format: "%.1f", pipelinedMicros)) µs
            """)
        // Hundreds of thousands of throwaway runs: gone now rather than when their results expire.
        _ = try? await store.removeNamespace()
        client.close()
    }
}

/// Runs `body` and returns `count` divided by the seconds it took.
func measure(count: Int, _ body: () async throws -> Void) async throws -> Double {
    let clock = ContinuousClock()
    let start = clock.now
    try await body()
    let elapsed = (clock.now - start).seconds
    return Double(count) / max(elapsed, 1e-9)
}

/// The CPU time Redis's main thread has used so far (user + system), from `INFO cpu`.
func serverCPUSeconds(_ client: RedisClient) async throws -> Double {
    let text = try await client.send("INFO", "cpu").string ?? ""
    var total = 0.0
    for line in text.split(whereSeparator: \.isNewline) {
        let parts = line.split(separator: ":", maxSplits: 1)
        guard parts.count == 2, parts[0] == "used_cpu_user_main_thread" || parts[0] == "used_cpu_sys_main_thread", let value = Double(parts[1]) else { continue }
        total += value
    }
    return total
}

/// `redis-benchmark -P 16 -t set` against the same server; returns SET requests per second.
func redisBenchmarkSetRate(configuration: RedisConfiguration, requests: Int = 2_000_000) throws -> Double {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-benchmark")
    var arguments = ["-h", configuration.host, "-p", String(configuration.port), "-P", "16", "-t", "set", "-n", String(requests), "-q"]
    if let password = configuration.password { arguments += ["-a", password] }
    if let user = configuration.username { arguments += ["--user", user] }
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    do {
        try process.run()
    } catch {
        throw GantryError(.configuration, "cannot run /usr/bin/redis-benchmark (install redis-tools; ops/bootstrap does): \(error)")
    }
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    // "SET: 1234567.89 requests per second, p50=0.215 msec" (the progress lines end in \r).
    for line in output.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) where line.hasPrefix("SET:") {
        let fields = line.dropFirst(4).split(separator: " ")
        if let rate = fields.first.flatMap({ Double($0) }) { return rate }
    }
    throw GantryError(.protocolError, "could not read a SET rate from redis-benchmark's output: \(output.suffix(300))")
}
