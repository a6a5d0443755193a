import GantryCore
import GantryStore
import Hummingbird
import Logging

/// The web dashboard a coordinator serves: recent runs, live workers and queues, and a page per
/// run with its DAG drawn as SVG, coloured by state and updated live from the run's event stream.
///
/// Everything is read through the store's status API (read-only) and rendered on the server;
/// the pages carry a small inline script and need nothing else.
///
/// | route | what |
/// |---|---|
/// | `GET /` | recent runs, workers, queues (refreshes itself) |
/// | `GET /runs/{run}` | one run: DAG, stages, events; live while the run is running |
/// | `GET /runs/{run}/stream` | server-sent events: `update` (the run as JSON) on every change, `end` when it ended |
/// | `GET /api/runs`, `/api/runs/{run}`, `/api/workers` | the same data as JSON |
public struct Dashboard: Sendable {
    private let store: RedisStateStore
    private let transport: (any TaskTransport)?
    private let leaderLease: LeaderLease?
    private let logger: Logger
    /// How often a run's stream is read for new events.
    public var pollInterval: Duration
    /// How many recent runs the overview lists.
    public var recentRunLimit: Int

    /// A dashboard over `store`; `transport` gives queue depths, `leaderLease` the leader.
    public init(
        store: RedisStateStore, transport: (any TaskTransport)? = nil, leaderLease: LeaderLease? = nil, logger: Logger = Logger(label: "gantry.dashboard"),
        pollInterval: Duration = .milliseconds(300), recentRunLimit: Int = 25
    ) {
        self.store = store
        self.transport = transport
        self.leaderLease = leaderLease
        self.logger = logger
        self.pollInterval = pollInterval
        self.recentRunLimit = recentRunLimit
    }

    /// Adds the dashboard's routes to `router`.
    public func register<Context: RequestContext>(on router: Router<Context>) {
        router.get("/") { request, _ in
            let overview = try await self.overview()
            let now = currentMilliseconds()
            if request.uri.queryParameters.get("fragment") != nil {
                return Self.html(DashboardPages.overviewFragment(overview, now: now))
            }
            return Self.html(DashboardPages.overview(overview, now: now))
        }
        router.get("/runs/:run") { _, context in
            let text = try context.parameters.require("run")
            let leader = try? await self.leaderLease?.currentHolder()
            guard let run = RunID(rawValue: text.uppercased()) else {
                return Self.html(DashboardPages.notFound("'\(text)' is not a run id: expected 26 characters of Crockford base32, as printed by `gantry submit`", leader: leader), status: .notFound)
            }
            do {
                let view = try await self.view(of: run)
                return Self.html(DashboardPages.run(view, leader: leader, now: currentMilliseconds()))
            } catch let error as GantryError where error.code == .notFound {
                return Self.html(DashboardPages.notFound(error.message, leader: leader), status: .notFound)
            }
        }
        router.get("/runs/:run/stream") { request, context in
            let run = try RunID(validating: try context.parameters.require("run"))
            let after = request.uri.queryParameters.get("after") ?? "0"
            return self.stream(run, after: after)
        }
        router.get("/api/runs") { _, _ in
            let overview = try await self.overview()
            return Self.json(.array(overview.runs.map { $0.json() }))
        }
        router.get("/api/runs/:run") { _, context in
            let run = try RunID(validating: try context.parameters.require("run"))
            do {
                return Self.json(try await self.view(of: run).json())
            } catch let error as GantryError where error.code == .notFound {
                return Self.json(.object(["error": .string(error.message)]), status: .notFound)
            }
        }
        router.get("/api/workers") { _, _ in
            let workers = try await self.store.workers()
            return Self.json(.array(workers.map { worker in .object(worker.fields.mapValues(JSONValue.string).merging(["id": .string(worker.id)]) { _, new in new }) }))
        }
    }

    // MARK: Data

    /// A run with its last events.
    public func view(of run: RunID, eventLimit: Int = 200) async throws -> RunView {
        let status = try await store.status(run)
        let events = try await latestEvents(run, limit: eventLimit)
        return RunView(status: status, events: events)
    }

    /// The newest `limit` events of `run`, oldest first.
    private func latestEvents(_ run: RunID, limit: Int) async throws -> [RunEvent] {
        // The stream is capped at about 10,000 entries; read it forward and keep the tail.
        var all: [RunEvent] = []
        var after = "0"
        while true {
            let batch = try await store.events(run, after: after, count: 1000)
            all += batch
            if all.count > limit { all.removeFirst(all.count - limit) }
            guard batch.count == 1000, let last = batch.last else { break }
            after = last.id
        }
        return all
    }

    /// Recent runs, live workers, queues in use and the leader.
    public func overview() async throws -> Overview {
        let ids = try await store.recentRuns(limit: recentRunLimit)
        let runs = try await withThrowingTaskGroup(of: (Int, RunView?).self) { group in
            for (index, id) in ids.enumerated() {
                group.addTask {
                    do {
                        return (index, RunView(status: try await self.store.status(id)))
                    } catch let error as GantryError where error.code == .notFound {
                        return (index, nil)  // expired between the listing and the read
                    }
                }
            }
            var found: [(Int, RunView)] = []
            for try await (index, view) in group { if let view { found.append((index, view)) } }
            return found.sorted { $0.0 < $1.0 }.map(\.1)
        }
        let workers = try await store.workers().map { WorkerRow(id: $0.id, fields: $0.fields) }
        var consumers: [String: Int] = [:]
        for worker in workers {
            for queue in worker.queues.split(separator: ",") { consumers[String(queue), default: 0] += 1 }
        }
        var names = Set(consumers.keys)
        for run in runs where !run.state.isFinal { for stage in run.stages { names.insert(stage.queue) } }
        let queues = await withTaskGroup(of: QueueRow.self) { group in
            for name in names.sorted() {
                let count = consumers[name] ?? 0
                group.addTask { await self.queueRow(name, consumers: count) }
            }
            var rows: [QueueRow] = []
            for await row in group { rows.append(row) }
            return rows.sorted { $0.name < $1.name }
        }
        let leader = try? await leaderLease?.currentHolder()
        return Overview(runs: runs, workers: workers, queues: queues, leader: leader, broker: transport?.name ?? "no broker")
    }

    private func queueRow(_ name: String, consumers: Int) async -> QueueRow {
        guard let transport else { return QueueRow(name: name, depth: nil, deadLetters: nil, consumers: consumers, problem: "no broker connection") }
        do {
            let depth = try await transport.depth(of: name)
            let dead = try await transport.depth(of: transport.deadLetterQueue(of: name))
            return QueueRow(name: name, depth: depth, deadLetters: dead, consumers: consumers, problem: nil)
        } catch {
            return QueueRow(name: name, depth: nil, deadLetters: nil, consumers: consumers, problem: "\(error)")
        }
    }

    // MARK: Live updates

    /// Server-sent events for `run`: an `update` with the run's JSON (and the events after
    /// `after`) at once and whenever its event stream grows, then `end` once the run has ended.
    private func stream(_ run: RunID, after: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        let body = ResponseBody { writer in
            var last = after
            var first = true
            var idle = ContinuousClock.now
            while !Task.isCancelled {
                var events: [RunEvent]
                do {
                    events = try await self.store.events(run, after: last, count: 500)
                } catch {
                    try await writer.write(ByteBuffer(string: "event: problem\ndata: \(JSONValue.string("\(error)").jsonString)\n\n"))
                    break
                }
                if first || !events.isEmpty {
                    first = false
                    if let newest = events.last { last = newest.id }
                    let status: RunStatus
                    do {
                        status = try await self.store.status(run)
                        if status.state.isFinal {
                            // The run ended after the events above were read: its last events
                            // (written by the same script that ended it) go in this final update.
                            let rest = try await self.store.events(run, after: last, count: 500)
                            events += rest
                            if let newest = rest.last { last = newest.id }
                        }
                    } catch {
                        try await writer.write(ByteBuffer(string: "event: problem\ndata: \(JSONValue.string("\(error)").jsonString)\n\n"))
                        break
                    }
                    let view = RunView(status: status, events: events)
                    try await writer.write(ByteBuffer(string: "event: update\nid: \(last)\ndata: \(view.json().jsonString)\n\n"))
                    idle = ContinuousClock.now
                    if status.state.isFinal {
                        try await writer.write(ByteBuffer(string: "event: end\ndata: \(JSONValue.string(status.state.rawValue).jsonString)\n\n"))
                        break
                    }
                } else if ContinuousClock.now - idle > .seconds(15) {
                    try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))  // proxies close silent streams
                    idle = ContinuousClock.now
                }
                try await Task.sleep(for: self.pollInterval)
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: headers, body: body)
    }

    // MARK: Responses

    static func html(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "text/html; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: value.jsonString + "\n")))
    }
}
