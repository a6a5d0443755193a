import ArgumentParser
import Foundation
import GantryCore
import GantryKafka
import Logging

/// Publish → consume → ack throughput of the Kafka transport, beside kcat producing and
/// consuming the same number of records of the same size against the same broker in the same
/// run.
///
/// Records are spread evenly over the topic's partitions with keys chosen for librdkafka's
/// default partitioner, so that no partition of the dev broker passes its 5 MB / 100,000
/// record cap (it would silently drop the oldest records).
struct KafkaTransportBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kafka",
        abstract: "Kafka transport publish→consume→ack records/s for 64 B and 4 KiB payloads, beside kcat -P then kcat -C.",
        discussion: """
            Each size runs --rounds times per side, alternating: Gantry (KafkaTransport.publish in batches, then consume with \
            an ack per delivery) and kcat (-P from a file, then -C -o beginning -e). Rates are \
            records over the sum of both phases. Gantry's consume phase is timed from the first \
            delivery, excluding the consumer group join (the dev broker waits 3 s before a new \
            group's first assignment), which kcat's assign-mode consumer does not do. kcat's \
            phases are timed without its start-up: each is the run's time minus the time of the \
            same phase for one record on the same topic (reported as kcat_startup_*).
            """
    )

    @Option(help: "Kafka bootstrap servers.")
    var brokers = ProcessInfo.processInfo.environment["GANTRY_KAFKA_BROKERS"] ?? "127.0.0.1:9092"

    @Option(help: "Records with a 64-byte payload.")
    var smallCount = 300_000

    @Option(help: "Records with a 4 KiB payload.")
    var largeCount = 10_000

    @Option(help: "Partitions of the topics (the dev broker creates topics with 8).")
    var partitions = 8

    @Option(help: "Records per publish call.")
    var batch = 5000

    @Option(help: "Publish calls in flight at once.")
    var publishers = 4

    @Option(help: "Consumer credit: deliveries unsettled at once.")
    var credit = 256

    @Option(help: "Bytes a consumer fetches ahead of its workers (KafkaTransportConfiguration.prefetchBytes).")
    var prefetchBytes = KafkaTransportConfiguration().prefetchBytes

    @Option(help: "The kcat executable.")
    var kcat = "/usr/bin/kcat"

    @Option(help: "Measured rounds per payload size, Gantry and kcat alternating; the best round of each side is reported.")
    var rounds = 3

    func run() async throws {
        guard rounds >= 1 else { throw ValidationError("rounds must be at least 1") }
        for (size, count) in [(64, smallCount), (4096, largeCount)] {
            var gantry = (publish: Double.infinity, consume: Double.infinity, join: 0.0)
            var raw = (produce: Double.infinity, consume: Double.infinity, startup: (produce: 0.0, consume: 0.0))
            // The machine is shared: alternating rounds and keeping each side's best round
            // compares the two under the same conditions rather than one unlucky moment.
            for _ in 0..<rounds {
                let round = try await measureGantry(size: size, count: count)
                if round.publish + round.consume < gantry.publish + gantry.consume { gantry = round }
                let rawRound = try await measureKcat(size: size, count: count)
                if rawRound.produce + rawRound.consume < raw.produce + raw.consume { raw = rawRound }
            }
            let gantryRate = Double(count) / (gantry.publish + gantry.consume)
            let rawRate = Double(count) / (raw.produce + raw.consume)
            let ratio = gantryRate / rawRate
            let report: [String: JSONValue] = [
                "scenario": .string("kafka"),
                "brokers": .string(brokers),
                "payload_bytes": .int(Int64(size)),
                "messages": .int(Int64(count)),
                "rounds": .int(Int64(rounds)),
                "partitions": .int(Int64(partitions)),
                "credit": .int(Int64(credit)),
                "prefetch_bytes": .int(Int64(prefetchBytes)),
                "publish_batch": .int(Int64(batch)),
                "publishers": .int(Int64(publishers)),
                "gantry_publish_per_s": .int(Int64(Double(count) / gantry.publish)),
                "gantry_consume_ack_per_s": .int(Int64(Double(count) / gantry.consume)),
                "gantry_per_s": .int(Int64(gantryRate)),
                "gantry_group_join_s": .double(Self.rounded(gantry.join)),
                "kcat_produce_per_s": .int(Int64(Double(count) / raw.produce)),
                "kcat_consume_per_s": .int(Int64(Double(count) / raw.consume)),
                "kcat_per_s": .int(Int64(rawRate)),
                "kcat_startup_produce_s": .double(Self.rounded(raw.startup.produce)),
                "kcat_startup_consume_s": .double(Self.rounded(raw.startup.consume)),
                "ratio": .double(Self.rounded(ratio)),
            ]
            print(JSONValue.object(report).jsonString)
            print("""
                kafka \(size) B × \(count): gantry publish \(Int(Double(count) / gantry.publish))/s, consume+ack \(Int(Double(count) / gantry.consume))/s, \
                end to end \(Int(gantryRate))/s | kcat -P \(Int(Double(count) / raw.produce))/s, -C \(Int(Double(count) / raw.consume))/s, \
                end to end \(Int(rawRate))/s | ratio \(String(format: "%.2f", ratio)) (target ≥ 0.50)
                """)
        }
    }

    // MARK: Gantry

    private func measureGantry(size: Int, count: Int) async throws -> (publish: Double, consume: Double, join: Double) {
        let tag = UUID().uuidString.prefix(8).lowercased()
        let queue = "bench-\(size)-\(tag)"
        var configuration = KafkaTransportConfiguration(
            kafka: KafkaConfiguration(bootstrapServers: brokers.split(separator: ",").map(String.init), clientID: "gantry-bench"),
            groupID: "gantry-bench-\(tag)"
        )
        configuration.prefetchBytes = prefetchBytes
        configuration.consumerProperties["session.timeout.ms"] = "6000"
        configuration.consumerProperties["heartbeat.interval.ms"] = "500"
        let transport = try KafkaTransport(configuration: configuration, logger: Logger(label: "gantry.bench.kafka"))
        try await transport.declare(queues: [queue])
        let keys = Self.balancedKeys(partitions: partitions)
        let payload = [UInt8](repeating: UInt8(ascii: "x"), count: size)
        let messages = (0..<count).map { OutgoingMessage(body: payload, key: keys[$0 % keys.count]) }

        let clock = ContinuousClock()
        let publishStart = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            var start = 0
            var inFlight = 0
            while start < messages.count {
                let chunk = Array(messages[start..<min(start + batch, messages.count)])
                start += batch
                if inFlight == publishers {
                    try await group.next()
                    inFlight -= 1
                }
                inFlight += 1
                group.addTask { try await transport.publish(chunk, to: queue) }
            }
            try await group.waitForAll()
        }
        let publish = (clock.now - publishStart).seconds
        guard let depth = try await transport.depth(of: queue), depth == count else {
            throw GantryError(.commandFailed, "the topic of \(queue) holds fewer than \(count) records: the dev broker dropped some (5 MB per partition); lower the count")
        }

        let consumeCall = clock.now
        let stream = try await transport.consume(queues: [queue], credit: credit)
        var received = 0
        var firstDelivery: ContinuousClock.Instant?
        var seenPartitions = Set<Int32>()
        for try await delivery in stream {
            if firstDelivery == nil { firstDelivery = clock.now }
            seenPartitions.insert(delivery.token.partition)
            try await transport.ack(delivery)
            received += 1
            if received == count { break }
        }
        let consumeEnd = clock.now
        guard received == count, let firstDelivery else {
            throw GantryError(.commandFailed, "the Gantry consumer ended after \(received) of \(count) records")
        }
        guard seenPartitions.count == partitions else {
            throw GantryError(.commandFailed, "records came from \(seenPartitions.count) partitions, not \(partitions); pass --partitions with the dev broker's count")
        }
        stream.stopIntake()
        await transport.close()
        return (publish, (consumeEnd - firstDelivery).seconds, (firstDelivery - consumeCall).seconds)
    }

    // MARK: kcat

    /// kcat's produce and consume phases without its start-up (process start, connection,
    /// metadata, offset lookup: what Gantry's measured phases do not include either).
    ///
    /// On one topic: `kcat -P` of one record, then of `count` records; `kcat -C` of one record,
    /// then of `count`. Each phase is the large run's time minus the one-record run's, so the
    /// topic exists and is known to the broker for both, and only the records make the
    /// difference.
    private func measureKcat(size: Int, count: Int) async throws -> (produce: Double, consume: Double, startup: (produce: Double, consume: Double)) {
        let tag = UUID().uuidString.prefix(8).lowercased()
        let topic = "gantry-bench-kcat-\(size)-\(tag)"
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-bench-\(tag)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        let startupProduce = try await kcatProduce(size: size, count: 1, topic: topic, directory: directory)
        let produce = try await kcatProduce(size: size, count: count, topic: topic, directory: directory)
        let startupConsume = try await kcatConsume(count: 1, topic: topic, directory: directory)
        let consume = try await kcatConsume(count: count, topic: topic, directory: directory)
        // A floor of a millisecond keeps a slow start-up run from making a phase take no time.
        return (max(produce - startupProduce, 0.001), max(consume - startupConsume, 0.001), (startupProduce, startupConsume))
    }

    /// Seconds of `kcat -P` storing `count` records in `topic`, with the same keys and payload
    /// size as Gantry's (one `key:value` line per record).
    private func kcatProduce(size: Int, count: Int, topic: String, directory: URL) async throws -> Double {
        let keys = Self.balancedKeys(partitions: partitions)
        let value = String(repeating: "x", count: size)
        var input = ""
        input.reserveCapacity(count * (size + 12))
        for index in 0..<count {
            input += keys[index % keys.count]
            input += ":"
            input += value
            input += "\n"
        }
        let inputURL = directory.appendingPathComponent("records-\(count)")
        try Data(input.utf8).write(to: inputURL)
        return try await Self.run(kcat, [
            "-P", "-b", brokers, "-t", topic, "-K", ":", "-X", "enable.idempotence=true", "-q", "-l", inputURL.path,
        ])
    }

    /// Seconds of `kcat -C` reading the first `count` records of `topic`.
    private func kcatConsume(count: Int, topic: String, directory: URL) async throws -> Double {
        let outputURL = directory.appendingPathComponent("offsets-\(count)")
        let seconds = try await Self.run(kcat, [
            "-C", "-b", brokers, "-t", topic, "-o", "beginning", "-e", "-c", String(count), "-q", "-f", "%p %o\\n",
        ], output: outputURL)
        let lines = try String(contentsOf: outputURL, encoding: .utf8).split(separator: "\n")
        guard lines.count == count else {
            throw GantryError(.commandFailed, "kcat consumed \(lines.count) of \(count) records from \(topic)")
        }
        return seconds
    }

    /// Runs `executable` to its end without blocking a thread of the cooperative pool; returns
    /// the seconds it ran.
    private static func run(_ executable: String, _ arguments: [String], output: URL? = nil) async throws -> Double {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        let errorURL = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-bench-\(UUID().uuidString).err")
        _ = FileManager.default.createFile(atPath: errorURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errorURL) }
        process.standardError = try FileHandle(forWritingTo: errorURL)
        if let output {
            _ = FileManager.default.createFile(atPath: output.path, contents: nil)
            process.standardOutput = try FileHandle(forWritingTo: output)
        } else {
            process.standardOutput = FileHandle.nullDevice
        }
        let clock = ContinuousClock()
        let start = clock.now
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            process.terminationHandler = { _ in continuation.resume() }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: GantryError(.configuration, "cannot run \(executable) (install kcat; ops/bootstrap does): \(error)"))
            }
        }
        let elapsed = (clock.now - start).seconds
        guard process.terminationStatus == 0 else {
            let stderr = (try? String(contentsOf: errorURL, encoding: .utf8)) ?? ""
            throw GantryError(.commandFailed, "\(executable) \(arguments.joined(separator: " ")) exited with \(process.terminationStatus): \(stderr.suffix(500))")
        }
        return elapsed
    }

    // MARK: Helpers

    /// One key per partition, as placed by librdkafka's default partitioner
    /// (`consistent_random`: CRC-32 of the key modulo the partition count), so cycling through
    /// them fills every partition equally.
    static func balancedKeys(partitions: Int) -> [String] {
        var keys = [String?](repeating: nil, count: partitions)
        var candidate = 0
        while keys.contains(where: { $0 == nil }) {
            let key = "run-\(candidate)"
            let partition = Int(crc32(Array(key.utf8)) % UInt32(partitions))
            if keys[partition] == nil { keys[partition] = key }
            candidate += 1
        }
        return keys.map { $0! }
    }

    /// CRC-32 (IEEE 802.3, the zlib one), as librdkafka's partitioners compute it.
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return ~crc
    }

    private static func rounded(_ value: Double) -> Double {
        (value * 1000).rounded() / 1000
    }
}
