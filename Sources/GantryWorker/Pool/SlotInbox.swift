import Synchronization

/// Something a pool slot's supervisor reacts to.
///
/// Everything that can happen to a slot (a task assigned, a caller giving up, a frame or the end
/// of the child's output, a timer, shutdown) arrives through one ``SlotInbox``, so the supervisor
/// handles it in one place and in order, and never waits on two things at once.
enum SlotEvent: Sendable {
    /// The pool assigned a task to this slot; take it from the state machine.
    case work
    /// The caller of the running task `jobID` was cancelled.
    case interrupt(jobID: UInt64)
    /// The pool is shutting down.
    case shutdown
    /// A frame payload from the child of `generation`.
    case frame(generation: UInt64, payload: [UInt8])
    /// The stdout of the child of `generation` ended (it exited, or closed it), or carried
    /// something that is not frames (`problem`).
    case outputClosed(generation: UInt64, problem: String?)
    /// Writing a request to the stdin of the child of `generation` failed: it is gone or going.
    case inputFailed(generation: UInt64)
    /// The timer armed with `token` went off.
    case timer(token: UInt64)
}

/// The mailbox of one pool slot: many producers, one consumer (the slot's supervisor).
final class SlotInbox: Sendable {
    private struct State {
        var events: [SlotEvent] = []
        var waiter: CheckedContinuation<SlotEvent, Never>?
    }

    private let state = Mutex(State())

    /// Delivers an event; never blocks.
    func push(_ event: SlotEvent) {
        let waiter = state.withLock { state -> CheckedContinuation<SlotEvent, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.events.append(event)
            return nil
        }
        waiter?.resume(returning: event)
    }

    /// The oldest undelivered event, waiting for one if there is none. Cancellation of the
    /// consumer reads as ``SlotEvent/shutdown``, so a cancelled supervisor stops its child.
    func next() async -> SlotEvent {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let event = state.withLock { state -> SlotEvent? in
                    if !state.events.isEmpty { return state.events.removeFirst() }
                    state.waiter = continuation
                    return nil
                }
                if let event { continuation.resume(returning: event) }
            }
        } onCancel: {
            self.push(.shutdown)
        }
    }

    /// Runs `body` with a timer that pushes ``SlotEvent/timer(token:)`` after `duration`
    /// (no timer when `duration` is `nil`); the timer is cancelled when `body` returns.
    func withTimer<T>(_ duration: Duration?, token: UInt64, _ body: () async -> T) async -> T {
        guard let duration else { return await body() }
        return await withTaskGroup(of: Void.self) { group in
            group.addTask {
                // A cancelled sleep means body finished first: no event.
                if (try? await Task.sleep(for: duration)) != nil {
                    self.push(.timer(token: token))
                }
            }
            let result = await body()
            group.cancelAll()
            return result
        }
    }
}
