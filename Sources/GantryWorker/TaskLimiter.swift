import GantryCore
import Synchronization

/// Per-task-type in-flight limits (`worker.task_limits`): a counting semaphore for each limited
/// task name, waited on in arrival order. Task names without a limit pass straight through.
final class TaskLimiter: Sendable {
    private struct Waiter {
        var id: UInt64
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct Gate {
        var limit: Int
        var inUse = 0
        var waiters: [Waiter] = []
    }

    private struct State {
        var gates: [String: Gate]
        var lastID: UInt64 = 0
    }

    private let state: Mutex<State>

    init(limits: [String: Int]) {
        state = Mutex(State(gates: limits.mapValues { Gate(limit: max(1, $0)) }))
    }

    /// Runs `body` once `task` has a free slot, and frees it afterwards.
    ///
    /// - Throws: `CancellationError` if the calling task is cancelled while waiting.
    func withSlot<T>(for task: String, _ body: () async throws -> T) async throws -> T {
        guard state.withLock({ $0.gates[task] != nil }) else { return try await body() }
        try await acquire(task)
        defer { release(task) }
        return try await body()
    }

    private func acquire(_ task: String) async throws {
        let id = state.withLock { state -> UInt64 in
            state.lastID += 1
            return state.lastID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let granted = state.withLock { state -> Bool in
                    guard var gate = state.gates[task] else { return true }
                    defer { state.gates[task] = gate }
                    if gate.inUse < gate.limit {
                        gate.inUse += 1
                        return true
                    }
                    gate.waiters.append(Waiter(id: id, continuation: continuation))
                    return false
                }
                if granted {
                    continuation.resume()
                } else if Task.isCancelled {
                    // The cancellation handler may have run before the waiter was queued.
                    cancel(id, task: task)
                }
            }
        } onCancel: {
            self.cancel(id, task: task)
        }
    }

    private func cancel(_ id: UInt64, task: String) {
        let waiter = state.withLock { state -> Waiter? in
            guard let index = state.gates[task]?.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return state.gates[task]?.waiters.remove(at: index)
        }
        waiter?.continuation.resume(throwing: CancellationError())
    }

    /// Hands the slot to the longest waiter, or frees it.
    private func release(_ task: String) {
        let next = state.withLock { state -> Waiter? in
            guard var gate = state.gates[task] else { return nil }
            defer { state.gates[task] = gate }
            if gate.waiters.isEmpty {
                gate.inUse -= 1
                return nil
            }
            return gate.waiters.removeFirst()
        }
        next?.continuation.resume()
    }
}
