import ArgumentParser
import Foundation
import GantryCore
import GantryRuntime
import GantryStore
import Logging

struct Retry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-run the failed (dead-lettered) stages of a run, and what was skipped or cancelled because of them.",
        discussion: """
            Without STAGE every failed stage runs again; with STAGE only those (a failed stage not \
            named stays failed). A mapped stage keeps its succeeded elements. The run becomes \
            running again, with a fresh deadline when the pipeline has one, and the retried \
            stages' entries leave the dead-letter queue.
            """
    )

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var output: OutputOptions

    @Argument(help: "The run id.")
    var run: String

    @Argument(help: "Failed stages to retry (default: every failed stage).")
    var stages: [String] = []

    @Option(help: "rabbitmq, kafka or memory (overrides broker.kind).")
    var broker: String?

    @Flag(help: "Follow the run to its end, showing progress; exit 2 unless it succeeds.")
    var wait = false

    func run() async throws {
        try await reportingErrors {
            let id = try parseRun(run)
            let names = try stages.map { text -> StageName in
                guard let node = NodeID(text) else {
                    throw GantryError(.invalidArgument, "'\(text)' is not a stage name (\(StageName.rule))")
                }
                return node.stage
            }
            let runtime = try await connectRuntime(cluster, broker: broker)
            let outcome: RetryOutcome
            do {
                outcome = try await runtime.store.retry(id, stages: names)
                try await runtime.dispatcher.publish(outcome.ready)
            } catch {
                await runtime.transport.close()
                throw error
            }
            await runtime.transport.close()
            if output.json && !wait {
                try printJSON(RetryReport(outcome))
            } else if !output.json {
                print("run \(id): retrying \(outcome.retried.isEmpty ? "its cancelled stages" : outcome.retried.map(\.rawValue).joined(separator: ", "))")
                let others = outcome.reset.filter { !outcome.retried.contains($0) }
                if !others.isEmpty { print("  reset as well: \(others.map(\.rawValue).joined(separator: ", "))") }
                print("  published \(outcome.ready.count) task(s)\(outcome.deadLettersRemoved > 0 ? "; removed \(outcome.deadLettersRemoved) dead-letter entr\(outcome.deadLettersRemoved == 1 ? "y" : "ies")" : "")")
            }
            guard wait else { return }
            let state = try await ProgressView.follow(id, store: runtime.store, mode: output.json ? .quiet : .automatic)
            if output.json { try printJSON(try statusJSON(try await runtime.store.status(id))) }
            if state != .succeeded { throw ExitCode(2) }
        }
    }
}

/// `gantry retry --json`.
struct RetryReport: Encodable {
    var run: String
    var retried: [String]
    var reset: [String]
    var published: [String]
    var deadLettersRemoved: Int

    init(_ outcome: RetryOutcome) {
        run = outcome.runID.rawValue
        retried = outcome.retried.map(\.rawValue)
        reset = outcome.reset.map(\.rawValue)
        published = outcome.ready.map(\.node.description)
        deadLettersRemoved = outcome.deadLettersRemoved
    }
}

struct DeadLetters: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "The dead-letter queue: stages that failed for good, and messages the broker set aside.",
        discussion: """
            Entries live in the store's dead-letter stream (<namespace>:dlq in Redis): one per node \
            that failed for good, with its error. `list` also counts the broker's dead-letter \
            queues (<queue>.dlq), where workers put messages they cannot decode.
            """,
        subcommands: [List.self, Show.self, Requeue.self, Purge.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead-lettered stages, newest first, and the broker's dead-letter queue depths.")

        @OptionGroup var cluster: ClusterOptions
        @OptionGroup var output: OutputOptions

        @Option(help: "How many entries to show.")
        var limit = 50

        @Option(help: "Only entries of this run.")
        var run: String?

        @Option(help: "rabbitmq, kafka or memory (overrides broker.kind).")
        var broker: String?

        @Option(help: "A queue whose dead-letter queue to count, besides the configured ones (repeatable).")
        var queue: [String] = []

        func run() async throws {
            try await reportingErrors {
                var (store, settings) = try await cluster.store()
                if let broker { settings.set("broker.kind", .string(broker), source: "--broker") }
                let total = try await store.deadLetterCount()
                var entries: [DeadLetterRecord]
                if let run {
                    let id = try parseRun(run)
                    entries = try await store.deadLetterRecords(matching: { $0.runID == id }).reversed()
                    entries = Array(entries.prefix(limit))
                } else {
                    entries = try await store.deadLetterRecords(limit: limit)
                }
                let queues = try await knownQueues(store: store, settings: settings, extra: queue)
                let depths = await brokerDepths(queues.map { deadLetterName(of: $0) }, settings: settings)
                if output.json {
                    try printJSON(DeadLetterListing(
                        total: total, entries: entries,
                        brokerQueues: depths.rows.map { BrokerQueueDepth(queue: $0.queue, messages: $0.depth) }, brokerNote: depths.note
                    ))
                    return
                }
                if entries.isEmpty {
                    print(run == nil ? "the dead-letter stream is empty" : "no dead-letter entries for run \(run ?? "")")
                } else {
                    var rows = [["ID", "DEAD-LETTERED (UTC)", "RUN", "NODE", "ERROR"]]
                    for entry in entries {
                        rows.append([entry.id, StatusRenderer.clock(entry.milliseconds), entry.runID.rawValue, entry.node.description, oneLine(entry.error, limit: 100)])
                    }
                    print(StatusRenderer.columns(rows))
                    print("\(total) entr\(total == 1 ? "y" : "ies") in all\(entries.count < total && run == nil ? " (newest \(entries.count) shown; --limit for more)" : ""); `gantry dlq show ID`, `gantry dlq requeue ID|--all`")
                }
                print("")
                print("broker dead-letter queues (\(try settings.string("broker.kind"))): messages workers could not decode or the broker rejected")
                if let note = depths.note {
                    print("  \(note)")
                } else {
                    print(StatusRenderer.columns([["QUEUE", "MESSAGES"]] + depths.rows.map { [$0.queue, $0.depth.map(String.init) ?? "?"] }, indent: "  "))
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one dead-letter entry with its stage and the node's state now.")

        @OptionGroup var cluster: ClusterOptions
        @OptionGroup var output: OutputOptions

        @Argument(help: "The entry id, as `gantry dlq list` shows it.")
        var id: String

        func run() async throws {
            try await reportingErrors {
                let (store, _) = try await cluster.store()
                guard let entry = try await store.deadLetterRecord(id) else {
                    throw GantryError(.notFound, "no dead-letter entry '\(id)' (requeued or purged already?); `gantry dlq list` shows the entries")
                }
                let status = try? await store.status(entry.runID)
                let node = status.flatMap { status in
                    (status.stages + status.elements.values.flatMap { $0 }).first { $0.node == entry.node }
                }
                let stage = status?.spec.stage(entry.node.stage)
                if output.json {
                    try printJSON(DeadLetterDetail(entry: entry, runState: status?.state.rawValue, node: node, task: stage?.task, args: stage?.args))
                    return
                }
                print("entry     \(entry.id)")
                print("when      \(StatusRenderer.clock(entry.milliseconds)) UTC")
                print("run       \(entry.runID)\(status.map { "  (\($0.name), \($0.state.rawValue))" } ?? "  (expired)")")
                print("node      \(entry.node)")
                if let stage {
                    print("task      \(stage.task) [\(stage.kind.rawValue)] on queue '\(stage.queue)'\(stage.args == .null ? "" : "  args \(String(decoding: stage.args.jsonBytes, as: UTF8.self))")")
                    print("retry     up to \(stage.retry.maxAttempts) attempt(s), on failure: \(stage.onFailure.rawValue)")
                }
                print("error     \(entry.error)")
                if let node {
                    print("now       \(node.state.rawValue), attempt \(node.attempt), epoch \(node.epoch)\(node.leasesLost > 0 ? ", worker lost \(node.leasesLost) time(s)" : "")")
                }
                if status?.state == .failed || node?.state == .failed {
                    print("requeue   gantry dlq requeue \(entry.id)   (or gantry retry \(entry.runID) \(entry.node.stage))")
                }
            }
        }
    }

    struct Requeue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run dead-lettered stages again (their runs resume) and remove their entries.")

        @OptionGroup var cluster: ClusterOptions
        @OptionGroup var output: OutputOptions

        @Argument(help: "Entry ids, as `gantry dlq list` shows them.")
        var ids: [String] = []

        @Flag(help: "Requeue every entry.")
        var all = false

        @Option(help: "rabbitmq, kafka or memory (overrides broker.kind).")
        var broker: String?

        func validate() throws {
            if all == !ids.isEmpty { throw ValidationError("give entry ids or --all (not both)") }
        }

        func run() async throws {
            try await reportingErrors {
                let runtime = try await connectRuntime(cluster, broker: broker)
                let results: [DeadLetterRequeue]
                do {
                    var records: [DeadLetterRecord] = []
                    if all {
                        records = try await runtime.store.deadLetterRecords(matching: { _ in true })
                    } else {
                        for id in ids {
                            guard let record = try await runtime.store.deadLetterRecord(id) else {
                                throw GantryError(.notFound, "no dead-letter entry '\(id)' (requeued or purged already?); `gantry dlq list` shows the entries")
                            }
                            records.append(record)
                        }
                    }
                    results = try await runtime.store.requeue(records)
                    for result in results {
                        if let outcome = result.outcome { try await runtime.dispatcher.publish(outcome.ready) }
                    }
                } catch {
                    await runtime.transport.close()
                    throw error
                }
                await runtime.transport.close()
                if output.json {
                    try printJSON(results.map(RequeueReport.init))
                } else if results.isEmpty {
                    print("the dead-letter stream is empty: nothing to requeue")
                } else {
                    for result in results {
                        if let outcome = result.outcome {
                            print("run \(result.runID): retrying \(outcome.retried.map(\.rawValue).joined(separator: ", ")); published \(outcome.ready.count) task(s); removed \(result.entries.count) entr\(result.entries.count == 1 ? "y" : "ies")")
                        } else {
                            print("run \(result.runID): not retried: \(result.skipped ?? "?")\(result.removed ? "; removed \(result.entries.count) stale entr\(result.entries.count == 1 ? "y" : "ies")" : "")")
                        }
                    }
                }
                if results.contains(where: { $0.outcome == nil && !$0.removed }) { throw ExitCode(3) }
            }
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete dead-letter entries (all, or one run's) without retrying them.")

        @OptionGroup var cluster: ClusterOptions
        @OptionGroup var output: OutputOptions

        @Option(help: "Only entries of this run.")
        var run: String?

        func run() async throws {
            try await reportingErrors {
                let (store, _) = try await cluster.store()
                let removed: Int
                if let run {
                    let id = try parseRun(run)
                    removed = try await store.removeDeadLetters(try await store.deadLetterRecords(matching: { $0.runID == id }).map(\.id))
                } else {
                    removed = try await store.purgeDeadLetters()
                }
                if output.json {
                    try printJSON(["removed": removed])
                } else {
                    print("removed \(removed) dead-letter entr\(removed == 1 ? "y" : "ies")")
                }
            }
        }
    }
}

struct DeadLetterListing: Encodable {
    var total: Int
    var entries: [DeadLetterRecord]
    var brokerQueues: [BrokerQueueDepth]
    var brokerNote: String?
}

struct BrokerQueueDepth: Encodable {
    var queue: String
    var messages: Int?
}

struct DeadLetterDetail: Encodable {
    var entry: DeadLetterRecord
    var runState: String?
    var node: NodeStatus?
    var task: String?
    var args: JSONValue?
}

struct RequeueReport: Encodable {
    var run: String
    var entries: [String]
    var retried: [String]
    var published: [String]
    var skipped: String?
    var removed: Bool

    init(_ result: DeadLetterRequeue) {
        run = result.runID.rawValue
        entries = result.entries
        retried = result.outcome?.retried.map(\.rawValue) ?? []
        published = result.outcome?.ready.map(\.node.description) ?? []
        skipped = result.skipped
        removed = result.removed
    }
}

struct Queues: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Messages waiting per queue (where the broker can tell), dead letters and the workers consuming each.",
        discussion: """
            Queues listed: worker.queues, those live workers consume, those of recent runs' \
            stages, and any given with --queue. RabbitMQ reports the messages ready in each queue; \
            Kafka the records the worker group has not committed yet (high watermark minus \
            committed offset, per partition); the memory broker cannot be read from outside its process.
            """
    )

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var output: OutputOptions

    @Option(help: "rabbitmq, kafka or memory (overrides broker.kind).")
    var broker: String?

    @Option(help: "A queue to include (repeatable).")
    var queue: [String] = []

    func run() async throws {
        try await reportingErrors {
            var (store, settings) = try await cluster.store()
            if let broker { settings.set("broker.kind", .string(broker), source: "--broker") }
            let queues = try await knownQueues(store: store, settings: settings, extra: queue)
            let depths = await brokerDepths(queues.flatMap { [$0, deadLetterName(of: $0)] }, settings: settings)
            let byName = Dictionary(depths.rows.map { ($0.queue, $0.depth) }, uniquingKeysWith: { first, _ in first })
            var consumers: [String: Int] = [:]
            for worker in try await store.workers() {
                for name in (worker.fields["queues"] ?? "").split(separator: ",") { consumers[String(name), default: 0] += 1 }
            }
            let kind = try settings.string("broker.kind")
            let rows = queues.map { name in
                QueueReport(queue: name, depth: byName[name] ?? nil, deadLetters: byName[deadLetterName(of: name)] ?? nil, workers: consumers[name] ?? 0)
            }
            if output.json {
                try printJSON(QueuesReport(broker: kind, measure: measure(kind, settings: settings), note: depths.note, queues: rows))
                return
            }
            print("broker: \(kind); depth = \(measure(kind, settings: settings))")
            if let note = depths.note { print(note) }
            var table = [["QUEUE", "DEPTH", "DEAD LETTERS", "WORKERS"]]
            for row in rows {
                table.append([row.queue, row.depth.map(String.init) ?? "?", row.deadLetters.map(String.init) ?? "?", String(row.workers)])
            }
            print(StatusRenderer.columns(table))
        }
    }

    private func measure(_ kind: String, settings: GantrySettings) -> String {
        switch kind {
        case "rabbitmq": return "messages ready in the queue (not yet delivered to a worker)"
        case "kafka": return "records the group '\((try? settings.string("broker.kafka_group")) ?? "?")' has not committed yet (high watermark minus committed offset)"
        default: return "cannot tell: the memory broker lives inside one process"
        }
    }
}

struct QueueReport: Encodable {
    var queue: String
    var depth: Int?
    var deadLetters: Int?
    var workers: Int
}

struct QueuesReport: Encodable {
    var broker: String
    var measure: String
    var note: String?
    var queues: [QueueReport]
}

/// The dead-letter queue of `queue` on the broker.
func deadLetterName(of queue: String) -> String { queue + ".dlq" }

/// Queues worth reporting: `worker.queues`, those live workers consume, those the stages of
/// recent runs publish to, and `extra`, in that order without repeats.
func knownQueues(store: RedisStateStore, settings: GantrySettings, extra: [String], recentRuns: Int = 50) async throws -> [String] {
    var names = try settings.strings("worker.queues")
    for worker in try await store.workers() {
        names += (worker.fields["queues"] ?? "").split(separator: ",").map(String.init)
    }
    for run in try await store.recentRuns(limit: recentRuns) {
        if let spec = try? await store.spec(run) { names += spec.stages.map(\.queue) }
    }
    names += extra
    var seen: Set<String> = []
    return names.filter { !$0.isEmpty && seen.insert($0).inserted }
}

/// The depth of each of `queues` on the configured broker, where it can tell; `note` says why
/// it cannot (memory broker, broker unreachable).
func brokerDepths(_ queues: [String], settings: GantrySettings) async -> (rows: [(queue: String, depth: Int?)], note: String?) {
    let kind = (try? settings.string("broker.kind")) ?? "?"
    guard kind != "memory" else {
        return (queues.map { ($0, nil) }, "the memory broker lives inside one process: its queues cannot be read from here")
    }
    do {
        try await GantryRuntime.checkBrokerReachable(settings: settings)
        let transport = try GantryRuntime.makeTransport(settings: settings, logger: Logger(label: "gantry.cli"))
        var rows: [(String, Int?)] = []
        var failures: [String] = []
        for queue in queues {
            do {
                rows.append((queue, try await transport.depth(of: queue)))
            } catch {
                rows.append((queue, nil))
                failures.append("\(queue): \((error as? GantryError)?.message ?? "\(error)")")
            }
        }
        await transport.close()
        return (rows, failures.isEmpty ? nil : "could not read: " + failures.joined(separator: "; "))
    } catch {
        return (queues.map { ($0, nil) }, "cannot tell: \((error as? GantryError)?.message ?? "\(error)")")
    }
}

/// `text` on one line, cut to `limit` characters.
func oneLine(_ text: String, limit: Int) -> String {
    let flat = text.replacingOccurrences(of: "\n", with: " ")
    return flat.count > limit ? String(flat.prefix(limit - 1)) + "…" : flat
}
