/// What a ``KafkaConsumer`` delivers, in the order it happened.
public enum KafkaConsumerEvent: Sendable {
    /// Records, in offset order within each partition. Commit `offset + 1` of a record
    /// (see ``KafkaCommitOffset``) once it is done.
    case records([KafkaRecord])
    /// The group gave this consumer these partitions (in addition to any it already had).
    case partitionsAssigned([KafkaTopicPartition])
    /// The group is taking these partitions away. Records of them that were buffered but not
    /// yet delivered are dropped (the next owner reads them again from the committed
    /// offset). Commit what is finished and hand back the rest, then call
    /// ``KafkaPartitionRevocation/finish()``; the partitions are given up at that point or
    /// after ``KafkaConsumerConfiguration/revocationGracePeriod``, whichever comes first.
    case partitionsRevoked(KafkaPartitionRevocation)
}

/// Partitions being taken from this consumer by a group rebalance.
public struct KafkaPartitionRevocation: Sendable {
    /// The partitions being revoked.
    public let partitions: [KafkaTopicPartition]
    /// True when the partitions were lost rather than revoked in order (the consumer was
    /// out of its group too long): another member may own them already, and commits for
    /// them will fail.
    public let isLost: Bool

    let id: UInt
    let core: KafkaConsumerCore?

    init(partitions: [KafkaTopicPartition], isLost: Bool, id: UInt, core: KafkaConsumerCore?) {
        self.partitions = partitions
        self.isLost = isLost
        self.id = id
        self.core = core
    }

    /// Tells the consumer the application is done with these partitions (their finished
    /// records committed, the rest handed back), so the rebalance may go on. Calling it more
    /// than once, or after the grace period, does nothing.
    public func finish() {
        core?.finishRevocation(id)
    }
}
