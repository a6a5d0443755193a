import GantryCore

extension KafkaTransportConsumer {
    /// A fetched record ready to be handed out, with where it came from.
    struct Ready: Sendable {
        var delivery: Delivery
        var partition: KafkaTopicPartition
        var offset: Int64
    }

    /// The progress of one assigned partition: which of its received records are finished, and
    /// so which offset may be committed.
    ///
    /// Records are handed out in any number at once and finish in any order; only the offset
    /// of the first unfinished record is committed, so a restart (or the partition's next
    /// owner) resumes at it and no unfinished record is ever skipped.
    struct PartitionProgress {
        /// Identifies this assignment of the partition: a revoked and reassigned partition gets
        /// a new serial, so that settling a delivery of the old assignment touches nothing.
        let serial: UInt32
        /// Offsets received, in order; everything before `head` is finished.
        private var order: [Int64] = []
        private var head = 0
        /// Finished offsets at or after `order[head]`.
        private var finished: Set<Int64> = []
        /// Offsets handed out and not settled yet.
        var handedOut: Set<Int64> = []
        private var lastReceived: Int64 = -1
        /// Every received record up to and including this offset is finished.
        private var completedThrough: Int64?
        /// The last offset sent in a commit, if any.
        var committed: Int64?

        init(serial: UInt32) {
            self.serial = serial
        }

        /// Notes a fetched record; false for one at or below an offset already received (a
        /// refetch), which must not be handed out twice.
        mutating func receive(_ offset: Int64) -> Bool {
            guard offset > lastReceived else { return false }
            lastReceived = offset
            order.append(offset)
            return true
        }

        mutating func finish(_ offset: Int64) {
            finished.insert(offset)
            while head < order.count, finished.remove(order[head]) != nil {
                completedThrough = order[head]
                head += 1
            }
            // Compacts once the finished prefix dominates, keeping finishes O(1) amortised.
            if head > 1024 && head * 2 > order.count {
                order.removeFirst(head)
                head = 0
            }
        }

        /// The offset to commit (the next to read): the first unfinished record's, or one past
        /// the last record when all are finished. Nil until a record finished.
        var commitPoint: Int64? {
            guard let completedThrough else { return nil }
            return head < order.count ? order[head] : completedThrough + 1
        }
    }

    /// Offsets to commit, with what is needed to undo the bookkeeping if the commit fails.
    struct CommitEntry: Sendable {
        var offset: KafkaCommitOffset
        var serial: UInt32
        var previous: Int64?
    }

    /// A delivery to hand to the task waiting in the stream's `next()`.
    typealias HandOut = (continuation: CheckedContinuation<Delivery?, any Error>, delivery: Delivery)

    /// What the consumer must do after partitions were revoked or the consumer stopped.
    struct Handback {
        /// Finished offsets of the partitions given up, to commit before giving them up.
        var commits: [KafkaCommitOffset] = []
        /// Records handed out and not settled: their next delivery is a redelivery.
        var unsettled: [KafkaTransportRegistry.RecordID] = []
        /// Ready records dropped (the wire consumer counts them as held).
        var dropped = 0
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
            case delivery(Delivery)
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
        private(set) var lifecycle = Lifecycle.running
        private var inFlight = 0
        private var partitions: [KafkaTopicPartition: PartitionProgress] = [:]
        private var serials: [UInt32: KafkaTopicPartition] = [:]
        /// Handed-out records of revoked partitions, by their old serial: they still use credit
        /// until settled, since a worker is still running them.
        private var orphans: [UInt32: Set<Int64>] = [:]
        private var nextSerial: UInt32 = 1
        private var ready: [Ready] = []
        private var readyHead = 0
        private var taker: CheckedContinuation<Delivery?, any Error>?
        private var failure: GantryError?
        private var commitRequested = false
        private var stopWaiters: [CheckedContinuation<Void, Never>] = []

        init(consumerID: UInt64, credit: Int) {
            self.consumerID = consumerID
            self.credit = credit
        }

        /// Whether deliveries handed out may still be settled.
        private var settling: Bool { lifecycle == .running || lifecycle == .draining }

        // MARK: Rebalances

        mutating func assign(_ assigned: [KafkaTopicPartition]) {
            guard settling else { return }
            for partition in assigned where partitions[partition] == nil {
                let serial = nextSerial
                nextSerial = nextSerial == UInt32.max ? 1 : nextSerial + 1
                partitions[partition] = PartitionProgress(serial: serial)
                serials[serial] = partition
            }
        }

        /// Gives up `revoked`: their ready records are dropped, their finished offsets are to
        /// be committed (unless `lost`: another member may own them already), and their
        /// handed-out records stop counting for commits.
        mutating func revoke(_ revoked: [KafkaTopicPartition], lost: Bool) -> Handback {
            var handback = Handback()
            guard settling else { return handback }
            for partition in revoked {
                guard let progress = partitions.removeValue(forKey: partition) else { continue }
                serials[progress.serial] = nil
                if !lost, let point = progress.commitPoint {
                    handback.commits.append(KafkaCommitOffset(topic: partition.topic, partition: partition.partition, offset: point))
                }
                if !progress.handedOut.isEmpty {
                    orphans[progress.serial] = progress.handedOut
                    handback.unsettled += progress.handedOut.map { .init(partition: partition, offset: $0) }
                }
            }
            let gone = Set(revoked)
            let kept = ready[readyHead...].filter { !gone.contains($0.partition) }
            handback.dropped = (ready.count - readyHead) - kept.count
            ready = Array(kept)
            readyHead = 0
            return handback
        }

        // MARK: Records in, deliveries out

        /// Queues fetched records of assigned partitions; returns how many were queued and,
        /// when a task waits and credit is free, the delivery to hand it.
        mutating func receive(_ records: [Ready]) -> (accepted: Int, handOut: HandOut?) {
            guard lifecycle == .running else { return (0, nil) }
            var accepted = 0
            for var record in records {
                guard let serial = partitions[record.partition]?.serial,
                    partitions[record.partition]?.receive(record.offset) == true
                else { continue }
                record.delivery.token = DeliveryToken(
                    consumer: consumerID << 32 | UInt64(serial), sequence: UInt64(bitPattern: record.offset),
                    partition: record.partition.partition)
                ready.append(record)
                accepted += 1
            }
            return (accepted, handOutToTaker())
        }

        mutating func take() -> TakeResult {
            guard lifecycle == .running else {
                // A draining consumer's stream ends quietly; a failure ends it once.
                defer { failure = nil }
                return .end(failure)
            }
            if let delivery = takeReady() { return .delivery(delivery) }
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
            if let partition = serials[serial] {
                guard partitions[partition]?.handedOut.remove(offset) != nil else { return .notHeld }
                partitions[partition]?.finish(offset)
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
            guard settling, let partition = serials[serial] else { return false }
            return partitions[partition]?.handedOut.contains(offset) == true
        }

        private mutating func takeReady() -> Delivery? {
            guard inFlight < credit, readyHead < ready.count else { return nil }
            let record = ready[readyHead]
            readyHead += 1
            if readyHead > 256 && readyHead * 2 > ready.count {
                ready.removeFirst(readyHead)
                readyHead = 0
            }
            inFlight += 1
            partitions[record.partition]?.handedOut.insert(record.offset)
            return record.delivery
        }

        private mutating func handOutToTaker() -> HandOut? {
            guard let waiting = taker, let delivery = takeReady() else { return nil }
            taker = nil
            return (waiting, delivery)
        }

        // MARK: Commits

        /// The partitions whose commit point moved since their last commit, marked as committed.
        mutating func takeCommits() -> [CommitEntry] {
            commitRequested = false
            guard settling else { return [] }
            var entries: [CommitEntry] = []
            for (partition, progress) in partitions {
                guard let point = progress.commitPoint, point > (progress.committed ?? Int64.min) else { continue }
                entries.append(CommitEntry(
                    offset: KafkaCommitOffset(topic: partition.topic, partition: partition.partition, offset: point),
                    serial: progress.serial, previous: progress.committed))
                partitions[partition]?.committed = point
            }
            return entries
        }

        /// Undoes ``takeCommits()``'s marks after the commit failed, so the next one retries.
        mutating func commitFailed(_ entries: [CommitEntry]) {
            for entry in entries {
                let partition = KafkaTopicPartition(topic: entry.offset.topic, partition: entry.offset.partition)
                guard partitions[partition]?.serial == entry.serial, partitions[partition]?.committed == entry.offset.offset else { continue }
                partitions[partition]?.committed = entry.previous
            }
        }

        // MARK: Stopping

        /// Stops handing out: the waiting task (returned) gets nil, ready records are dropped.
        /// Returns nil when not running; `drained` when nothing is left to settle, so the
        /// consumer may stop at once.
        mutating func drain() -> (taker: CheckedContinuation<Delivery?, any Error>?, dropped: Int, drained: Bool)? {
            guard lifecycle == .running else { return nil }
            lifecycle = .draining
            let dropped = ready.count - readyHead
            ready = []
            readyHead = 0
            defer { taker = nil }
            return (taker, dropped, inFlight == 0)
        }

        /// Ends the stream: returns the finished offsets to commit, the records to count as
        /// unsettled, and the waiting task to end; nil when already stopping.
        mutating func stop(failure: GantryError?) -> Handback? {
            guard settling else { return nil }
            lifecycle = .stopping
            var handback = Handback()
            for (partition, progress) in partitions {
                if let point = progress.commitPoint {
                    handback.commits.append(KafkaCommitOffset(topic: partition.topic, partition: partition.partition, offset: point))
                }
                handback.unsettled += progress.handedOut.map { .init(partition: partition, offset: $0) }
            }
            handback.dropped = ready.count - readyHead
            ready = []
            readyHead = 0
            partitions = [:]
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
