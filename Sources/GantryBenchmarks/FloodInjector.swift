import Foundation
import GantryCore
import GantryRuntime
import GantryStore
import Synchronization

/// The `flood` scenario: malformed and oversized messages published straight into the task
/// queue with the broker's own command-line tools (`amqp-publish`, `kcat`) while valid jobs
/// run; every one of them must reach the dead-letter queue with a reason.
enum FloodInjector {
    /// The bad messages: empty, random bytes, truncated envelopes, an envelope with bad magic
    /// bytes, JSON, HTTP, and envelopes whose payload is over `worker.max_payload_bytes`.
    static func messages(malformed: Int, oversized: Int, maxPayload: Int) -> [[UInt8]] {
        let envelope = TaskEnvelope(runID: RunID.make(), node: NodeID(stage: "job"), task: "noop", kind: .io, epoch: 1, payload: Array("flood".utf8)).encoded()
        var result: [[UInt8]] = []
        for index in 0..<malformed {
            switch index % 6 {
            case 0: result.append([])
            case 1: result.append((0..<Int.random(in: 1...512)).map { _ in UInt8.random(in: 0...255) })
            case 2: result.append(Array(envelope.prefix(Int.random(in: 1...(envelope.count / 2)))))
            case 3:
                var wrong = envelope
                wrong[0] = 0xEE
                result.append(wrong)
            case 4: result.append(Array(#"{"task":"noop","run":"not-a-run","payload":"flood"}"#.utf8))
            default: result.append(Array("GET / HTTP/1.1\r\nHost: gantry\r\n\r\n".utf8))
            }
        }
        for _ in 0..<oversized {
            let big = [UInt8](repeating: UInt8(ascii: "z"), count: maxPayload + 16 << 10)
            result.append(TaskEnvelope(runID: RunID.make(), node: NodeID(stage: "job"), task: "noop", kind: .io, epoch: 1, payload: big).encoded())
        }
        return result.shuffled()
    }

    static func flood(run: ChaosRun) async -> InjectedFaults {
        var faults = InjectedFaults()
        // Right as the valid jobs start, so that the flood meets work in flight.
        while run.runIDs.withLock({ $0.first { $0 != nil } }) == nil && !run.finished.load(ordering: .relaxed) {
            try? await Task.sleep(for: .milliseconds(10))
        }
        let cluster = run.cluster
        let maxPayload = (try? cluster.settings.int("worker.max_payload_bytes")) ?? 64 << 10
        let messages = messages(malformed: run.command.malformed, oversized: run.command.oversized, maxPayload: maxPayload)
        let directory = run.directory.appendingPathComponent("flood")
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let queue = try cluster.settings.string("broker.queue_prefix") + "default"
            let sent: Int
            if cluster.broker == "kafka" {
                sent = try await publishWithKcat(messages, topic: queue, brokers: try cluster.settings.strings("broker.kafka_brokers").joined(separator: ","), directory: directory, cluster: cluster)
            } else {
                // amqp-tools read a URL ending in "/" as the empty vhost, not the default "/".
                var url = try cluster.settings.string("broker.rabbitmq_url")
                if url.hasSuffix("/") && url.filter({ $0 == "/" }).count == 3 { url.removeLast() }
                sent = try await publishWithAMQPTools(messages, queue: queue, url: url, directory: directory, cluster: cluster)
            }
            faults.count = sent
            faults.expectedBrokerDeadLetters = sent
            faults.description = "\(run.command.malformed) malformed + \(run.command.oversized) oversized (\(maxPayload + 16 << 10) B payload, limit \(maxPayload) B) messages published with \(cluster.broker == "kafka" ? "kcat -P" : "amqp-publish") while valid jobs ran"
        } catch {
            faults.problems.append("injecting: \(error)")
        }
        return faults
    }

    /// One `amqp-publish` per message (body on its standard input), eight at a time.
    private static func publishWithAMQPTools(_ messages: [[UInt8]], queue: String, url: String, directory: URL, cluster: BenchCluster) async throws -> Int {
        let executable = "/usr/bin/amqp-publish"
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw GantryError(.configuration, "\(executable) is missing: install amqp-tools (ops/bootstrap does)")
        }
        let failures = SharedCounter()
        let next = SharedCounter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    while case let index = next.next(), index < messages.count {
                        let file = directory.appendingPathComponent("message-\(index)")
                        try Data(messages[index]).write(to: file)
                        let process = try ChildProcess.spawnTracked(
                            name: "amqp-publish", executable: executable, arguments: ["--url", url, "-r", queue, "-p"],
                            environment: ProcessInfo.processInfo.environment, logPath: directory.appendingPathComponent("amqp-publish.log").path,
                            standardInput: file.path
                        )
                        _ = await process.waitForExit(timeout: .seconds(30))
                        ProcessRegistry.shared.remove(process)
                        if process.status != 0 { _ = failures.next() }
                        try? FileManager.default.removeItem(at: file)
                    }
                }
            }
            try await group.waitForAll()
        }
        let failed = failures.current
        guard failed == 0 else { throw GantryError(.commandFailed, "amqp-publish failed for \(failed) messages; see \(directory.path)/amqp-publish.log") }
        return messages.count
    }

    /// One `kcat -P` run with every message in a file, split on a delimiter none contains.
    private static func publishWithKcat(_ messages: [[UInt8]], topic: String, brokers: String, directory: URL, cluster: BenchCluster) async throws -> Int {
        let executable = "/usr/bin/kcat"
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw GantryError(.configuration, "\(executable) is missing: install kcat (ops/bootstrap does)")
        }
        let delimiter = Array("\u{1E}\u{1F}\u{1E}\u{1F}".utf8)
        // kcat splits on the delimiter and cannot send an empty message: make empties one byte.
        let bodies = messages.map { $0.isEmpty ? [UInt8(0)] : $0 }.filter { !contains($0, delimiter) }
        var data: [UInt8] = []
        for (index, body) in bodies.enumerated() {
            if index > 0 { data += delimiter }
            data += body
        }
        let file = directory.appendingPathComponent("messages")
        try Data(data).write(to: file)
        let process = try ChildProcess.spawnTracked(
            name: "kcat", executable: executable,
            arguments: ["-P", "-b", brokers, "-t", topic, "-D", "\\x1e\\x1f\\x1e\\x1f", "-l", file.path],
            environment: ProcessInfo.processInfo.environment, logPath: directory.appendingPathComponent("kcat.log").path
        )
        _ = await process.waitForExit(timeout: .seconds(60))
        ProcessRegistry.shared.remove(process)
        guard process.status == 0 else {
            throw GantryError(.commandFailed, "kcat -P failed (status \(process.status ?? -1)): \(process.logTail())")
        }
        return bodies.count
    }

    private static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard haystack.count >= needle.count else { return false }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if Array(haystack[start..<(start + needle.count)]) == needle { return true }
        }
        return false
    }

    /// Reads the queue's dead-letter queue until `expected` messages arrived (or 60 s): how
    /// many there are, how many carry a reason, and the distinct reasons.
    static func checkDeadLetters(run: ChaosRun, expected: Int) async throws -> (total: Int, withReason: Int, reasons: [String]) {
        guard expected > 0 else { return (0, 0, []) }
        let cluster = run.cluster
        var settings = cluster.settings
        settings.set("broker.kafka_group", .string("\(try settings.string("broker.kafka_group"))-dlq-check"), source: "chaos")
        let transport = try GantryRuntime.makeTransport(settings: settings, logger: cluster.logger)
        let queue = "default.dlq"
        try await transport.declare(queues: [queue])
        let stream = try await transport.consume(queues: [queue], credit: 256)
        let stopper = Task {
            try? await Task.sleep(for: .seconds(60))
            stream.stopIntake()
        }
        var total = 0
        var withReason = 0
        var reasons: [String] = []
        do {
            for try await delivery in stream {
                total += 1
                if let reason = delivery.headers[deadLetterReasonHeader], !reason.isEmpty {
                    withReason += 1
                    let short = String(reason.prefix(160))
                    if !reasons.contains(short) && reasons.count < 10 { reasons.append(short) }
                }
                try await transport.ack(delivery)
                if total >= expected {
                    // A moment for any message beyond those injected to show up.
                    try? await Task.sleep(for: .milliseconds(500))
                    stream.stopIntake()
                }
            }
        } catch {
            stopper.cancel()
            await transport.close()
            throw error
        }
        stopper.cancel()
        await transport.close()
        return (total, withReason, reasons)
    }
}
