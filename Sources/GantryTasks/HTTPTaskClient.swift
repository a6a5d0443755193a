import AsyncHTTPClient
import GantryCore
import ServiceLifecycle
import Synchronization

/// The one HTTP client every `http` task of a process shares, and its lifetime.
///
/// The client is made on the first request (a worker that never runs `http` never makes one)
/// on AsyncHTTPClient's process-wide event loop group, so it starts no threads of its own. Run
/// it as a service in the worker's `ServiceGroup`, after the worker: shutdown runs in reverse,
/// so the worker drains its in-flight requests first, then the client closes its connections.
/// Requests after shutdown fail with a retriable `.closed`, and the message goes back to the
/// broker for another worker.
///
/// ```swift
/// let http = HTTPTaskClient()
/// let registry = BuiltinTasks.registry(configuration: tasks, http: http)
/// let group = ServiceGroup(services: [pool, http, worker], …)
/// ```
public final class HTTPTaskClient: Service, Sendable {
    private enum State {
        case idle
        case running(HTTPClient)
        case shutDown
    }

    private let state: Mutex<State>
    /// True for ``shared``, which uses AsyncHTTPClient's own never-shut-down client.
    private let usesSharedClient: Bool

    /// A client that is made on first use and closed by ``shutdown()`` (or by the service group).
    public init() {
        state = Mutex(.idle)
        usesSharedClient = false
    }

    private init(sharing: Void) {
        state = Mutex(.idle)
        usesSharedClient = true
    }

    /// For processes without a service lifecycle (`gantry run-local`, pool children, tests):
    /// AsyncHTTPClient's process-wide `HTTPClient.shared`, which lives as long as the process and
    /// is touched only by the first request (so listing or validating tasks starts no threads);
    /// ``shutdown()`` does nothing to it.
    public static let shared = HTTPTaskClient(sharing: ())

    /// The client, made on first use.
    ///
    /// - Throws: a retriable `.closed` once the client was shut down.
    func client() throws -> HTTPClient {
        if usesSharedClient { return HTTPClient.shared }
        return try state.withLock { state in
            switch state {
            case .idle:
                var configuration = HTTPClient.Configuration()
                configuration.timeout = .init(connect: .seconds(10))
                let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
                state = .running(client)
                return client
            case .running(let client):
                return client
            case .shutDown:
                throw GantryError(.closed, "http: this worker is stopping and its HTTP client is closed; the task goes back to the queue", isRetriable: true)
            }
        }
    }

    /// Waits for the service group's graceful shutdown, then closes the client.
    public func run() async throws {
        // Cancellation ends the wait too; either way the client must be closed.
        try? await gracefulShutdown()
        await shutdown()
    }

    /// Closes the client's connections; later requests fail with a retriable `.closed`. Safe to
    /// call more than once.
    public func shutdown() async {
        guard !usesSharedClient else { return }
        let client = state.withLock { state -> HTTPClient? in
            defer { state = .shutDown }
            if case .running(let client) = state { return client }
            return nil
        }
        // Errors here mean connections did not close cleanly; there is nothing left to do with them.
        try? await client?.shutdown()
    }

    deinit {
        // A client that was never shut down (a caller skipped shutdown()) must not be dropped
        // open: AsyncHTTPClient treats that as a leak. Close it in the background.
        if !usesSharedClient, case .running(let client) = state.withLock({ $0 }) {
            client.shutdown { _ in }
        }
    }
}
