import Foundation
import GantryCore
import GantryStore
import Testing

/// `gantry explain`, `retry`, `dlq`, `queues` and `submit --wait`, driven through the real
/// binary against the local stack's Redis and RabbitMQ; the test itself plays the worker
/// through the store (claim, fail, commit), so every state is reached for real.
@Suite struct CLIOperationsTests {
    @Test func explainNamesEveryKindOfBlocker() async throws {
        try await CLIScene.with { scene in
            let run = try await scene.submit("""
                name: blockers
                stages:
                  - { name: leased, task: echo, queue: \(scene.queue) }
                  - { name: later, task: echo, after: [leased], queue: \(scene.queue) }
                  - { name: flaky, task: echo, queue: \(scene.queue), retry: 3 }
                  - { name: doomed, task: echo, queue: \(scene.queue) }
                  - { name: waiting, task: echo, queue: \(scene.queue) }
                """)
            let environment = scene.environment()
            func explain(_ stage: String) async throws -> (blocker: String, text: String) {
                let result = try await CLI.run(["explain", run.rawValue, stage, "--json"], environment: environment)
                #expect(result.status == 0, "\(result.err)")
                let first = try #require(try CLI.json(result.out).arrayValue?.first)
                return (first["blocker"]?.stringValue ?? "", first["text"]?.stringValue ?? "")
            }

            // Queued, nobody consuming its queue.
            #expect(try await explain("waiting").blocker == "queue")
            // Leased by a worker.
            try await scene.claim(run, "leased", owner: "worker-on-host-7")
            let leased = try await explain("leased")
            #expect(leased.blocker == "lease")
            #expect(leased.text.contains("leased by worker worker-on-host-7 since"))
            // Waiting on a dependency.
            let later = try await explain("later")
            #expect(later.blocker == "dependency")
            #expect(later.text == "waiting on leased (running)")
            // Delayed for a retry.
            try await scene.claimAndFail(run, "flaky", error: "connection reset by peer", retriable: true, backoff: .seconds(600))
            let flaky = try await explain("flaky")
            #expect(flaky.blocker == "retry")
            #expect(flaky.text.contains("attempt 1 failed: connection reset by peer; delayed for retry until"))
            #expect(flaky.text.contains("(in 9m") || flaky.text.contains("(in 10m"))

            // The text form says the same, one line per unfinished stage.
            let text = try await CLI.run(["explain", run.rawValue], environment: environment)
            #expect(text.status == 0)
            #expect(text.out.contains("run \(run) (blockers) is running"))
            #expect(text.out.contains("  later: waiting on leased (running)"))
            #expect(text.out.contains("  flaky: attempt 1 failed"))

            // Dead-lettered: the run fails, the rest is cancelled.
            try await scene.claimAndFail(run, "doomed", error: "input is not valid UTF-8", retriable: false)
            let doomed = try await explain("doomed")
            #expect(doomed.blocker == "dead-letter")
            #expect(doomed.text.contains("failed after 1 attempt(s): input is not valid UTF-8; in the dead-letter queue"))
            #expect(try await explain("later").blocker == "cancelled")
            #expect(try await explain("later").text.contains("stage doomed failed: input is not valid UTF-8"))

            let unknown = try await CLI.run(["explain", run.rawValue, "nosuch"], environment: environment)
            #expect(unknown.status == 1)
            #expect(unknown.err.contains("has no stage or element 'nosuch'"))
        }
    }

    @Test func statusDrawsTheDagWithStateProgressAttemptsAndErrors() async throws {
        try await CLIScene.with { scene in
            let run = try await scene.submit("""
                name: drawn
                stages:
                  - { name: chunks, task: split, queue: \(scene.queue) }
                  - { name: hash, task: sha256, after: [chunks], map: chunks, queue: \(scene.queue), retry: 2 }
                  - { name: side, task: echo, queue: \(scene.queue) }
                  - { name: report, task: report, after: [hash, side], queue: \(scene.queue) }
                """)
            try await scene.claimAndCommit(run, "chunks", result: #"["a","b","c","d"]"#)
            try await scene.claimAndCommit(run, "hash[0]", result: #""00""#)
            try await scene.claimAndFail(run, "hash[1]", error: "disk full", retriable: true)
            let result = try await CLI.run(["status", run.rawValue], environment: scene.environment())
            #expect(result.status == 0, "\(result.err)")
            let lines = result.out.split(separator: "\n").map(String.init)
            #expect(lines.first?.hasPrefix("run \(run)  drawn  running  1/4 stages") == true)
            let chunks = try #require(lines.first { $0.contains("✔ chunks") })
            #expect(chunks.contains("succeeded") && chunks.contains("1/1") && chunks.contains("1/3"))
            // hash hangs under chunks; report under hash, naming its other dependency.
            let hash = try #require(lines.first { $0.contains(" hash ") })
            #expect(hash.contains("├─ ◐ hash") || hash.contains("└─ ◐ hash"))
            #expect(hash.contains("1/4") && hash.contains("≤1/2"))
            #expect(hash.contains("2 queued, 1 retrying"))
            #expect(hash.contains("hash[1]: disk full"))
            let report = try #require(lines.first { $0.contains(" report ") })
            #expect(report.contains("└─ · report"))
            #expect(report.contains("waiting"))
            #expect(report.contains("after hash, side"))
            #expect(lines.contains { $0.contains("○ side") && $0.contains("queued") })

            let json = try CLI.json(try await CLI.run(["status", run.rawValue, "--json"], environment: scene.environment()).out)
            let elements = try #require(json["elements"]?["hash"]?.arrayValue)
            #expect(elements.compactMap { $0["state"]?.stringValue } == ["succeeded", "retrying", "queued", "queued"])
        }
    }

    @Test func retryRerunsTheFailedStagesAndWhatWasCancelledBecauseOfThem() async throws {
        try await CLIScene.with { scene in
            let environment = scene.environment()
            let run = try await scene.submit("""
                name: retried
                stages:
                  - { name: fetch, task: echo, queue: \(scene.queue) }
                  - { name: parse, task: echo, after: [fetch], queue: \(scene.queue) }
                  - { name: other, task: echo, queue: \(scene.queue) }
                """)
            // Retrying a run that has not failed is refused and changes nothing.
            let early = try await CLI.run(["retry", run.rawValue], environment: environment)
            #expect(early.status == 1)
            #expect(early.err == "error: run \(run) is running and has no failed stage to retry\n")

            try await scene.claim(run, "other")
            try await scene.claimAndFail(run, "fetch", error: "upstream answered 503", retriable: false)
            #expect(try await scene.store.runState(run) == .failed)

            // The dead-letter queue holds it.
            let listed = try CLI.json(try await CLI.run(["dlq", "list", "--json", "--run", run.rawValue], environment: environment).out)
            let entries = try #require(listed["entries"]?.arrayValue)
            #expect(entries.count == 1)
            #expect(entries.first?["node"] == .string("fetch"))
            #expect(entries.first?["error"] == .string("upstream answered 503"))
            let id = try #require(entries.first?["id"]?.stringValue)
            let shown = try await CLI.run(["dlq", "show", id], environment: environment)
            #expect(shown.status == 0)
            #expect(shown.out.contains("node      fetch"))
            #expect(shown.out.contains("error     upstream answered 503"))
            #expect(shown.out.contains("task      echo [io] on queue '\(scene.queue)'"))

            // A stage that did not fail cannot be retried by name.
            let wrong = try await CLI.run(["retry", run.rawValue, "parse"], environment: environment)
            #expect(wrong.status == 1)
            #expect(wrong.err.contains("stage 'parse' of run \(run) is cancelled, not failed; only failed stages can be retried (its failed stages: fetch)"))

            let retried = try await CLI.run(["retry", run.rawValue, "--json"], environment: environment)
            #expect(retried.status == 0, "\(retried.err)")
            let report = try CLI.json(retried.out)
            #expect(report["retried"] == .array(["fetch"]))
            #expect(report["reset"] == .array(["fetch", "other", "parse"]) || report["reset"] == .array(["other", "fetch", "parse"]))
            #expect(Set(report["published"]?.arrayValue?.compactMap(\.stringValue) ?? []) == ["fetch", "other"])
            #expect(report["deadLettersRemoved"] == .int(1))

            let status = try CLI.json(try await CLI.run(["status", run.rawValue, "--json"], environment: environment).out)
            #expect(status["state"] == .string("running"))
            #expect(status["stages"]?.arrayValue?.compactMap { $0["state"]?.stringValue } == ["queued", "waiting", "queued"])
            #expect(status["stages"]?.arrayValue?.first?["attempt"] == .int(1))
            #expect(status["stages"]?.arrayValue?.first?["epoch"] == .int(2))
            #expect(try CLI.json(try await CLI.run(["dlq", "list", "--json", "--run", run.rawValue], environment: environment).out)["entries"] == .array([]))

            // The retried run finishes normally: a worker takes the re-published tasks.
            try await scene.claimAndCommit(run, "fetch", result: "page")
            try await scene.claimAndCommit(run, "other", result: "x")
            try await scene.claimAndCommit(run, "parse", result: "parsed")
            #expect(try await scene.store.runState(run) == .succeeded)
            let done = try await CLI.run(["retry", run.rawValue], environment: environment)
            #expect(done.status == 1)
            #expect(done.err.contains("run \(run) succeeded: there is nothing to retry"))
        }
    }

    @Test func retryOfAMappedStageKeepsItsSucceededElements() async throws {
        try await CLIScene.with { scene in
            let run = try await scene.submit("""
                name: mapped
                stages:
                  - { name: list, task: split, queue: \(scene.queue) }
                  - { name: each, task: echo, after: [list], map: list, max_parallel: 2, queue: \(scene.queue) }
                  - { name: sum, task: report, after: [each], queue: \(scene.queue) }
                """)
            try await scene.claimAndCommit(run, "list", result: #"["a","b","c","d"]"#)
            try await scene.claimAndCommit(run, "each[0]", result: "A")
            try await scene.claim(run, "each[2]")
            try await scene.claimAndFail(run, "each[1]", error: "bad element", retriable: false)
            #expect(try await scene.store.runState(run) == .failed)

            let retried = try await CLI.run(["retry", run.rawValue, "each", "--json"], environment: scene.environment())
            #expect(retried.status == 0, "\(retried.err)")
            let report = try CLI.json(retried.out)
            // each[0] succeeded and stays; each[1] failed and each[2] was cancelled mid-flight: both
            // run again (two, within max_parallel); each[3] is released as they finish.
            #expect(Set(report["published"]?.arrayValue?.compactMap(\.stringValue) ?? []) == ["each[1]", "each[2]"])
            let status = try await scene.store.status(run)
            #expect(status.state == .running)
            #expect(status.stages.map(\.state) == [.succeeded, .running, .waiting])
            #expect(status.stages[1].elementsLeft == 3)
            for node in ["each[1]", "each[2]"] {
                try await scene.claimAndCommit(run, node, result: node)
            }
            try await scene.claimAndCommit(run, "each[3]", result: "D")
            try await scene.claimAndCommit(run, "sum", result: "{}")
            #expect(try await scene.store.runState(run) == .succeeded)
            #expect(try await scene.store.upstreamResults(run, stages: ["each"])["each"].map { String(decoding: $0, as: UTF8.self) } == #"["A","each[1]","each[2]","D"]"#)
        }
    }

    @Test func retryInARunThatWentOnResetsWhatWasSkipped() async throws {
        try await CLIScene.with { scene in
            let run = try await scene.submit("""
                name: onward
                stages:
                  - { name: optional, task: echo, on_failure: continue, queue: \(scene.queue) }
                  - { name: after, task: echo, after: [optional], queue: \(scene.queue) }
                  - { name: main, task: echo, queue: \(scene.queue) }
                  - { name: join, task: report, after: [after, main], queue: \(scene.queue) }
                """)
            try await scene.claimAndFail(run, "optional", error: "not today", retriable: false)
            var status = try await scene.store.status(run)
            // The run goes on: what needs `optional` is skipped, `main` is still queued.
            #expect(status.state == .running)
            #expect(status.stages.map(\.state) == [.failed, .skipped, .queued, .waiting])

            let retried = try await CLI.run(["retry", run.rawValue], environment: scene.environment())
            #expect(retried.status == 0, "\(retried.err)")
            #expect(retried.out.contains("run \(run): retrying optional"))
            #expect(retried.out.contains("reset as well: after"))
            status = try await scene.store.status(run)
            #expect(status.state == .running)
            #expect(status.stages.map(\.state) == [.queued, .waiting, .queued, .waiting])
            #expect(status.stages[3].pendingDependencies == 2)
            for node in ["optional", "after", "main", "join"] {
                try await scene.claimAndCommit(run, node, result: node)
            }
            #expect(try await scene.store.runState(run) == .succeeded)
        }
    }

    @Test func dlqRequeueAndPurge() async throws {
        try await CLIScene.with { scene in
            let environment = scene.environment()
            let pipeline = "name: single\nstages:\n  - { name: only, task: echo, queue: \(scene.queue) }\n"
            let first = try await scene.submit(pipeline)
            let second = try await scene.submit(pipeline)
            try await scene.claimAndFail(first, "only", error: "boom 1", retriable: false)
            try await scene.claimAndFail(second, "only", error: "boom 2", retriable: false)

            let listed = try await CLI.run(["dlq", "list"], environment: environment)
            #expect(listed.status == 0)
            #expect(listed.out.contains("boom 1") && listed.out.contains("boom 2"))
            #expect(listed.out.contains("2 entries in all"))
            #expect(listed.out.contains("broker dead-letter queues (rabbitmq)"))
            let json = try CLI.json(try await CLI.run(["dlq", "list", "--json", "--queue", scene.queue], environment: environment).out)
            #expect(json["total"] == .int(2))
            // Newest first.
            #expect(json["entries"]?.arrayValue?.compactMap { $0["error"]?.stringValue } == ["boom 2", "boom 1"])
            #expect(json["brokerQueues"]?.arrayValue?.contains { $0["queue"] == .string(scene.queue + ".dlq") && $0["messages"] == .int(0) } == true)
            let firstID = try #require(json["entries"]?.arrayValue?.last?["id"]?.stringValue)

            let requeued = try await CLI.run(["dlq", "requeue", firstID], environment: environment)
            #expect(requeued.status == 0, "\(requeued.err)")
            #expect(requeued.out.contains("run \(first): retrying only; published 1 task(s); removed 1 entry"))
            #expect(try await scene.store.runState(first) == .running)
            let again = try await CLI.run(["dlq", "requeue", firstID], environment: environment)
            #expect(again.status == 1)
            #expect(again.err.contains("no dead-letter entry '\(firstID)'"))
            let malformed = try await CLI.run(["dlq", "show", "not-an-id"], environment: environment)
            #expect(malformed.status == 1)
            #expect(malformed.err.contains("'not-an-id' is not a dead-letter entry id"))

            let purged = try await CLI.run(["dlq", "purge", "--json"], environment: environment)
            #expect(try CLI.json(purged.out)["removed"] == .int(1))
            #expect(try await scene.store.deadLetterCount() == 0)
            #expect(try await scene.store.runState(second) == .failed)
        }
    }

    @Test func queuesReportDepthOnRabbitMQAndKafka() async throws {
        try await CLIScene.with { scene in
            let pipeline = "name: deep\nstages:\n  - { name: a, task: echo, queue: \(scene.queue) }\n  - { name: b, task: echo, queue: \(scene.queue) }\n"
            _ = try await scene.submit(pipeline)
            let rabbit = try await CLI.run(["queues", "--json", "--queue", scene.queue], environment: scene.environment())
            #expect(rabbit.status == 0, "\(rabbit.err)")
            let report = try CLI.json(rabbit.out)
            #expect(report["broker"] == .string("rabbitmq"))
            let row = try #require(report["queues"]?.arrayValue?.first { $0["queue"] == .string(scene.queue) })
            #expect(row["depth"] == .int(2))
            #expect(row["deadLetters"] == .int(0))
            #expect(row["workers"] == .int(0))
            let text = try await CLI.run(["queues", "--queue", scene.queue], environment: scene.environment())
            #expect(text.out.contains("broker: rabbitmq; depth = messages ready in the queue"))

            // Kafka: the records the worker group has not committed.
            let topic = "cli-\(UUID().uuidString.prefix(8).lowercased())"
            _ = try await scene.submit(pipeline.replacingOccurrences(of: scene.queue, with: topic), broker: "kafka")
            let kafka = try await CLI.run(["queues", "--json", "--queue", topic], environment: scene.environment(broker: "kafka"))
            #expect(kafka.status == 0, "\(kafka.err)")
            let kafkaReport = try CLI.json(kafka.out)
            #expect(kafkaReport["measure"]?.stringValue?.contains("has not committed yet") == true)
            let kafkaRow = try #require(kafkaReport["queues"]?.arrayValue?.first { $0["queue"] == .string(topic) })
            #expect(kafkaRow["depth"] == .int(2))
        }
    }

    @Test func submitWaitFollowsTheRunAndExitsNonZeroWhenItFails() async throws {
        try await CLIScene.with { scene in
            let path = try CLI.temporaryFile("wait.yaml", "name: waited\nstages:\n  - { name: step, task: echo, queue: \(scene.queue) }\n")

            // Standard output is a file: plain progress lines, then the final status.
            let failing = try CLI.Background(["submit", path, "--input", "x", "--wait"], environment: scene.environment())
            #expect(await failing.waitForOutput("submitted run ", timeout: .seconds(30)), "\(failing.err)")
            let line = try #require(failing.out.split(separator: "\n").first { $0.hasPrefix("submitted run ") })
            let run = try #require(RunID(rawValue: String(line.split(separator: " ")[2])))
            try await scene.claimAndFail(run, "step", error: "it broke", retriable: false)
            #expect(await failing.waitForExit(timeout: .seconds(30)) == 2)
            #expect(failing.out.contains(" failed ") && failing.out.contains("stages: step ✘"))
            #expect(failing.out.contains("error: it broke"))

            let passing = try CLI.Background(["submit", path, "--input", "x", "--wait", "--json"], environment: scene.environment())
            var runs: [RunID] = []
            let deadline = ContinuousClock.now + .seconds(30)
            while runs.count < 2 && ContinuousClock.now < deadline {
                runs = try await scene.store.recentRuns(limit: 5)
                try await Task.sleep(for: .milliseconds(50))
            }
            let second = try #require(runs.first { $0 != run })
            try await scene.claimAndCommit(second, "step", result: "ok")
            #expect(await passing.waitForExit(timeout: .seconds(30)) == 0)
            let final = try CLI.json(passing.out)
            #expect(final["state"] == .string("succeeded"))
            #expect(final["runID"] == .string(second.rawValue))
        }
    }

    @Test func anUnreachableBrokerIsOneErrorNamingTheAddressAndSetting() async throws {
        let scene = try CLIScene()
        let path = try CLI.temporaryFile("p.yaml", "name: p\nstages:\n  - { name: a, task: echo }\n")
        let rabbit = try await CLI.run(["submit", path], environment: scene.environment().merging(["GANTRY_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"]) { _, new in new })
        #expect(rabbit.status == 1)
        #expect(rabbit.err.contains("127.0.0.1:1"))
        #expect(rabbit.err.contains("setting 'broker.rabbitmq_url', set by environment variable GANTRY_AMQP_URL"))
        #expect(rabbit.err.split(separator: "\n").count == 1)
        let kafka = try await CLI.run(["submit", path], environment: scene.environment(broker: "kafka").merging(["GANTRY_KAFKA_BROKERS": "127.0.0.1:1"]) { _, new in new })
        #expect(kafka.status == 1)
        #expect(kafka.err.contains("cannot reach Kafka at 127.0.0.1:1: connection refused"))
        #expect(kafka.err.contains("setting 'broker.kafka_brokers', set by environment variable GANTRY_KAFKA_BROKERS"))
        #expect(kafka.err.split(separator: "\n").count == 1)
    }
}
