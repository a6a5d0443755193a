import GantryCore

extension ChildProcessPool {
    /// A call waiting for, or being served by, a child.
    struct Job: Sendable {
        let id: UInt64
        let task: String
        /// The request, already framed: encoding happens in the caller's task, not the slot's.
        let frame: [UInt8]
        let timeout: Duration?
        let continuation: CheckedContinuation<Outcome, any Error>
    }

    /// The pool's shared state: which calls wait, which slots are idle, who runs what, and the
    /// counters. It is only changed under the pool's mutex, and its methods return the actions
    /// (wake a slot, fail a caller) to run after the lock is released.
    struct StateMachine {
        enum Phase {
            case notStarted
            case running
            case shuttingDown
        }

        enum Action {
            case notify(SlotInbox, SlotEvent)
            case fail(CheckedContinuation<Outcome, any Error>, GantryError)
        }

        /// How a child's life ended, for the counters.
        enum LifeEnd {
            case crashed
            case recycled
            case stopped
            case shutdown
        }

        private enum Place {
            /// Waiting in ``queue``.
            case queued
            /// Handed to an idle slot, which has been told but has not taken it yet.
            case assigned(slot: Int)
            /// Written (or about to be) to the slot's child; only that slot finishes it now.
            case started(slot: Int)
        }

        private struct Entry {
            var job: Job
            var place: Place
        }

        private struct Slot {
            let inbox: SlotInbox
            var pid: Int32?
            var isIdle = false
            var assigned: UInt64?
            var running: UInt64?
            var task: String?
            var tasksServed = 0
        }

        private(set) var phase = Phase.notStarted
        /// Whether ``start()`` ever succeeded, so that shutdown knows whether to wait for children.
        private(set) var hasStarted = false
        private var slots: [Slot]
        private var entries: [UInt64: Entry] = [:]
        /// Queued job ids, oldest first; ids of jobs that were cancelled meanwhile are skipped.
        private var queue: [UInt64] = []
        /// Idle slots, longest idle first.
        private var idle: [Int] = []
        private var totals = Counters()
        private var lastJobID: UInt64 = 0

        init(size: Int) {
            slots = (0..<size).map { _ in Slot(inbox: SlotInbox()) }
        }

        // MARK: Lifecycle

        /// Moves to running; false if the pool already ran or was shut down.
        mutating func start() -> Bool {
            guard phase == .notStarted else { return false }
            phase = .running
            hasStarted = true
            return true
        }

        /// Moves to shutting down: every call not yet written to a child fails with `.closed`, and
        /// every slot is told to stop its child.
        mutating func shutdown() -> [Action] {
            guard phase != .shuttingDown else { return [] }
            phase = .shuttingDown
            var actions = failWaiting { task in
                GantryError(.closed, "the process pool shut down before task '\(task)' could run", isRetriable: true)
            }
            idle.removeAll()
            for index in slots.indices {
                slots[index].isIdle = false
                slots[index].assigned = nil
                actions.append(.notify(slots[index].inbox, .shutdown))
            }
            return actions
        }

        var isShuttingDown: Bool { phase == .shuttingDown }

        func inbox(of slot: Int) -> SlotInbox { slots[slot].inbox }

        mutating func makeJobID() -> UInt64 {
            lastJobID += 1
            return lastJobID
        }

        // MARK: Callers

        /// Queues a call, handing it to an idle slot if there is one.
        mutating func submit(_ job: Job) -> [Action] {
            guard phase != .shuttingDown else {
                return [.fail(job.continuation, GantryError(.closed, "the process pool is shut down; task '\(job.task)' was not run", isRetriable: true))]
            }
            entries[job.id] = Entry(job: job, place: .queued)
            queue.append(job.id)
            return dispatch()
        }

        /// The caller gave up (cancelled, or waited too long): a call not yet started fails with
        /// `error` now; a started one is interrupted, and its slot stops the child and fails it.
        mutating func cancel(_ id: UInt64, error: GantryError) -> [Action] {
            guard let entry = entries[id] else { return [] }
            switch entry.place {
            case .queued:
                entries[id] = nil
            case .assigned(let slot):
                // The slot was told about it; when it looks, it finds nothing and goes idle again.
                entries[id] = nil
                slots[slot].assigned = nil
            case .started(let slot):
                return [.notify(slots[slot].inbox, .interrupt(jobID: id))]
            }
            return [.fail(entry.job.continuation, error)]
        }

        /// Fails the call with `error` if it is still waiting for a child; a started call is left alone.
        mutating func expireIfWaiting(_ id: UInt64, error: GantryError) -> [Action] {
            guard let entry = entries[id] else { return [] }
            if case .started = entry.place { return [] }
            return cancel(id, error: error)
        }

        // MARK: Slots

        /// The child of `slot` is up.
        mutating func childStarted(_ slot: Int, pid: Int32) {
            slots[slot].pid = pid
            slots[slot].tasksServed = 0
            totals.alive += 1
            totals.spawned += 1
        }

        /// The child of `slot` is gone (reaped); the counters say why.
        mutating func childEnded(_ slot: Int, _ end: LifeEnd) {
            // A spawn that failed never started a child.
            guard slots[slot].pid != nil else { return }
            slots[slot].pid = nil
            totals.alive -= 1
            switch end {
            case .crashed: totals.respawnedAfterCrash += 1
            case .recycled: totals.recycled += 1
            case .stopped: totals.killed += 1
            case .shutdown: break
            }
        }

        /// The slot's child is ready for work: the oldest queued call, now started on it, or `nil`
        /// after marking the slot idle (it will get ``SlotEvent/work``).
        mutating func slotReady(_ slot: Int) -> Job? {
            guard phase != .shuttingDown, !slots[slot].isIdle, slots[slot].running == nil else { return nil }
            if let id = popQueued() {
                return start(id, on: slot)
            }
            slots[slot].isIdle = true
            idle.append(slot)
            return nil
        }

        /// The call assigned to the slot, now started on it; `nil` if it was cancelled meanwhile.
        mutating func takeAssigned(_ slot: Int) -> Job? {
            guard let id = slots[slot].assigned else { return nil }
            slots[slot].assigned = nil
            guard let entry = entries[id], case .assigned(slot) = entry.place else { return nil }
            return start(id, on: slot)
        }

        /// The slot's child is going away: stop giving it work, and put a call assigned to it but
        /// not yet started back at the front of the queue.
        mutating func slotUnavailable(_ slot: Int) -> [Action] {
            if slots[slot].isIdle {
                slots[slot].isIdle = false
                idle.removeAll { $0 == slot }
            }
            if let id = slots[slot].assigned {
                slots[slot].assigned = nil
                if let entry = entries[id], case .assigned(slot) = entry.place {
                    entries[id]?.place = .queued
                    queue.insert(id, at: 0)
                }
            }
            return dispatch()
        }

        /// The started call answered; returns it so that its caller gets the answer.
        mutating func finish(_ id: UInt64, on slot: Int) -> Job? {
            guard slots[slot].running == id else { return nil }
            slots[slot].running = nil
            slots[slot].task = nil
            slots[slot].tasksServed += 1
            totals.tasksRun += 1
            return entries.removeValue(forKey: id)?.job
        }

        /// The started call of a slot whose child ended without answering it, for the slot to fail.
        mutating func abandon(_ slot: Int) -> Job? {
            guard let id = slots[slot].running else { return nil }
            slots[slot].running = nil
            slots[slot].task = nil
            return entries.removeValue(forKey: id)?.job
        }

        /// A child could not be started: when no child is alive nothing can serve the queue, so
        /// its calls fail with `error` rather than wait for a child that may never come.
        mutating func childCouldNotStart(_ error: GantryError) -> [Action] {
            guard totals.alive == 0 else { return [] }
            return failWaiting { _ in error }
        }

        // MARK: Reading

        var counters: Counters {
            var snapshot = totals
            snapshot.busy = slots.filter { $0.running != nil }.count
            snapshot.waiting = entries.values.filter { if case .started = $0.place { false } else { true } }.count
            return snapshot
        }

        var children: [ChildStatus] {
            slots.indices.map { ChildStatus(slot: $0, pid: slots[$0].pid, task: slots[$0].task, tasksServed: slots[$0].tasksServed) }
        }

        // MARK: Helpers

        private mutating func start(_ id: UInt64, on slot: Int) -> Job? {
            guard let job = entries[id]?.job else { return nil }
            entries[id]?.place = .started(slot: slot)
            slots[slot].running = id
            slots[slot].task = job.task
            return job
        }

        private mutating func popQueued() -> UInt64? {
            while !queue.isEmpty {
                let id = queue.removeFirst()
                if let entry = entries[id], case .queued = entry.place { return id }
            }
            return nil
        }

        /// Hands queued calls to idle slots.
        private mutating func dispatch() -> [Action] {
            var actions: [Action] = []
            while !idle.isEmpty, let id = popQueued() {
                let slot = idle.removeFirst()
                slots[slot].isIdle = false
                slots[slot].assigned = id
                entries[id]?.place = .assigned(slot: slot)
                actions.append(.notify(slots[slot].inbox, .work))
            }
            return actions
        }

        /// Fails every call that is not started.
        private mutating func failWaiting(_ error: (String) -> GantryError) -> [Action] {
            var actions: [Action] = []
            for (id, entry) in entries {
                switch entry.place {
                case .queued:
                    break
                case .assigned(let slot):
                    slots[slot].assigned = nil
                case .started:
                    continue
                }
                entries[id] = nil
                actions.append(.fail(entry.job.continuation, error(entry.job.task)))
            }
            queue.removeAll()
            return actions
        }
    }
}
