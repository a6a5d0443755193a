import GantryCore
import Logging
import Synchronization

/// Hands batches of commands to free connections; requests wait in line when all are busy.
///
/// Waiting is first come, first served and cancellable (a cancelled request leaves the line
/// with `.cancelled`). A connection that finishes a job takes the next work itself, on its
/// own thread, so a busy pool costs no extra thread hops. While requests wait, the ones at
/// the head of the line are sent together as one round trip (each still gets exactly its
/// own replies): many concurrent single commands then cost one write and one read per
/// group instead of one each.
final class RedisConnectionPool: Sendable {
    /// One caller's batch and where its replies go.
    struct Request: Sendable {
        let id: UInt64
        let batch: RedisPipeline
        let continuation: CheckedContinuation<[RedisValue], any Error>
    }

    private struct State {
        var idle: [RedisConnection]
        /// Waiting requests, oldest at `head`.
        var queue: [Request] = []
        var head = 0
        var nextRequestID: UInt64 = 0
        var isClosed = false

        var waiting: Int { queue.count - head }

        /// Takes the request at the head of the line and the ones right behind it that fit in
        /// one round trip with it.
        mutating func takeGroup() -> [Request] {
            var group = [queue[head]]
            var commands = queue[head].batch.count
            var bytes = queue[head].batch.byteCount
            let headMayBlock = queue[head].batch.mayBlock
            head += 1
            while !headMayBlock && head < queue.count {
                let next = queue[head].batch
                guard !next.mayBlock,
                      commands + next.count <= RedisConnectionPool.groupCommandLimit,
                      bytes + next.byteCount <= RedisConnectionPool.groupByteLimit
                else { break }
                group.append(queue[head])
                commands += next.count
                bytes += next.byteCount
                head += 1
            }
            if head == queue.count {
                queue.removeAll(keepingCapacity: true)
                head = 0
            } else if head > 64 && head * 2 > queue.count {
                // Drop the served prefix now and then so the array does not grow forever.
                queue.removeFirst(head)
                head = 0
            }
            return group
        }

        mutating func remove(id: UInt64) -> Request? {
            guard let index = queue[head...].firstIndex(where: { $0.id == id }) else { return nil }
            return queue.remove(at: index)
        }

        mutating func drain() -> [Request] {
            defer {
                queue = []
                head = 0
            }
            return Array(queue[head...])
        }
    }

    /// Waiting requests are grouped only up to these sizes, so a small request never waits
    /// behind a large foreign batch and a group never becomes a huge write.
    static let groupCommandLimit = 1024
    static let groupByteLimit = 1 << 20

    private let state: Mutex<State>
    private let connections: [RedisConnection]
    private let redactedURL: String

    init(configuration: RedisConfiguration, logger: Logger) {
        connections = (0..<configuration.poolSize).map {
            RedisConnection(id: $0, configuration: configuration, logger: logger)
        }
        // Handed out from the end: reversed so connection 0 goes first (easier to read in logs).
        state = Mutex(State(idle: connections.reversed()))
        redactedURL = configuration.redactedURL
    }

    /// The number of requests waiting for a free connection.
    var waiterCount: Int { state.withLock { $0.waiting } }

    /// Runs `batch` on the next free connection and returns its replies.
    func execute(_ batch: RedisPipeline) async throws -> [RedisValue] {
        let id = state.withLock { state in
            state.nextRequestID += 1
            return state.nextRequestID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[RedisValue], any Error>) in
                enum Outcome {
                    case queued
                    case dispatch(RedisConnection, [Request])
                    case failure(GantryError)
                }
                let outcome: Outcome = state.withLock { state in
                    if state.isClosed { return .failure(closedError()) }
                    // The cancellation handler may already have run and found nothing to
                    // remove; the flag is set before it runs, so checking here closes the gap.
                    if Task.isCancelled { return .failure(cancelledError()) }
                    state.queue.append(Request(id: id, batch: batch, continuation: continuation))
                    // Idle connections exist only while nobody waits, so this keeps the order.
                    guard let connection = state.idle.popLast() else { return .queued }
                    return .dispatch(connection, state.takeGroup())
                }
                switch outcome {
                case .queued: break
                case .dispatch(let connection, let group): dispatch(group, to: connection)
                case .failure(let error): continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            let request = state.withLock { $0.remove(id: id) }
            request?.continuation.resume(throwing: cancelledError())
        }
    }

    /// Serves `group` on `connection`'s thread, then keeps serving whatever waits.
    private func dispatch(_ group: [Request], to connection: RedisConnection) {
        let accepted = connection.submit { [self] in
            var next: [Request]? = group
            while let requests = next {
                connection.serve(requests)
                next = takeNextGroup(returning: connection)
            }
        }
        if !accepted {
            for request in group { request.continuation.resume(throwing: closedError()) }
        }
    }

    /// Called on a connection's thread when it is done: the next group to serve, or `nil`
    /// after putting the connection back (or shutting it down if the pool is closed).
    private func takeNextGroup(returning connection: RedisConnection) -> [Request]? {
        enum Next {
            case serve([Request])
            case idle
            case shutdown
        }
        let next: Next = state.withLock { state in
            if state.waiting > 0 { return .serve(state.takeGroup()) }
            if state.isClosed { return .shutdown }
            state.idle.append(connection)
            return .idle
        }
        switch next {
        case .serve(let group): return group
        case .idle: return nil
        case .shutdown:
            connection.shutdown()
            return nil
        }
    }

    /// Refuses new requests, fails every waiting one with `.closed`, and shuts down idle
    /// connections; busy connections finish their current group, then shut down.
    func close() {
        let (waiting, idle): ([Request], [RedisConnection]) = state.withLock { state in
            guard !state.isClosed else { return ([], []) }
            state.isClosed = true
            defer { state.idle = [] }
            return (state.drain(), state.idle)
        }
        for request in waiting { request.continuation.resume(throwing: closedError()) }
        for connection in idle { connection.shutdown() }
    }

    deinit {
        // Nothing can be running once the pool is gone (jobs hold it): stop every thread.
        for connection in connections { connection.shutdown() }
    }

    private func closedError() -> GantryError {
        GantryError(.closed, "the Redis client for \(redactedURL) is closed; create a new RedisClient")
    }

    private func cancelledError() -> GantryError {
        GantryError(.cancelled, "waiting for a free Redis connection to \(redactedURL) was cancelled")
    }
}
