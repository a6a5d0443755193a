import GantryCore
import Synchronization

/// One answer the connection thread owes an awaiting task, delivered exactly once.
///
/// The thread may answer before the task has attached its continuation, and the task may be
/// cancelled while the thread is still working; whichever outcome arrives first wins and every
/// later one is dropped, so a continuation is never resumed twice or leaked.
final class PendingReply<Value: Sendable>: Sendable {
    private enum State {
        case pending
        case waiting(CheckedContinuation<Value, any Error>)
        case answered(Result<Value, GantryError>)
        case delivered
    }

    private let state = Mutex<State>(.pending)

    /// Whether an outcome (answer, failure or cancellation) already arrived; the thread skips
    /// work whose caller is no longer waiting.
    var isSettled: Bool {
        state.withLock { state in
            switch state {
            case .pending, .waiting: false
            case .answered, .delivered: true
            }
        }
    }

    func succeed(_ value: Value) {
        settle(.success(value))
    }

    func fail(_ error: GantryError) {
        settle(.failure(error))
    }

    private func settle(_ result: Result<Value, GantryError>) {
        let waiter: CheckedContinuation<Value, any Error>? = state.withLock { state in
            switch state {
            case .pending:
                state = .answered(result)
                return nil
            case .waiting(let continuation):
                state = .delivered
                return continuation
            case .answered, .delivered:
                return nil
            }
        }
        // Resume outside the lock: resuming may run the awaiting task's code inline.
        waiter?.resume(with: result.mapError { $0 as any Error })
    }

    private func attach(_ continuation: CheckedContinuation<Value, any Error>) {
        let early: Result<Value, GantryError>? = state.withLock { state in
            switch state {
            case .pending:
                state = .waiting(continuation)
                return nil
            case .answered(let result):
                state = .delivered
                return result
            case .waiting, .delivered:
                preconditionFailure("a PendingReply is awaited once")
            }
        }
        if let early {
            continuation.resume(with: early.mapError { $0 as any Error })
        }
    }

    /// Waits for the outcome; cancelling the waiting task settles it with `.cancelled`.
    func value(_ operation: String) async throws -> Value {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                attach(continuation)
            }
        } onCancel: {
            fail(GantryError(.cancelled, "\(operation) was cancelled"))
        }
    }
}
