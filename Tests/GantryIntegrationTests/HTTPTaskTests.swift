import Foundation
import GantryCore
import GantryTasks
import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// A real HTTP server on an ephemeral loopback port for the `http` task's tests.
///
/// | route | answers |
/// |---|---|
/// | `GET /hello` | 200 `hello from the test server`, header `x-served-by: gantry-tests` |
/// | `POST|PUT /echo` | 200 with the request body; `x-method` and `x-token` echo the method and `x-token` |
/// | `GET /status/:code` | that status, body `status <code>` |
/// | `GET /binary` | 200 with bytes that are not UTF-8 |
/// | `GET /big/:bytes` | 200 with that many bytes, with a content-length |
/// | `GET /stream/:bytes` | 200 with that many bytes, chunked (no content-length) |
/// | `GET /slow` | waits 2 s |
/// | `GET /flaky` | 503 on the first call of each test server, then 200 `recovered` |
final class HTTPTestServer: Sendable {
    let port: Int
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    private init(port: Int, group: ServiceGroup, task: Task<Void, any Error>) {
        self.port = port
        self.group = group
        self.task = task
    }

    func url(_ path: String) -> String { "http://127.0.0.1:\(port)\(path)" }

    static func start() async throws -> HTTPTestServer {
        let flakyCalls = Atomic<Int>(0)
        let router = Router()
        router.get("hello") { _, _ -> Response in
            Response(status: .ok, headers: [.init("x-served-by")!: "gantry-tests"], body: .init(byteBuffer: ByteBuffer(string: "hello from the test server")))
        }
        for method in [HTTPRequest.Method.post, .put] {
            router.on("echo", method: method) { request, _ -> Response in
                let body = try await request.body.collect(upTo: 16 << 20)
                let token = request.headers[.init("x-token")!] ?? ""
                return Response(status: .ok, headers: [.init("x-method")!: request.method.rawValue, .init("x-token")!: token], body: .init(byteBuffer: body))
            }
        }
        router.get("status/:code") { _, context -> Response in
            let code = context.parameters.get("code", as: Int.self) ?? 500
            return Response(status: .init(code: code), body: .init(byteBuffer: ByteBuffer(string: "status \(code)")))
        }
        router.get("binary") { _, _ -> Response in
            Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: [0xFF, 0xFE, 0x00, 0x80, 0x41])))
        }
        router.get("big/:bytes") { _, context -> Response in
            let count = context.parameters.get("bytes", as: Int.self) ?? 0
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(repeating: UInt8(ascii: "b"), count: count)))
        }
        router.get("stream/:bytes") { _, context -> Response in
            let count = context.parameters.get("bytes", as: Int.self) ?? 0
            let chunks = AsyncStream<ByteBuffer> { continuation in
                var left = count
                while left > 0 {
                    let size = min(left, 64 << 10)
                    continuation.yield(ByteBuffer(repeating: UInt8(ascii: "s"), count: size))
                    left -= size
                }
                continuation.finish()
            }
            return Response(status: .ok, body: .init(asyncSequence: chunks))
        }
        router.get("slow") { _, _ -> String in
            try await Task.sleep(for: .seconds(2))
            return "too late"
        }
        router.get("flaky") { _, _ -> Response in
            if flakyCalls.wrappingAdd(1, ordering: .relaxed).oldValue == 0 {
                return Response(status: .serviceUnavailable, body: .init(byteBuffer: ByteBuffer(string: "warming up")))
            }
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "recovered")))
        }
        var logger = Logger(label: "http-test-server")
        logger.logLevel = .warning
        let bound = Mutex<Int?>(nil)
        let app = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in bound.withLock { $0 = channel.localAddress?.port } },
            logger: logger
        )
        let group = ServiceGroup(services: [app], logger: logger)
        let task = Task { try await group.run() }
        let deadline = ContinuousClock.now + .seconds(20)
        while bound.withLock({ $0 }) == nil {
            guard ContinuousClock.now < deadline else {
                task.cancel()
                throw GantryError(.timeout, "the test HTTP server did not start listening within 20 s")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        return HTTPTestServer(port: bound.withLock { $0 }!, group: group, task: task)
    }

    func stop() async {
        await group.triggerGracefulShutdown()
        _ = try? await task.value
    }
}

/// The `http` built-in task against a real local server.
@Suite struct HTTPTaskTests {
    private func http(_ client: HTTPTaskClient = .shared, maxResponse: Int = 1 << 20) -> TaskFunction {
        BuiltinTasks.registry(configuration: BuiltinTaskConfiguration(httpTimeout: .seconds(10), httpMaxResponseBytes: maxResponse), http: client)["http"]!.function
    }

    private func context(_ args: [String: JSONValue] = [:]) -> TaskContext {
        TaskContext(runID: RunID.make(), node: NodeID(stage: "fetch"), args: args.isEmpty ? .null : .object(args))
    }

    private func error(_ operation: () async throws -> [UInt8]) async -> GantryError? {
        do {
            _ = try await operation()
            return nil
        } catch {
            return error as? GantryError
        }
    }

    private func withServer(_ body: (HTTPTestServer) async throws -> Void) async throws {
        let server = try await HTTPTestServer.start()
        do {
            try await body(server)
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    @Test func aGetWithTheURLAsInputReturnsStatusHeadersAndBody() async throws {
        try await withServer { server in
            let result = try JSONValue(parsing: try await http()(Array("  \(server.url("/hello"))\n".utf8), context()))
            #expect(result["status"] == .int(200))
            #expect(result["body"] == .string("hello from the test server"))
            #expect(result["base64"] == .bool(false))
            #expect(result["headers"]?["x-served-by"] == .string("gantry-tests"))
            #expect(result["headers"]?["content-length"] == .string("26"))
        }
    }

    @Test func withArgsURLTheInputIsTheBodyAndHeadersAndMethodAreSent() async throws {
        try await withServer { server in
            let post = try JSONValue(parsing: try await http()(Array("payload ✓".utf8), context(["url": .string(server.url("/echo")), "headers": .object(["x-token": "secret-1"])])))
            #expect(post["status"] == .int(200))
            #expect(post["body"] == .string("payload ✓"))
            #expect(post["headers"]?["x-method"] == .string("POST"))  // a body makes the default POST
            #expect(post["headers"]?["x-token"] == .string("secret-1"))
            let put = try JSONValue(parsing: try await http()(Array("v2".utf8), context(["url": .string(server.url("/echo")), "method": "put"])))
            #expect(put["headers"]?["x-method"] == .string("PUT"))
            #expect(put["body"] == .string("v2"))
            // A body that is not UTF-8 comes back as base64, flagged.
            let binary = try JSONValue(parsing: try await http()([], context(["url": .string(server.url("/binary"))])))
            #expect(binary["base64"] == .bool(true))
            let decoded = Data(base64Encoded: try #require(binary["body"]?.stringValue)).map { [UInt8]($0) }
            #expect(decoded == [0xFF, 0xFE, 0x00, 0x80, 0x41])
        }
    }

    @Test func serverErrorsAndRateLimitsAreRetriableClientErrorsAreNot() async throws {
        try await withServer { server in
            for code in [500, 503, 429] {
                let failure = await error { try await http()(Array(server.url("/status/\(code)").utf8), context()) }
                #expect(failure?.isRetriable == true, "\(code) should be retriable")
                #expect(failure?.message.contains("answered \(code): status \(code)") == true)
            }
            for code in [400, 404, 410] {
                let failure = await error { try await http()(Array(server.url("/status/\(code)").utf8), context()) }
                #expect(failure?.isRetriable == false, "\(code) should not be retriable")
                #expect(failure?.message.contains("GET \(server.url("/status/\(code)")) answered \(code)") == true)
            }
        }
        // Nothing listens there any more: a refused connection may pass, so it is retriable.
        let closed = try await HTTPTestServer.start()
        let url = closed.url("/hello")
        await closed.stop()
        let refused = await error { try await http()([], context(["url": .string(url), "timeout": "5s"])) }
        // Refused at once, or (on a loaded machine) still retrying the connection at the deadline.
        #expect(refused?.code == .connectionFailed || refused?.code == .timeout, "\(String(describing: refused))")
        #expect(refused?.isRetriable == true)
    }

    @Test func badRequestsAreClearNonRetriableErrors() async throws {
        for (input, args, expected) in [
            ("", [String: JSONValue](), "no URL"),
            ("ftp://example.com/file", [:], "not an http:// or https:// URL"),
            ("", ["url": .int(3)], "args.url must be a URL"),
            ("http://127.0.0.1:1/", ["method": "GE T"], "args.method"),
            ("http://127.0.0.1:1/", ["headers": .array([])], "args.headers"),
        ] {
            let failure = await error { try await http()(Array(input.utf8), context(args)) }
            #expect(failure?.code == .invalidArgument, "\(expected)")
            #expect(failure?.isRetriable == false)
            #expect(failure?.message.contains(expected) == true, "\(failure?.message ?? "no error") should mention \(expected)")
        }
    }

    @Test func responsesOverTheLimitFailWithTheSettingNamed() async throws {
        try await withServer { server in
            let run = http(maxResponse: 1000)
            let fits = try JSONValue(parsing: try await run(Array(server.url("/big/1000").utf8), context()))
            #expect(fits["status"] == .int(200))
            for path in ["/big/5000", "/stream/300000"] {
                let failure = await error { try await run(Array(server.url(path).utf8), context()) }
                #expect(failure?.code == .payloadTooLarge, "\(path)")
                #expect(failure?.isRetriable == false)
                #expect(failure?.message.contains("over the limit of 1000 bytes") == true)
                #expect(failure?.message.contains("tasks.http_max_response_bytes") == true)
            }
        }
    }

    @Test func aSlowServerTimesOutRetriably() async throws {
        try await withServer { server in
            let failure = await error { try await http()([], context(["url": .string(server.url("/slow")), "timeout": "300ms"])) }
            #expect(failure?.code == .timeout)
            #expect(failure?.isRetriable == true)
            #expect(failure?.message.contains("within 300ms") == true)
        }
    }

    @Test func theSharedClientIsClosedWithItsServiceGroup() async throws {
        try await withServer { server in
            let client = HTTPTaskClient()
            var logger = Logger(label: "test")
            logger.logLevel = .warning
            let group = ServiceGroup(services: [client], logger: logger)
            let running = Task { try await group.run() }
            let run = http(client)
            // Many requests, one client: they share its connection pool.
            try await withThrowingTaskGroup(of: Void.self) { requests in
                for _ in 0..<8 {
                    requests.addTask {
                        let result = try JSONValue(parsing: try await run(Array(server.url("/hello").utf8), context()))
                        #expect(result["status"] == .int(200))
                    }
                }
                try await requests.waitForAll()
            }
            await group.triggerGracefulShutdown()
            try await running.value
            // Once the worker stops, requests fail retriably: the task goes back to the queue.
            let closed = await error { try await run(Array(server.url("/hello").utf8), context()) }
            #expect(closed?.code == .closed)
            #expect(closed?.isRetriable == true)
            await client.shutdown()  // a second shutdown is harmless
        }
    }
}
