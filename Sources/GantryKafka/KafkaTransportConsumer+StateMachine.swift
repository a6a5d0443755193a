import GantryCore

extension KafkaTransportConsumer {
    /// Offsets to commit, with what is needed to undo the bookkeeping if the commit fails.
    struct CommitEntry: Sendable {
        var offset: KafkaCommitOffset
        var serial: UInt32
        var previous: Int64?
    }

    /// A delivery to hand to the task waiting in the stream's `next()`.
    struct HandOut {
        var continuation: CheckedContinuation<Delivery?, any Error>
        var delivery: Delivery
        /// Taking it brought the ready queue below the resume mark: resume fetching.
        var resumeFetching: Bool
    }

    /// What the consumer must do after partitions were revoked or the consumer stopped.
    struct Handback {
        /// Finished offsets of the partitions given up, to commit before giving them up.
        var commits: [KafkaCommitOffset] = []
        /// Records handed out and not settled: their next delivery is a redelivery.
        var unsettled: [KafkaTransportRegistry.RecordID] = []
        /// Dropping ready records brought the queue below the resume mark: resume fetching.
        var resumeFetching = false
        /// The task waiting in `next()`, to end (stop only).
        var taker: CheckedContinuation<Delivery?, any Error>?
        /// The error to end it with (stop only).
        var failure: GantryError?
    }

    /// The consumer's state: assigned partitions and their progress, the ready queue, the
    /// credit in use, and the task waiting for a delivery. Every method runs under the
    /// consumer's `Mutex` and returns what to do outside it.
    struct StateMachine {
        enum Lifecycle {
            case running
            /// The stream ended by ``DeliveryStream/stopIntake()``: nothing more is handed out,
            /// what was handed out may still be settled; the consumer stops once it all is.
            case draining
            /// The consumer is committing and leaving its group; settling does nothing.
            case stopping
            /// It left its group.
            case stopped
        }

        enum TakeResult {
            /// A delivery; `resumeFetching` when taking it brought the ready queue below the
            /// resume mark.
            case delivery(Delivery, resumeFetching: Bool)
            /// Nothing to hand out now (no ready record, or the credit is used up).
            case empty
            /// The stream ends, with an error if the consumer failed.
            case end(GantryError?)
        }

        enum FinishResult {
            /// Settled; maybe the commit timer must be started, maybe a waiting task gets a
            /// record now that credit is free, maybe the draining consumer is done.
            case settled(handOut: HandOut?, requestCommit: Bool, drained: Bool)
            /// Its partition was revoked: the credit is free again but nothing is committed.
            case released(handOut: HandOut?, drained: Bool)
            /// Not held by this consumer: already settled.
            case notHeld
            /// The consumer is stopping or stopped: the record will be redelivered.
            case stopped
        }

        let consumerID: UInt64
        let credit: Int
        /// Fetching pauses when the ready records reach this size, and resumes below half.
        let prefetchBytes: Int
        private(set) var lifecycle = Lifecycle.running
        private var readyBytes = 0
        private var fetchPaused = false
        private var inFlight = 0
        /// Assigned partitions' progress, by assignment serial (cheaper to hash than a topic).
        /// A class, so that settling changes it in place without copying it out of the
        /// dictionary.
        private var progress: [UInt32: PartitionProgress] = [:]
        private var serials: [KafkaTopicPartition: UInt32] = [:]
        /// Handed-out records of revoked partitions, by their old serial: they still use credit
        /// until settled, since a worker is still running them.
        private var orphans: [UInt32: Set<Int64>] = [:]
        private var nextSerial: UInt32 = 1
        /// Fetched records not handed out yet, in runs of one partition, from `readyHead`.
        private var ready: [ReadyRun] = []
        private var readyHead = 0
        private var taker: CheckedContinuation<Delivery?, any Error>?
        private var failure: GantryError?
        private var commitRequested = false
        private var stopWaiters: [CheckedContinuation<Void, Never>] = []

        /// A queued ``FetchedRun`` with the progress of the assignment it was fetched under.
        private struct ReadyRun {
            var progress: PartitionProgress
            var deliveries: [Delivery?]
            /// The next record to hand out.
            var next = 0

            /// The bytes of the records not handed out yet.
            var remainingBytes: Int {
                deliveries[next...].reduce(0) { $0 + ($1.map(FetchedRun.size(of:)) ?? 0) }
            }
        }

        init(consumerID: UInt64, credit: Int, prefetchBytes: Int) {
            self.consumerID = consumerID
            self.credit = credit
            self.prefetchBytes = prefetchBytes
        }

        /// Whether deliveries handed out may still be settled.
        private var settling: Bool { lifecycle == .running || lifecycle == .draining }

        // MARK: Rebalances

        mutating func assign(_ assigned: [KafkaTopicPartition]) {
            guard settling else { return }
            for partition in assigned where serials[partition] == nil {
                let serial = nextSerial
                nextSerial = nextSerial == UInt32.max ? 1 : nextSerial + 1
                progress[serial] = PartitionProgress(serial: serial, partition: partition)
                serials[partition] = serial
            }
        }

        /// Gives up `revoked`: their ready records are dropped, their finished offsets are to
        /// be committed (unless `lost`: another member may own them already), and their
        /// handed-out records stop counting for commits.
        mutating func revoke(_ revoked: [KafkaTopicPartition], lost: Bool) -> Handback {
            var handback = Handback()
            guard settling else { return handback }
            var gone = Set<UInt32>()
            for partition in revoked {
                guard let serial = serials.removeValue(forKey: partition), let given = progress.removeValue(forKey: serial) else { continue }
                gone.insert(serial)
                if !lost, let point = given.commitPoint {
                    handback.commits.append(KafkaCommitOffset(topic: partition.topic, partition: partition.partition, offset: point))
                }
                if given.handedOutCount > 0 {
                    let handedOut = given.handedOut
                    orphans[serial] = Set(handedOut)
                    handback.unsettled += handedOut.map { .init(partition: partition, offset: $0) }
                }
            }
            ready = ready[readyHead...].filter { !gone.contains($0.progress.serial) }
            readyHead = 0
            readyBytes = ready.reduce(0) { $0 + $1.remainingBytes }
            handback.resumeFetching = resumeIfDrained()
            return handback
        }

        // MARK: Records in, deliveries out

        /// Queues fetched runs of assigned partitions (the others are dropped: their records
        /// belong to the partitions' next owners); returns the delivery to hand to a waiting
        /// task when credit is free, and whether fetching must pause now.
        ///
        /// The runs' records are moved out of `runs`, so that the queue holds the only
        /// reference to them and taking a record never copies its run.
        mutating func receive(_ runs: inout [FetchedRun]) -> (handOut: HandOut?, pauseFetching: Bool) {
            guard lifecycle == .running else { return (nil, false) }
            for index in runs.indices {
                guard let serial = serials[runs[index].partition], let partition = progress[serial] else { continue }
                var deliveries: [Delivery?] = []
                swap(&deliveries, &runs[index].deliveries)
                ready.append(ReadyRun(progress: partition, deliveries: deliveries))
                readyBytes += runs[index].bytes
            }
            let handOut = handOutToTaker()
            guard !fetchPaused, readyBytes >= prefetchBytes else { return (handOut, false) }
            fetchPaused = true
            return (handOut, true)
        }

        mutating func take() -> TakeResult {
            guard lifecycle == .running else {
                // A draining consumer's stream ends quietly; a failure ends it once.
                defer { failure = nil }
                return .end(failure)
            }
            if let delivery = takeReady() { return .delivery(delivery, resumeFetching: resumeIfDrained()) }
            return .empty
        }

        /// Like ``take()``, but parks `continuation` when there is nothing to hand out.
        mutating func wait(_ continuation: CheckedContinuation<Delivery?, any Error>) -> TakeResult {
            let result = take()
            guard case .empty = result else { return result }
            guard taker == nil else {
                return .end(GantryError(.invalidArgument, "a Kafka DeliveryStream is being iterated by two tasks at once; use one iterator per consume()"))
            }
            taker = continuation
            return .empty
        }

        /// Settles the record at `offset` of the assignment `serial`.
        mutating func finish(serial: UInt32, offset: Int64) -> FinishResult {
            guard settling else { return .stopped }
            if let settled = progress[serial]?.settle(offset) {
                guard settled else { return .notHeld }
                inFlight -= 1
                let request = !commitRequested
                commitRequested = true
                return .settled(handOut: handOutToTaker(), requestCommit: request, drained: isDrained)
            }
            guard orphans[serial]?.remove(offset) != nil else { return .notHeld }
            if orphans[serial]?.isEmpty == true { orphans[serial] = nil }
            inFlight -= 1
            return .released(handOut: handOutToTaker(), drained: isDrained)
        }

        private var isDrained: Bool { lifecycle == .draining && inFlight == 0 }

        /// Whether the record at `offset` of assignment `serial` is handed out and its partition
        /// still assigned here: only then may a nack or dead-letter act on it.
        func holds(serial: UInt32, offset: Int64) -> Bool {
            guard settling else { return false }
            return progress[serial]?.isHandedOut(offset) == true
        }

        private mutating func takeReady() -> Delivery? {
            guard inFlight < credit else { return nil }
            while readyHead < ready.count {
                let position = ready[readyHead].next
                guard position < ready[readyHead].deliveries.count else {
                    ready[readyHead].deliveries = []
                    readyHead += 1
                    if readyHead > 64 && readyHead * 2 > ready.count {
                        ready.removeFirst(readyHead)
                        readyHead = 0
                    }
                    continue
                }
                ready[readyHead].next = position + 1
                // Moved out in place: the queue holds the only reference to the run's array, so
                // this copies nothing.
                var taken: Delivery?
                swap(&taken, &ready[readyHead].deliveries[position])
                guard var delivery = taken else { continue }
                readyBytes -= FetchedRun.size(of: delivery)
                let partition = ready[readyHead].progress
                // A record fetched again after a pause is handed out once.
                guard partition.handOut(Int64(bitPattern: delivery.token.sequence)) else { continue }
                inFlight += 1
                delivery.token.consumer = consumerID << 32 | UInt64(partition.serial)
                return delivery
            }
            return nil
        }

        private mutating func handOutToTaker() -> HandOut? {
            guard let waiting = taker, let delivery = takeReady() else { return nil }
            taker = nil
            return HandOut(continuation: waiting, delivery: delivery, resumeFetching: resumeIfDrained())
        }

        /// Whether fetching, paused for a full ready queue, may resume: the queue is down to
        /// half the limit (hysteresis, since librdkafka fetches again what it had fetched ahead
        /// of a pause).
        private mutating func resumeIfDrained() -> Bool {
            guard fetchPaused, lifecycle == .running, readyBytes <= prefetchBytes / 2 else { return false }
            fetchPaused = false
            return true
        }

        // MARK: Commits

        /// The partitions whose commit point moved since their last commit, marked as committed.
        mutating func takeCommits() -> [CommitEntry] {
            commitRequested = false
            guard settling else { return [] }
            var entries: [CommitEntry] = []
            for (serial, partition) in progress {
                guard let point = partition.commitPoint, point > (partition.committed ?? Int64.min) else { continue }
                entries.append(CommitEntry(
                    offset: KafkaCommitOffset(topic: partition.partition.topic, partition: partition.partition.partition, offset: point),
                    serial: serial, previous: partition.committed))
                partition.committed = point
            }
            return entries
        }

        /// Undoes ``takeCommits()``'s marks after the commit failed, so the next one retries.
        mutating func commitFailed(_ entries: [CommitEntry]) {
            for entry in entries {
                guard let partition = progress[entry.serial], partition.committed == entry.offset.offset else { continue }
                partition.committed = entry.previous
            }
        }

        // MARK: Stopping

        /// Stops handing out: the waiting task (returned) gets nil, ready records are dropped,
        /// fetching stays paused. Returns nil when not running; `drained` when nothing is left
        /// to settle, so the consumer may stop at once.
        mutating func drain() -> (taker: CheckedContinuation<Delivery?, any Error>?, drained: Bool)? {
            guard lifecycle == .running else { return nil }
            lifecycle = .draining
            ready = []
            readyHead = 0
            readyBytes = 0
            fetchPaused = true
            defer { taker = nil }
            return (taker, inFlight == 0)
        }

        /// Ends the stream: returns the finished offsets to commit, the records to count as
        /// unsettled, and the waiting task to end; nil when already stopping.
        mutating func stop(failure: GantryError?) -> Handback? {
            guard settling else { return nil }
            lifecycle = .stopping
            var handback = Handback()
            for partition in progress.values {
                if let point = partition.commitPoint {
                    handback.commits.append(KafkaCommitOffset(topic: partition.partition.topic, partition: partition.partition.partition, offset: point))
                }
                handback.unsettled += partition.handedOut.map { .init(partition: partition.partition, offset: $0) }
            }
            ready = []
            readyHead = 0
            readyBytes = 0
            progress = [:]
            serials = [:]
            orphans = [:]
            if let taker {
                // The waiting task gets the failure; otherwise the next call to next() does.
                handback.taker = taker
                handback.failure = failure
                self.taker = nil
            } else {
                self.failure = failure
            }
            return handback
        }

        /// Records that the consumer left its group; returns who waited for that.
        mutating func markStopped() -> [CheckedContinuation<Void, Never>] {
            lifecycle = .stopped
            defer { stopWaiters = [] }
            return stopWaiters
        }

        /// Parks `continuation` until the consumer stopped; false when it already has.
        mutating func waitUntilStopped(_ continuation: CheckedContinuation<Void, Never>) -> Bool {
            guard lifecycle != .stopped else { return false }
            stopWaiters.append(continuation)
            return true
        }
    }
}
