import GantryCore
import Synchronization

/// Gathers requests made one at a time by many concurrent callers into batches, so that a
/// hundred workers' claims become one Redis round trip and one script call instead of a hundred.
///
/// Nothing waits for a batch to fill: a request finds a free slot and goes at once, alone if it
/// is alone; requests that arrive while `maxConcurrentBatches` batches are in flight wait for the
/// next one and go together. An idle system therefore sees no added latency, and a busy one
/// sees batches that grow with the load.
final class Coalescer<Request: Sendable, Response: Sendable>: Sendable {
    typealias Execute = @Sendable ([Request]) async throws -> [Response]

    private struct Pending {
        var request: Request
        var continuation: CheckedContinuation<Response, any Error>
    }

    private struct State {
        var pending: [Pending] = []
        var running = 0
    }

    private let state = Mutex(State())
    private let maxBatch: Int
    private let maxConcurrentBatches: Int

    /// - Parameters:
    ///   - maxBatch: the most requests in one batch.
    ///   - maxConcurrentBatches: batches in flight at once.
    init(maxBatch: Int, maxConcurrentBatches: Int) {
        precondition(maxBatch > 0 && maxConcurrentBatches > 0, "a coalescer needs room for one batch of one request")
        self.maxBatch = maxBatch
        self.maxConcurrentBatches = maxConcurrentBatches
    }

    /// Runs `request` in the next batch and returns its response; throws what the batch threw.
    ///
    /// `execute` runs one batch and returns one response per request, in order; every caller
    /// of one coalescer passes the same operation (the one that starts a batch runs it).
    func submit(_ request: Request, execute: @escaping Execute) async throws -> Response {
        // Alone with a free slot: run the batch of one in the caller's own task, sparing the
        // hops to a draining task and back; whatever arrives meanwhile is drained after it.
        let alone = state.withLock { state in
            guard state.pending.isEmpty, state.running < maxConcurrentBatches else { return false }
            state.running += 1
            return true
        }
        if alone {
            defer { leaveSlot(execute) }
            return try Self.checked(try await execute([request]), count: 1)[0]
        }
        return try await withCheckedThrowingContinuation { continuation in
            let startsBatch = state.withLock { state in
                state.pending.append(Pending(request: request, continuation: continuation))
                guard state.running < maxConcurrentBatches else { return false }
                state.running += 1
                return true
            }
            if startsBatch {
                Task { await self.drain(execute) }
            }
        }
    }

    /// Gives back the slot of a batch run in a caller's task, or hands it to a draining task if
    /// requests arrived meanwhile.
    private func leaveSlot(_ execute: @escaping Execute) {
        let more = state.withLock { state in
            if state.pending.isEmpty { state.running -= 1 }
            return !state.pending.isEmpty
        }
        if more { Task { await self.drain(execute) } }
    }

    /// `responses`, when there is one per request of a batch of `count`.
    private static func checked(_ responses: [Response], count: Int) throws -> [Response] {
        guard responses.count == count else {
            throw GantryError(.protocolError, "a batch of \(count) requests returned \(responses.count) responses")
        }
        return responses
    }

    /// Runs batches until nothing is pending.
    private func drain(_ execute: Execute) async {
        while true {
            let batch: [Pending]? = state.withLock { state in
                guard !state.pending.isEmpty else {
                    state.running -= 1
                    return nil
                }
                let count = min(maxBatch, state.pending.count)
                let batch = Array(state.pending.prefix(count))
                state.pending.removeFirst(count)
                return batch
            }
            guard let batch else { return }
            do {
                let responses = try Self.checked(try await execute(batch.map(\.request)), count: batch.count)
                for (pending, response) in zip(batch, responses) { pending.continuation.resume(returning: response) }
            } catch {
                for pending in batch { pending.continuation.resume(throwing: error) }
            }
        }
    }
}
