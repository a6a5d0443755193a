import Foundation
import GantryCore
import GantryObservability
import GantryStore
import GantryTasks
import Hummingbird
import Synchronization
import Testing

/// Notes the paths of the requests it passes on.
private struct RequestRecorder<Context: RequestContext>: RouterMiddleware {
    let seen: SeenPaths

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        seen.paths.withLock { $0.append(request.uri.path) }
        return try await next(request, context)
    }
}

/// Shared between the test and the server's middleware.
private final class SeenPaths: Sendable {
    let paths = Mutex<[String]>([])
    func contains(_ path: String) -> Bool { paths.withLock { $0.contains(path) } }
}

@Suite(.enabled(if: Chromium.path != nil, "needs Debian's chromium (ops/bootstrap installs it)"))
struct DashboardTests {
    /// A finished run with every kind of outcome, loaded in a real browser: the DAG and the stage
    /// table show each stage in the state the store has for it.
    @Test func theRunPageShowsEveryStageInItsState() async throws {
        let cluster = try ObservedCluster()
        let queue = "dash-\(UUID().uuidString.prefix(8).lowercased())"
        var registry = BuiltinTasks.registry
        registry.register("always-broken", kind: .io) { _, _ in throw GantryError(.taskFailed, "input is corrupt") }
        let server = try cluster.server(readinessQueue: queue)
        let worker = try cluster.worker(queues: [queue], registry: registry)
        let run = try await cluster.submit("""
            name: dashboard-check
            defaults: { queue: \(queue) }
            stages:
              - { name: lines, task: split, kind: cpu, args: { lines: 1 } }
              - { name: hash, task: sha256, kind: cpu, after: [lines], map: lines }
              - { name: report, task: report, after: [hash] }
              - { name: broken, task: always-broken, after: [report], retry: 1 }
              - { name: never, task: echo, after: [broken] }
            """, input: "one\ntwo\nthree\n", registry: registry)
        let (status, dom, overview) = try await withWorkerServices([server, worker, cluster.coordinator()]) {
            _ = try await cluster.waitForEnd(run)
            let address = try await server.waitUntilListening()
            return (
                try await cluster.store.status(run),
                try await Chromium.dumpDOM("http://\(address)/runs/\(run)"),
                try await Chromium.dumpDOM("http://\(address)/")
            )
        }
        #expect(status.state == .failed)
        let expected = Dictionary(uniqueKeysWithValues: status.stages.map { ($0.node.stage.rawValue, $0.state.rawValue) })
        #expect(expected["lines"] == "succeeded" && expected["hash"] == "succeeded" && expected["report"] == "succeeded")
        #expect(expected["broken"] == "failed")
        #expect(expected["never"] != "succeeded")
        // The SVG boxes and the table rows, as the browser built them.
        #expect(DOM.stageStates(dom, tag: "g") == expected)
        #expect(DOM.stageStates(dom, tag: "tr") == expected)
        #expect(DOM.elements(dom, tag: "path", having: "data-from").map { "\($0["data-from"]!)->\($0["data-to"]!)" }.sorted()
                == ["broken->never", "hash->report", "lines->hash", "report->broken"])
        #expect(DOM.text(dom, id: "run-state") == "failed")
        #expect(DOM.text(dom, id: "run-done") == "\(status.doneStages)/5 stages")
        #expect(dom.contains("3/3"))  // the mapped stage's elements
        #expect(dom.contains("input is corrupt"))
        #expect(dom.contains("<svg id=\"dag\""))
        // The overview lists the run and the worker.
        #expect(overview.contains("href=\"/runs/\(run)\""))
        #expect(overview.contains("dashboard-check"))
        #expect(overview.contains("data-queue=\"\(queue)\""))
    }

    /// A page opened while its run waits updates itself from the run's event stream: the browser
    /// connects, then the run moves on, and the page shows it without a reload.
    @Test func aRunPageUpdatesLiveFromTheEventStream() async throws {
        let cluster = try ObservedCluster()
        let queue = "dash-\(UUID().uuidString.prefix(8).lowercased())"
        let parked = queue + "-parked"
        let seen = SeenPaths()
        let server = try cluster.server(readinessQueue: queue) { router in
            router.add(middleware: RequestRecorder(seen: seen))
        }
        let run = try await cluster.submit("""
            name: live-check
            defaults: { queue: \(queue) }
            stages:
              - { name: first, task: echo }
              - { name: second, task: echo, after: [first], queue: \(parked) }
            """, input: "hello")
        let late = try cluster.worker(queues: [parked])
        let dom = try await withWorkerServices([server, try cluster.worker(queues: [queue]), cluster.coordinator()]) {
            // No worker consumes the parked queue yet: the run waits with `second` queued.
            try await redisWaitUntil("the second stage to be queued") {
                try await cluster.store.status(run).stages.last?.state == .queued
            }
            let address = try await server.waitUntilListening()
            // Virtual time stands still while the event stream is open, so the DOM is dumped
            // only after the stream has ended (the run ended) and the page has applied it.
            let browser = try Chromium.start("http://\(address)/runs/\(run)", ["--virtual-time-budget=3000", "--dump-dom"])
            try await redisWaitUntil("the page to open its event stream", timeout: .seconds(30)) { seen.contains("/runs/\(run)/stream") }
            return try await withWorkerServices([late]) {
                _ = try await cluster.waitForEnd(run)
                return try await browser.finish()
            }
        }
        // Rendered by the server with `second` queued; the script applied the stream's updates.
        #expect(DOM.stageStates(dom, tag: "g") == ["first": "succeeded", "second": "succeeded"])
        #expect(DOM.stageStates(dom, tag: "tr") == ["first": "succeeded", "second": "succeeded"])
        #expect(DOM.text(dom, id: "run-state") == "succeeded")
        #expect(DOM.text(dom, id: "live") == "run ended")
        #expect(dom.contains("second succeeded"))  // an event the script appended
    }
}
