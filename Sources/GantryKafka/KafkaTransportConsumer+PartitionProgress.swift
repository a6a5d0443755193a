extension KafkaTransportConsumer {
    /// The progress of one assigned partition: where each received record stands, and so
    /// which offset may be committed.
    ///
    /// Records are handed out in any number at once and finish in any order; only the offset
    /// of the first unfinished record is committed, so a restart (or the partition's next
    /// owner) resumes at it and no unfinished record is ever skipped. The records from the
    /// first unfinished one to the last handed out are tracked in two arrays in offset order:
    /// a record that never settles holds them all (and the commit point) back until it does.
    ///
    /// Records are tracked from the moment they are handed out, not when they are fetched:
    /// a partition's records are handed out in offset order, so the ones still waiting in the
    /// ready queue all come after the last one tracked, and the commit point (the next offset
    /// to read) is the same as if they were tracked. That keeps the fetching thread's work
    /// under the consumer's lock independent of the number of records it brings.
    ///
    /// A class so that the state machine changes it in place, without copying it (and its
    /// arrays) out of a dictionary. It lives only inside the consumer's locked state machine,
    /// so every access is already exclusive: its properties skip the runtime's exclusivity
    /// checks.
    final class PartitionProgress {
        enum RecordState: UInt8 {
            case handedOut
            case finished
        }

        /// Identifies this assignment of the partition: a revoked and reassigned partition gets
        /// a new serial, so that settling a delivery of the old assignment touches nothing.
        let serial: UInt32
        let partition: KafkaTopicPartition
        /// Handed-out offsets from `head` on, increasing, and where each record stands; every
        /// record before `head` is finished.
        @exclusivity(unchecked) private var offsets: [Int64] = []
        @exclusivity(unchecked) private var states: [RecordState] = []
        @exclusivity(unchecked) private var head = 0
        @exclusivity(unchecked) private var lastHandedOut: Int64 = -1
        /// Every handed-out record up to and including this offset is finished.
        @exclusivity(unchecked) private var completedThrough: Int64?
        /// Records handed out and not settled.
        @exclusivity(unchecked) private(set) var handedOutCount = 0
        /// The last offset sent in a commit, if any.
        @exclusivity(unchecked) var committed: Int64?

        init(serial: UInt32, partition: KafkaTopicPartition) {
            self.serial = serial
            self.partition = partition
        }

        /// Notes a record handed out; false for one at or below an offset already handed out
        /// (a refetch), which must not be handed out twice.
        func handOut(_ offset: Int64) -> Bool {
            guard offset > lastHandedOut else { return false }
            lastHandedOut = offset
            offsets.append(offset)
            states.append(.handedOut)
            handedOutCount += 1
            return true
        }

        func isHandedOut(_ offset: Int64) -> Bool {
            guard let index = index(of: offset) else { return false }
            return states[index] == .handedOut
        }

        /// Settles a handed-out record; false when it is not handed out (settled already).
        func settle(_ offset: Int64) -> Bool {
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
        /// the last record handed out when all are finished. Nil until a record finished.
        var commitPoint: Int64? {
            guard let completedThrough else { return nil }
            return head < offsets.count ? offsets[head] : completedThrough + 1
        }

        /// Where `offset` is in the arrays, if it is tracked.
        private func index(of offset: Int64) -> Int? {
            guard head < offsets.count, offset >= offsets[head], offset <= lastHandedOut else { return nil }
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
