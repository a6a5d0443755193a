import GantryCore
import GantryRedis
import GantryStore
import Synchronization

/// The answer of `/readyz`: every dependency the process needs, each up or not.
public struct ReadinessReport: Sendable, Hashable {
    /// One dependency's state.
    public struct Check: Sendable, Hashable {
        /// What was checked: `redis`, `broker`, …
        public var name: String
        /// Whether it answered.
        public var ok: Bool
        /// What it said, or the error.
        public var detail: String

        /// A check result.
        public init(name: String, ok: Bool, detail: String) {
            self.name = name
            self.ok = ok
            self.detail = detail
        }
    }

    /// Every check, in the order they were given.
    public var checks: [Check]

    /// A report of `checks`.
    public init(checks: [Check]) { self.checks = checks }

    /// True when every check passed.
    public var isReady: Bool { checks.allSatisfy(\.ok) }

    /// The report as a JSON object: `{"ready": true, "checks": {"redis": {"ok": true, "detail": "…"}}}`.
    public var json: JSONValue {
        .object([
            "ready": .bool(isReady),
            "checks": .object(Dictionary(checks.map { ($0.name, JSONValue.object(["ok": .bool($0.ok), "detail": .string($0.detail)])) }, uniquingKeysWith: { _, last in last })),
        ])
    }
}

/// Produces a ``ReadinessReport``; supplied by the process that runs the server.
public typealias ReadinessProbe = @Sendable () async -> ReadinessReport

/// Readiness checks of the connections every Gantry process has.
public enum Readiness {
    /// One named check: returns a detail when healthy, throws when not.
    public typealias Check = @Sendable () async throws -> String

    /// Runs `checks` concurrently, each bounded by `timeout`; a check that throws or does not
    /// answer in time is not ready.
    public static func probe(_ checks: [(name: String, check: Check)], timeout: Duration = .seconds(2)) -> ReadinessProbe {
        { @Sendable in
            await withTaskGroup(of: (Int, ReadinessReport.Check).self) { group in
                for (index, entry) in checks.enumerated() {
                    group.addTask {
                        (index, await run(entry.name, entry.check, timeout: timeout))
                    }
                }
                var results: [(Int, ReadinessReport.Check)] = []
                for await result in group { results.append(result) }
                return ReadinessReport(checks: results.sorted { $0.0 < $1.0 }.map(\.1))
            }
        }
    }

    /// Redis answers a `PING`.
    public static func redis(_ store: RedisStateStore) -> (name: String, check: Check) {
        ("redis", {
            let reply = try await store.client.send("PING")
            guard reply.string == "PONG" else { throw GantryError(.protocolError, "PING answered \(reply)") }
            return "PONG"
        })
    }

    /// The broker answers a question about `queue` (its depth: a round trip on RabbitMQ and Kafka).
    public static func broker(_ transport: any TaskTransport, queue: String) -> (name: String, check: Check) {
        ("broker", {
            let depth = try await transport.depth(of: queue)
            return "\(transport.name): queue '\(queue)' " + (depth.map { "holds \($0) messages" } ?? "reachable")
        })
    }

    private static func run(_ name: String, _ check: @escaping Check, timeout: Duration) async -> ReadinessReport.Check {
        // Unstructured on purpose: a check stuck in a call that ignores cancellation must not
        // hold the answer past the timeout.
        await withCheckedContinuation { (continuation: CheckedContinuation<ReadinessReport.Check, Never>) in
            let answer = OnceContinuation(continuation)
            let work = Task {
                do {
                    answer.resume(ReadinessReport.Check(name: name, ok: true, detail: try await check()))
                } catch {
                    answer.resume(ReadinessReport.Check(name: name, ok: false, detail: "\(error)"))
                }
            }
            Task {
                try? await Task.sleep(for: timeout)
                if answer.resume(ReadinessReport.Check(name: name, ok: false, detail: "no answer within \(timeout.shortDescription)")) {
                    work.cancel()
                }
            }
        }
    }
}

/// Resumes a continuation at most once; later answers are dropped.
private final class OnceContinuation<Value: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<Value, Never>?>

    init(_ continuation: CheckedContinuation<Value, Never>) {
        self.continuation = Mutex(continuation)
    }

    /// Resumes with `value` if nothing did yet; returns whether this call did.
    @discardableResult
    func resume(_ value: Value) -> Bool {
        guard let continuation = self.continuation.withLock({ current -> CheckedContinuation<Value, Never>? in
            defer { current = nil }
            return current
        }) else { return false }
        continuation.resume(returning: value)
        return true
    }
}
