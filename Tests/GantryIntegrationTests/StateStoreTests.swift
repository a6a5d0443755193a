import Foundation
import GantryCore
import GantryRedis
import GantryStore
import Testing

/// A store on the shared Redis under a namespace no other test uses.
private func makeStore(url: String = RedisTestEnvironment.url, configure: (inout StoreConfiguration) -> Void = { _ in }) throws -> RedisStateStore {
    var configuration = StoreConfiguration(namespace: "gantry-test-\(UUID().uuidString.prefix(8))")
    configure(&configuration)
    var redis = try RedisConfiguration(url: url)
    redis.poolSize = 8
    return RedisStateStore(client: try RedisClient(configuration: redis), configuration: configuration)
}

private func plan(_ yaml: String) throws -> PipelinePlan {
    try PipelinePlan(PipelineSpec.parse(yaml: yaml))
}

private let lease = Duration.seconds(30)

/// Claims and commits `node` as `owner`, expecting both to succeed; returns the commit outcome.
@discardableResult
private func runNode(_ store: RedisStateStore, _ ready: ReadyNode, owner: String = "w1", result: [UInt8] = [], now: UInt64 = currentMilliseconds()) async throws -> CommitOutcome {
    let claim = try await store.claim(ready.runID, ready.node, epoch: ready.epoch, owner: owner, lease: lease, now: now)
    guard case .claimed(let epoch, _) = claim else {
        Issue.record("claim of \(ready) gave \(claim)")
        return .stale
    }
    return try await store.commit(ready.runID, ready.node, epoch: epoch, owner: owner, result: result, now: now)
}

private func readyOf(_ outcome: CommitOutcome) -> [ReadyNode] {
    if case .committed(let ready, _) = outcome { return ready }
    return []
}

@Suite(.serialized) struct StateStoreTests {
    @Test func createsARunOncePerIdempotencyKey() async throws {
        let store = try makeStore()
        try await store.loadScripts()
        let plan = try plan("name: p\nstages:\n  - { name: a, task: noop }\n  - { name: b, task: noop }\n  - { name: c, task: noop, after: [a, b] }\n")
        let key = UUID().uuidString
        let first = try await store.createRun(plan, input: Array("in".utf8), idempotencyKey: key)
        #expect(first.created)
        #expect(Set(first.ready.map(\.node.description)) == ["a", "b"])
        #expect(first.ready.allSatisfy { $0.epoch == 1 && $0.attempt == 1 })
        let second = try await store.createRun(plan, input: Array("in".utf8), idempotencyKey: key)
        #expect(second.runID == first.runID)
        #expect(!second.created)
        #expect(second.ready.isEmpty)
        #expect(try await store.input(first.runID) == Array("in".utf8))
        #expect(try await store.activeRuns().contains(first.runID))
        let other = try await store.createRun(plan, input: [])
        #expect(other.runID != first.runID)
    }

    @Test func aCommitLeasesTheReadyNodesItIsAskedToTake() async throws {
        let store = try makeStore()
        let created = try await store.createRun(try plan("""
            name: p
            stages:
              - { name: a, task: noop }
              - { name: b, task: noop, after: [a] }
              - { name: c, task: noop, after: [a] }
              - { name: m, task: noop, after: [a], map: a }
            """), input: [])
        let root = try #require(created.ready.first)
        let claim = try await store.claim(root.runID, root.node, epoch: root.epoch, owner: "w1", lease: lease)
        guard case .claimed(let epoch, _) = claim else { Issue.record("claim gave \(claim)"); return }
        // b and the mapped stage m (three elements) may be taken, at most three of them; c may not.
        let take = RedisStateStore.ReadyLease(limit: 3, stages: ["b", "m"], lease: lease)
        let ready = readyOf(try await store.commit(root.runID, root.node, epoch: epoch, owner: "w1", result: Array("[1,2,3]".utf8), take: take))
        #expect(Set(ready.map(\.node.description)) == ["b", "c", "m[0]", "m[1]", "m[2]"])
        let leased = ready.filter(\.leased)
        #expect(leased.count == 3)
        #expect(!leased.contains { $0.node.stage == "c" })
        #expect(ready.first { $0.node.stage == "c" }?.leased == false)
        let status = try await store.status(root.runID)
        for node in leased {
            // Leased to w1 as a claim would: running, its owner, and no one else can claim it.
            let entry = try #require(status.stages.first { $0.node == node.node } ?? status.elements[node.node.stage]?.first { $0.node == node.node })
            #expect(entry.state == .running)
            #expect(entry.owner == "w1")
            #expect(try await store.claim(root.runID, node.node, epoch: node.epoch, owner: "w2", lease: lease) == .busy)
            #expect(try await store.commit(root.runID, node.node, epoch: node.epoch, owner: "w1", result: []) != .stale)
        }
        // What was not leased is queued, for whoever its message reaches.
        for node in ready where !node.leased {
            #expect(try await store.claim(root.runID, node.node, epoch: node.epoch, owner: "w2", lease: lease) == .claimed(epoch: node.epoch, attempt: node.attempt))
        }
        let events = try await store.events(root.runID)
        #expect(events.filter { $0.fields["s"] == "running" && $0.fields["o"] == "w1" }.count == 4)
    }

    @Test func onlyOneOfManyConcurrentClaimersWins() async throws {
        let store = try makeStore()
        let created = try await store.createRun(try plan("name: p\nstages:\n  - { name: a, task: noop }\n"), input: [])
        let root = try #require(created.ready.first)
        let outcomes = try await withThrowingTaskGroup(of: ClaimOutcome.self) { group in
            for worker in 0..<32 {
                group.addTask { try await store.claim(root.runID, root.node, epoch: root.epoch, owner: "w\(worker)", lease: lease) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(outcomes.filter { if case .claimed = $0 { true } else { false } }.count == 1)
        #expect(outcomes.filter { $0 == .busy }.count == 31)
    }

    @Test func aStaleEpochCannotCommit() async throws {
        let store = try makeStore()
        let created = try await store.createRun(try plan("name: p\nstages:\n  - { name: a, task: noop }\n"), input: [])
        let root = try #require(created.ready.first)
        let t0 = currentMilliseconds()
        #expect(try await store.claim(root.runID, root.node, epoch: 1, owner: "old", lease: .seconds(5), now: t0) == .claimed(epoch: 1, attempt: 1))
        // The old worker goes silent; once its lease has expired the coordinator's wake re-queues.
        let woken = try await store.wake(root.runID, now: t0 + 6000)
        #expect(woken.ready == [ReadyNode(runID: root.runID, node: root.node, epoch: 2, attempt: 2)])
        #expect(try await store.claim(root.runID, root.node, epoch: 1, owner: "late", lease: lease, now: t0 + 6001) == .stale(currentEpoch: 2))
        #expect(try await store.claim(root.runID, root.node, epoch: 2, owner: "new", lease: lease, now: t0 + 6002) == .claimed(epoch: 2, attempt: 2))
        // The old holder wakes up and tries to commit: refused, and counted.
        #expect(try await store.commit(root.runID, root.node, epoch: 1, owner: "old", result: Array("old".utf8), now: t0 + 6003) == .stale)
        #expect(try await store.renew(root.runID, root.node, epoch: 1, owner: "old", lease: lease, now: t0 + 6003) == .lost)
        let committed = try await store.commit(root.runID, root.node, epoch: 2, owner: "new", result: Array("new".utf8), now: t0 + 6004)
        #expect(committed == .committed(ready: [], runState: .succeeded))
        // A second commit of the same epoch (a redelivered message) is refused too: one result, ever.
        #expect(try await store.commit(root.runID, root.node, epoch: 2, owner: "new", result: Array("again".utf8), now: t0 + 6005) == .stale)
        #expect(try await store.result(root.runID, root.node) == Array("new".utf8))
        #expect(try await store.staleCommits(root.runID) == 2)
        #expect(try await store.claim(root.runID, root.node, epoch: 2, owner: "x", lease: lease) == .done)
        #expect(try await !store.activeRuns().contains(root.runID))
    }

    @Test func aJoinFiresExactlyOnceWhenParentsFinishTogether() async throws {
        let store = try makeStore()
        let parents = (0..<40).map { "p\($0)" }
        let yaml = "name: join\nstages:\n" + parents.map { "  - { name: \($0), task: noop }\n" }.joined()
            + "  - { name: join, task: noop, after: [\(parents.joined(separator: ", "))] }\n"
        let created = try await store.createRun(try plan(yaml), input: [])
        #expect(created.ready.count == 40)
        let readies = try await withThrowingTaskGroup(of: [ReadyNode].self) { group in
            for ready in created.ready {
                group.addTask { readyOf(try await runNode(store, ready, owner: "w-\(ready.node)")) }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(readies.map(\.node.description) == ["join"])
        let join = try #require(readies.first)
        #expect(readyOf(try await runNode(store, join)).isEmpty)
        #expect(try await store.runState(join.runID) == .succeeded)
    }

    @Test func aMappedStageFansOutWithBoundedParallelismAndFansIn() async throws {
        let store = try makeStore()
        let created = try await store.createRun(try plan("""
            name: fan
            stages:
              - { name: list, task: noop }
              - { name: each, task: noop, after: [list], map: list, max_parallel: 2 }
              - { name: gather, task: noop, after: [each] }
            """), input: [])
        let list = try #require(created.ready.first)
        var ready = readyOf(try await runNode(store, list, result: Array(#"["a","b","c","d","e"]"#.utf8)))
        #expect(ready.map(\.node.description) == ["each[0]", "each[1]"])
        var finished: [String] = []
        while let next = ready.first {
            ready.removeFirst()
            if next.node.stage == "gather" {
                finished.append("gather")
                _ = try await runNode(store, next)
                continue
            }
            finished.append(next.node.description)
            ready += readyOf(try await runNode(store, next, result: Array("\"r\(next.node.index!)\"".utf8)))
            // Never more than two elements queued or running at once.
            let status = try await store.status(next.runID)
            let busy = (status.elements["each"] ?? []).filter { $0.state == .queued || $0.state == .running }
            #expect(busy.count <= 2)
        }
        #expect(finished == ["each[0]", "each[1]", "each[2]", "each[3]", "each[4]", "gather"])
        let status = try await store.status(list.runID)
        #expect(status.state == .succeeded)
        #expect(status.stages.first { $0.node.stage == "each" }?.elements == 5)
        #expect(try await store.results(list.runID, (0..<5).map { NodeID(stage: "each", index: $0) }).map { $0.map { String(decoding: $0, as: UTF8.self) } }
            == ["\"r0\"", "\"r1\"", "\"r2\"", "\"r3\"", "\"r4\""])
    }

    @Test func elementsCommittedInOneBatchReleaseTheNextOnesInOrderAndTheJoinOnce() async throws {
        let store = try makeStore()
        let created = try await store.createRun(try plan("""
            name: fan
            stages:
              - { name: list, task: noop }
              - { name: each, task: noop, after: [list], map: list, max_parallel: 3 }
              - { name: gather, task: noop, after: [each] }
            """), input: [])
        let run = created.runID
        var ready = readyOf(try await runNode(store, created.ready[0], result: Array("[0,1,2,3,4,5,6]".utf8)))
        #expect(ready.map(\.node.description) == ["each[0]", "each[1]", "each[2]"])
        var rounds: [[String]] = []
        // Each round claims what is ready and commits it all in one batch (a stale item and a
        // repeated one among them), until the join runs.
        while !ready.isEmpty {
            let claims = try await store.claim(ready.map { .init(runID: run, node: $0.node, epoch: $0.epoch) }, owner: "w", lease: lease)
            #expect(claims.allSatisfy { if case .claimed = $0 { true } else { false } })
            var requests = ready.map { RedisStateStore.CommitRequest(runID: run, node: $0.node, epoch: $0.epoch, result: Array("\"\($0.node)\"".utf8)) }
            requests.insert(.init(runID: run, node: ready[0].node, epoch: ready[0].epoch + 5, result: []), at: 1)
            requests.append(requests[0])
            let outcomes = try await store.commit(requests, owner: "w")
            #expect(outcomes[1] == .stale)
            #expect(outcomes.last == .stale)
            ready = outcomes.flatMap(readyOf)
            rounds.append(ready.map(\.node.description))
        }
        #expect(rounds == [["each[3]", "each[4]", "each[5]"], ["each[6]"], ["gather"], []])
        #expect(try await store.runState(run) == .succeeded)
        let results = try await store.results(run, (0..<7).map { NodeID(stage: "each", index: $0) })
        #expect(results.map { $0.map { String(decoding: $0, as: UTF8.self) } } == (0..<7).map { "\"each[\($0)]\"" })
        let status = try await store.status(run)
        #expect(status.doneStages == 3)
        #expect(try await store.staleCommits(run) == 8)
    }

    @Test func aSweepWakesOnlyRunsWithADueTimerOrThatEnded() async throws {
        let store = try makeStore { $0.queueVisibility = .seconds(60) }
        let one = try plan("name: p\nstages:\n  - { name: a, task: noop }\n")
        let t0 = currentMilliseconds()
        let queued = try await store.createRun(one, input: [], now: t0)
        let running = try await store.createRun(one, input: [], now: t0)
        let ended = try await store.createRun(one, input: [], now: t0)
        _ = try await store.claim(running.runID, NodeID(stage: "a"), epoch: 1, owner: "w", lease: .seconds(10), now: t0)
        _ = try await runNode(store, ended.ready[0], now: t0)
        let missing = RunID.make()
        let all = [queued.runID, running.runID, ended.runID, missing]
        // Nothing is due yet: only the ended run (as if its committer died before unlisting it)
        // and the missing one need a wake.
        #expect(try await store.runsToWake(all, now: t0 + 1) == [ended.runID, missing])
        // The lease expires after 10 s, the queued node's visibility deadline after 60 s.
        #expect(try await store.runsToWake(all, now: t0 + 10_001) == [running.runID, ended.runID, missing])
        #expect(try await store.runsToWake(all, now: t0 + 60_001) == all)
        // What the sweep then does with them is the wake script's business, as before.
        #expect(try await store.wake(running.runID, now: t0 + 10_001).ready.map(\.node) == [NodeID(stage: "a")])
    }

    @Test func anEmptyMapCompletesAtOnce() async throws {
        let store = try makeStore()
        let created = try await store.createRun(try plan("""
            name: fan
            stages:
              - { name: list, task: noop }
              - { name: each, task: noop, after: [list], map: list }
              - { name: gather, task: noop, after: [each] }
            """), input: [])
        let ready = readyOf(try await runNode(store, created.ready[0], result: Array("[]".utf8)))
        #expect(ready.map(\.node.description) == ["gather"])
    }

    @Test func retriableFailuresAreRetriedThenDeadLettered() async throws {
        let store = try makeStore()
        let created = try await store.createRun(try plan("name: p\nstages:\n  - { name: a, task: noop, retry: 2 }\n  - { name: b, task: noop, after: [a] }\n  - { name: c, task: noop }\n"), input: [])
        let a = try #require(created.ready.first { $0.node.stage == "a" })
        let t0 = currentMilliseconds()
        _ = try await store.claim(a.runID, a.node, epoch: 1, owner: "w", lease: lease, now: t0)
        #expect(try await store.fail(a.runID, a.node, epoch: 1, owner: "w", error: "timeout talking to x", retriable: true, backoff: .seconds(2), now: t0) == .retryAt(milliseconds: t0 + 2000))
        // Not due yet: nothing to publish.
        #expect(try await store.wake(a.runID, now: t0 + 1000).ready.isEmpty)
        let due = try await store.wake(a.runID, now: t0 + 2000)
        #expect(due.ready == [ReadyNode(runID: a.runID, node: a.node, epoch: 2, attempt: 2)])
        _ = try await store.claim(a.runID, a.node, epoch: 2, owner: "w", lease: lease, now: t0 + 2001)
        let dead = try await store.fail(a.runID, a.node, epoch: 2, owner: "w", error: "timeout again", retriable: true, backoff: .seconds(2), now: t0 + 2002)
        #expect(dead == .deadLettered(ready: [], runState: .failed))
        let status = try await store.status(a.runID)
        #expect(status.state == .failed)
        #expect(status.reason?.contains("stage a failed: timeout again") == true)
        let byName = Dictionary(uniqueKeysWithValues: status.stages.map { ($0.node.stage.rawValue, $0) })
        #expect(byName["a"]?.state == .failed)
        #expect(byName["a"]?.deadLettered == true)
        #expect(byName["b"]?.state == .cancelled)
        #expect(byName["c"]?.state == .cancelled)
        let deadLetters = try await store.client.send("XRANGE", "\(store.configuration.namespace):dlq", "-", "+")
        #expect(deadLetters.array?.count == 1)
    }

    @Test func continuePolicySkipsOnlyWhatDependsOnTheFailure() async throws {
        let store = try makeStore()
        let created = try await store.createRun(try plan("""
            name: p
            stages:
              - { name: bad, task: noop, on_failure: continue, retry: 1 }
              - { name: after-bad, task: noop, after: [bad] }
              - { name: after-that, task: noop, after: [after-bad] }
              - { name: good, task: noop }
              - { name: after-good, task: noop, after: [good] }
            """), input: [])
        let bad = try #require(created.ready.first { $0.node.stage == "bad" })
        let good = try #require(created.ready.first { $0.node.stage == "good" })
        _ = try await store.claim(bad.runID, bad.node, epoch: 1, owner: "w", lease: lease)
        #expect(try await store.fail(bad.runID, bad.node, epoch: 1, owner: "w", error: "broken", retriable: false, backoff: .zero) == .deadLettered(ready: [], runState: nil))
        #expect(try await store.runState(bad.runID) == .running)
        let next = readyOf(try await runNode(store, good))
        #expect(next.map(\.node.description) == ["after-good"])
        #expect(readyOf(try await runNode(store, next[0])).isEmpty)
        let status = try await store.status(bad.runID)
        #expect(status.state == .failed)
        let states = Dictionary(uniqueKeysWithValues: status.stages.map { ($0.node.stage.rawValue, $0.state) })
        #expect(states == ["bad": .failed, "after-bad": .skipped, "after-that": .skipped, "good": .succeeded, "after-good": .succeeded])
    }

    @Test func cancellingARunStopsPendingAndTellsRunningAtRenew() async throws {
        let store = try makeStore()
        let created = try await store.createRun(try plan("name: p\nstages:\n  - { name: a, task: noop }\n  - { name: b, task: noop }\n  - { name: c, task: noop, after: [a] }\n"), input: [])
        let a = try #require(created.ready.first { $0.node.stage == "a" })
        _ = try await store.claim(a.runID, a.node, epoch: 1, owner: "w", lease: lease)
        #expect(try await store.cancel(a.runID) == .cancelled)
        #expect(try await store.renew(a.runID, a.node, epoch: 1, owner: "w", lease: lease) == .cancelled)
        let b = try #require(created.ready.first { $0.node.stage == "b" })
        #expect(try await store.claim(b.runID, b.node, epoch: 1, owner: "w", lease: lease) == .cancelled)
        let status = try await store.status(a.runID)
        #expect(status.state == .cancelled)
        // Every unfinished node is cancelled, the running one too: its worker learns at renew.
        #expect(status.stages.map(\.state) == [.cancelled, .cancelled, .cancelled])
        #expect(try await store.commit(a.runID, a.node, epoch: 1, owner: "w", result: []) == .stale)
        #expect(try await store.staleCommits(a.runID) == 0)  // a cancelled node's late result is not a fencing event
        #expect(try await store.cancel(a.runID) == .alreadyEnded(.cancelled))
        await #expect(throws: GantryError.self) { try await store.cancel(RunID.make()) }
    }

    @Test func expiredLeasesAreFoundInBoundedBatches() async throws {
        let store = try makeStore()
        let yaml = "name: p\nstages:\n" + (0..<10).map { "  - { name: s\($0), task: noop }\n" }.joined()
        let created = try await store.createRun(try plan(yaml), input: [])
        let t0 = currentMilliseconds()
        let claims = try await store.claim(created.ready.map { .init(runID: $0.runID, node: $0.node, epoch: $0.epoch) }, owner: "dead-worker", lease: .seconds(1), now: t0)
        #expect(claims.allSatisfy { $0 == .claimed(epoch: 1, attempt: 1) })
        #expect(try await store.wake(created.runID, limit: 3, now: t0 + 500).ready.isEmpty)
        let first = try await store.wake(created.runID, limit: 3, now: t0 + 1500)
        #expect(first.ready.count == 3)
        #expect(first.more)
        var all = first.ready
        while true {
            let next = try await store.wake(created.runID, limit: 3, now: t0 + 1500)
            all += next.ready
            if !next.more { break }
        }
        #expect(Set(all.map(\.node)).count == 10)
        #expect(all.allSatisfy { $0.epoch == 2 && $0.attempt == 2 })
    }

    @Test func aTaskThatKeepsLosingItsWorkerIsPoison() async throws {
        let store = try makeStore { $0.maxLostLeases = 2 }
        let created = try await store.createRun(try plan("name: p\nstages:\n  - { name: a, task: noop }\n"), input: [])
        let a = created.ready[0]
        let t0 = currentMilliseconds()
        _ = try await store.claim(a.runID, a.node, epoch: 1, owner: "w1", lease: .seconds(1), now: t0)
        let requeued = try await store.wake(a.runID, now: t0 + 2000).ready
        #expect(requeued.map(\.epoch) == [2])
        _ = try await store.claim(a.runID, a.node, epoch: 2, owner: "w2", lease: .seconds(1), now: t0 + 2000)
        let second = try await store.wake(a.runID, now: t0 + 4000)
        #expect(second.ready.isEmpty)
        #expect(second.runState == .failed)
        let status = try await store.status(a.runID)
        #expect(status.stages[0].error?.contains("poison") == true)
        #expect(status.stages[0].deadLettered)
    }

    @Test func oversizedResultsAndInputsAreRefused() async throws {
        let store = try makeStore { $0.maxResultBytes = 100; $0.maxInputBytes = 10 }
        let plan = try plan("name: p\nstages:\n  - { name: a, task: noop }\n")
        let inputError = await #expect(throws: GantryError.self) { try await store.createRun(plan, input: [UInt8](repeating: 0, count: 11)) }
        #expect(inputError?.code == .payloadTooLarge)
        let created = try await store.createRun(plan, input: [])
        _ = try await store.claim(created.runID, created.ready[0].node, epoch: 1, owner: "w", lease: lease)
        let error = await #expect(throws: GantryError.self) {
            try await store.commit(created.runID, created.ready[0].node, epoch: 1, owner: "w", result: [UInt8](repeating: 1, count: 101))
        }
        #expect(error?.code == .payloadTooLarge)
        #expect(error?.message.contains("101 bytes") == true)
    }

    @Test func aRunDeadlineFailsTheRun() async throws {
        let store = try makeStore()
        let created = try await store.createRun(try plan("name: p\ntimeout: 2s\nstages:\n  - { name: a, task: noop }\n"), input: [], now: 1_000_000)
        let woken = try await store.wake(created.runID, now: 1_002_001)
        #expect(woken.runState == .failed)
        #expect(try await store.status(created.runID).reason == "run deadline exceeded")
    }

    @Test func everyStateChangeIsAnEvent() async throws {
        let store = try makeStore()
        let created = try await store.createRun(try plan("name: p\nstages:\n  - { name: a, task: noop }\n"), input: [])
        _ = try await runNode(store, created.ready[0])
        let events = try await store.events(created.runID)
        #expect(events.map { "\($0.kind):\($0.node):\($0.fields["s"] ?? "")" } == ["run::running", "node:a:running", "node:a:succeeded", "run::succeeded"])
        let later = try await store.events(created.runID, after: events[1].id)
        #expect(later.count == 2)
    }

    @Test func aBatchMixingRunsAnswersEveryItemAndRecordsEveryEvent() async throws {
        let store = try makeStore()
        let first = try await store.createRun(try plan("name: p\nstages:\n  - { name: a, task: noop }\n  - { name: b, task: noop }\n  - { name: c, task: noop, after: [a] }\n"), input: [])
        let second = try await store.createRun(try plan("name: q\nstages:\n  - { name: x, task: noop }\n  - { name: y, task: noop }\n"), input: [])
        let (r1, r2) = (first.runID, second.runID)
        let t0 = currentMilliseconds()
        // Claims of two runs, interleaved: a repeated node, an old epoch and a run that does not exist.
        let claims = try await store.claim([
            .init(runID: r1, node: NodeID(stage: "a"), epoch: 1), .init(runID: r2, node: NodeID(stage: "x"), epoch: 1), .init(runID: r1, node: NodeID(stage: "b"), epoch: 1),
            .init(runID: r1, node: NodeID(stage: "a"), epoch: 1), .init(runID: r2, node: NodeID(stage: "y"), epoch: 1), .init(runID: r1, node: NodeID(stage: "c"), epoch: 0),
            .init(runID: RunID.make(), node: NodeID(stage: "a"), epoch: 1),
        ], owner: "w", lease: lease, now: t0)
        #expect(claims == [.claimed(epoch: 1, attempt: 1), .claimed(epoch: 1, attempt: 1), .claimed(epoch: 1, attempt: 1), .busy,
                           .claimed(epoch: 1, attempt: 1), .early, .gone])
        // Commits of both runs, interleaved: a stale epoch, a repeated commit, and the last
        // commit of the second run ending it.
        let commits = try await store.commit([
            .init(runID: r1, node: NodeID(stage: "a"), epoch: 1, result: Array("ra".utf8)), .init(runID: r2, node: NodeID(stage: "x"), epoch: 1, result: Array("rx".utf8)),
            .init(runID: r1, node: NodeID(stage: "b"), epoch: 7, result: Array("old".utf8)), .init(runID: r1, node: NodeID(stage: "a"), epoch: 1, result: Array("again".utf8)),
            .init(runID: r2, node: NodeID(stage: "y"), epoch: 1, result: Array("ry".utf8)), .init(runID: r1, node: NodeID(stage: "b"), epoch: 1, result: Array("rb".utf8)),
        ], owner: "w", now: t0 + 1)
        #expect(commits == [
            .committed(ready: [ReadyNode(runID: r1, node: NodeID(stage: "c"), epoch: 1, attempt: 1)], runState: nil), .committed(ready: [], runState: nil),
            .stale, .stale, .committed(ready: [], runState: .succeeded), .committed(ready: [], runState: nil),
        ])
        #expect(try await store.results(r1, [NodeID(stage: "a"), NodeID(stage: "b")]) == [Array("ra".utf8), Array("rb".utf8)])
        #expect(try await store.results(r2, [NodeID(stage: "x"), NodeID(stage: "y")]) == [Array("rx".utf8), Array("ry".utf8)])
        #expect(try await store.staleCommits(r1) == 2)
        #expect(try await store.staleCommits(r2) == 0)
        #expect(try await store.runState(r2) == .succeeded)
        #expect(try await !store.activeRuns().contains(r2))
        let status = try await store.status(r1)
        #expect(status.doneStages == 2)
        #expect(status.stages.map(\.state) == [.succeeded, .succeeded, .queued])
        #expect(status.stages[0].resultBytes == 2)
        #expect(status.stages[0].owner == nil)
        // Every change is an event, once, in order, whatever the batch shared.
        func changes(_ run: RunID) async throws -> [String] {
            try await store.events(run).map { "\($0.kind):\($0.node):\($0.fields["s"] ?? ""):\($0.fields["e"] ?? "")" }
        }
        #expect(try await changes(r1) == ["run::running:", "node:a:running:1", "node:b:running:1", "node:a:succeeded:1", "node:b:succeeded:1"])
        #expect(try await changes(r2) == ["run::running:", "node:x:running:1", "node:y:running:1", "node:x:succeeded:1", "node:y:succeeded:1", "run::succeeded:"])
        let audits = try await store.audit([(r1, NodeID(stage: "a")), (r1, NodeID(stage: "b")), (r1, NodeID(stage: "c"))])
        #expect(audits.map(\.commitsRecorded) == [1, 1, 0])
        #expect(audits.map(\.nodeState) == [.succeeded, .succeeded, .queued])
        #expect(audits.map(\.hasResult) == [true, true, false])
    }

    @Test func eventsResumeInsideAnEntryOfSeveralEvents() async throws {
        let store = try makeStore()
        let yaml = "name: p\nstages:\n" + (0..<5).map { "  - { name: s\($0), task: noop }\n" }.joined()
        let created = try await store.createRun(try plan(yaml), input: [])
        let claims = try await store.claim(created.ready.map { .init(runID: $0.runID, node: $0.node, epoch: $0.epoch) }, owner: "w", lease: lease)
        #expect(claims.allSatisfy { $0 == .claimed(epoch: 1, attempt: 1) })
        let all = try await store.events(created.runID)
        #expect(all.map(\.node) == ["", "s0", "s1", "s2", "s3", "s4"])
        #expect(Set(all.map(\.id)).count == all.count)
        #expect(all.dropFirst().allSatisfy { $0.fields["o"] == "w" && $0.fields["s"] == "running" })
        // Read two at a time: nothing is lost or repeated, though the five claims share an entry.
        var seen: [String] = []
        var after = "0"
        while true {
            let page = try await store.events(created.runID, after: after, count: 2)
            seen += page.map(\.node)
            guard let last = page.last else { break }
            after = last.id
        }
        #expect(seen == all.map(\.node))
        let rest = try await store.waitForEvents(created.runID, after: all[2].id, timeout: .seconds(5))
        #expect(rest.map(\.node) == ["s2", "s3", "s4"])
    }

    @Test func aRedisRestartMidRunLosesNothing() async throws {
        try await withRedisTestServer { server in
            let store = try makeStore(url: server.url)
            let created = try await store.createRun(try plan("name: p\nstages:\n  - { name: a, task: noop }\n  - { name: b, task: noop, after: [a] }\n"), input: [])
            let a = created.ready[0]
            #expect(try await store.claim(a.runID, a.node, epoch: 1, owner: "w", lease: lease) == .claimed(epoch: 1, attempt: 1))
            try await server.stop()
            // While Redis is down the store fails with a retriable error naming the address.
            let down = await #expect(throws: GantryError.self) { try await store.renew(a.runID, a.node, epoch: 1, owner: "w", lease: lease) }
            #expect(down?.isRetriable == true)
            try await server.start()
            // The same client reconnects; the claim made before the restart is still there.
            let deadline = ContinuousClock.now + .seconds(20)
            let renewed = try await store.client.retrying(until: deadline) {
                try await store.renew(a.runID, a.node, epoch: 1, owner: "w", lease: lease)
            }
            #expect(renewed == .renewed)
            let next = readyOf(try await store.commit(a.runID, a.node, epoch: 1, owner: "w", result: Array("ok".utf8)))
            #expect(next.map(\.node.description) == ["b"])
            _ = try await runNode(store, next[0])
            #expect(try await store.runState(a.runID) == .succeeded)
        }
    }
}
