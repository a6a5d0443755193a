extension KafkaTransportConsumer {
    /// The progress of one assigned partition: where each received record stands, and so
    /// which offset may be committed.
    ///
    /// Records are handed out in any number at once and finish in any order; only the offset
    /// of the first unfinished record is committed, so a restart (or the partition's next
    /// owner) resumes at it and no unfinished record is ever skipped. The records from the
    /// first unfinished one to the last received are tracked in two arrays in offset order:
    /// a record that never settles holds them all (and the commit point) back until it does.
    struct PartitionProgress {
        enum RecordState: UInt8 {
            /// Received, not handed out (ready, or dropped when the consumer stopped taking).
            case waiting
            case handedOut
            case finished
        }

        /// Identifies this assignment of the partition: a revoked and reassigned partition gets
        /// a new serial, so that settling a delivery of the old assignment touches nothing.
        let serial: UInt32
        let partition: KafkaTopicPartition
        /// Received offsets from `head` on, increasing, and where each record stands; every
        /// record before `head` is finished.
        private var offsets: [Int64] = []
        private var states: [RecordState] = []
        private var head = 0
        private var lastReceived: Int64 = -1
        /// Every received record up to and including this offset is finished.
        private var completedThrough: Int64?
        /// Records handed out and not settled.
        private(set) var handedOutCount = 0
        /// The last offset sent in a commit, if any.
        var committed: Int64?

        init(serial: UInt32, partition: KafkaTopicPartition) {
            self.serial = serial
            self.partition = partition
        }

        /// Notes a fetched record; false for one at or below an offset already received (a
        /// refetch), which must not be handed out twice.
        mutating func receive(_ offset: Int64) -> Bool {
            guard offset > lastReceived else { return false }
            lastReceived = offset
            offsets.append(offset)
            states.append(.waiting)
            return true
        }

        mutating func handOut(_ offset: Int64) {
            guard let index = index(of: offset), states[index] == .waiting else { return }
            states[index] = .handedOut
            handedOutCount += 1
        }

        func isHandedOut(_ offset: Int64) -> Bool {
            guard let index = index(of: offset) else { return false }
            return states[index] == .handedOut
        }

        /// Settles a handed-out record; false when it is not handed out (settled already).
        mutating func settle(_ offset: Int64) -> Bool {
            guard let index = index(of: offset), states[index] == .handedOut else { return false }
            states[index] = .finished
            handedOutCount -= 1
            while head < states.count, states[head] == .finished {
                completedThrough = offsets[head]
                head += 1
            }
            // Compacts once the finished prefix dominates, keeping settling O(1) amortised.
            if head > 1024 && head * 2 > states.count {
                offsets.removeFirst(head)
                states.removeFirst(head)
                head = 0
            }
            return true
        }

        /// The offsets handed out and not settled.
        var handedOut: [Int64] {
            (head..<states.count).filter { states[$0] == .handedOut }.map { offsets[$0] }
        }

        /// The offset to commit (the next to read): the first unfinished record's, or one past
        /// the last record when all are finished. Nil until a record finished.
        var commitPoint: Int64? {
            guard let completedThrough else { return nil }
            return head < offsets.count ? offsets[head] : completedThrough + 1
        }

        /// Where `offset` is in the arrays, if it is tracked.
        private func index(of offset: Int64) -> Int? {
            guard head < offsets.count, offset >= offsets[head], offset <= lastReceived else { return nil }
            // Offsets are consecutive unless the log has gaps (compacted records, transaction
            // markers): then they are found by binary search.
            let guess = head + Int(offset - offsets[head])
            if guess < offsets.count, offsets[guess] == offset { return guess }
            var low = head
            var high = offsets.count - 1
            while low <= high {
                let middle = (low + high) / 2
                if offsets[middle] == offset { return middle }
                if offsets[middle] < offset { low = middle + 1 } else { high = middle - 1 }
            }
            return nil
        }
    }
}
