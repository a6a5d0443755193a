import CRdKafka
import GantryCore
import Logging
import Synchronization

extension KafkaConsumerCore {
    /// The polling thread's body: serves commands and the event queue until the consumer has
    /// left its group, then destroys the handle.
    func pollLoop() {
        var closeStarted = false
        while true {
            runCommands()
            if !closeStarted, state.withLock({ $0.lifecycle == .closeRequested }) {
                closeStarted = true
                state.withLock { $0.lifecycle = .closing }
                // Leaving the group revokes the assignment through a REBALANCE event on this
                // queue, which the loop below keeps serving until librdkafka reports closed.
                if let error = rd_kafka_consumer_close_queue(client.handle, client.queue) {
                    logger.warning("\(GantryError(consuming: error, "leaving the Kafka consumer group"))")
                }
            }
            if closeStarted && rd_kafka_consumer_closed(client.handle) != 0 { break }

            var batch = Batch()
            if var event = rd_kafka_queue_poll(client.queue, 100) {
                // Read once per batch: only a rebalance changes it, and a rebalance ends the batch.
                batch.revoking = state.withLock { $0.revoking }
                while true {
                    let endBatch = handle(event: event, batch: &batch)
                    rd_kafka_event_destroy(event)
                    guard !endBatch, batch.count < configuration.maxBatchSize,
                        let next = rd_kafka_queue_poll(client.queue, 0)
                    else { break }
                    event = next
                }
            }
            flush(&batch)
            applyBackpressure()
            completeRevocationIfDue(force: closeStarted)
        }
        finish()
    }

    private func runCommands() {
        let commands: [Command] = state.withLock { state in
            defer { state.commands = [] }
            return state.commands
        }
        for command in commands {
            switch command {
            case .subscribe(let topics, let continuation):
                let list = makeKafkaTopicPartitionList(topics.map { ($0, RD_KAFKA_PARTITION_UA, Int64(RD_KAFKA_OFFSET_INVALID)) })
                let error = rd_kafka_subscribe(client.handle, list)
                rd_kafka_topic_partition_list_destroy(list)
                if error == RD_KAFKA_RESP_ERR_NO_ERROR {
                    continuation.resume()
                } else {
                    continuation.resume(throwing: GantryError(kafka: error, "subscribing to Kafka topics \(topics)"))
                }
            case .commit(let offsets, let continuation):
                let id = state.withLock { state in
                    defer { state.nextID += 1 }
                    state.commits[state.nextID] = (offsets, continuation)
                    return state.nextID
                }
                let list = makeKafkaTopicPartitionList(offsets.map { ($0.topic, $0.partition, $0.offset) })
                // With a queue and no callback, the result comes back as an OFFSET_COMMIT event
                // on that queue carrying `id` as its opaque; the list is copied.
                let error = rd_kafka_commit_queue(client.handle, list, client.queue, nil, UnsafeMutableRawPointer(bitPattern: id))
                rd_kafka_topic_partition_list_destroy(list)
                if error != RD_KAFKA_RESP_ERR_NO_ERROR {
                    let waiter = state.withLock { $0.commits.removeValue(forKey: id) }
                    waiter?.continuation.resume(throwing: GantryError(kafka: error, "committing Kafka offsets \(offsets)"))
                }
            }
        }
    }

    /// The records of one poll, being gathered.
    struct Batch {
        /// The records, for the buffer (no sink).
        var records: [KafkaRecord] = []
        /// The records handed to the sink since its last ``KafkaConsumerSink/endOfBatch()``.
        var sunk = 0
        /// Partitions being revoked: their records belong to their next owner.
        var revoking: Set<KafkaTopicPartition> = []
        /// The records of a batch mostly share a topic: its name is read once per change
        /// (their messages hold the topic handle, so the pointer is not reused meanwhile).
        var topic: (handle: OpaquePointer?, name: String) = (nil, "")

        var count: Int { records.count + sunk }
    }

    /// Hands the gathered records over: to the sink, or as one event.
    private func flush(_ batch: inout Batch) {
        if batch.sunk > 0 {
            sink?.endOfBatch()
            batch.sunk = 0
        }
        if !batch.records.isEmpty {
            deliver(.records(batch.records))
            batch.records = []
        }
    }

    /// Serves one event. Returns true when the current batch must end here (a rebalance
    /// changes what the following records mean).
    private func handle(event: OpaquePointer, batch: inout Batch) -> Bool {
        switch rd_kafka_event_type(event) {
        case RD_KAFKA_EVENT_FETCH:
            while let message = rd_kafka_event_message_next(event) {
                if message.pointee.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                    if message.pointee.err != RD_KAFKA_RESP_ERR__PARTITION_EOF {
                        let topic = message.pointee.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "?"
                        logger.warning("\(GantryError(kafka: message.pointee.err, "consuming Kafka topic '\(topic)' partition \(message.pointee.partition)"))")
                    }
                    continue
                }
                if message.pointee.rkt != batch.topic.handle {
                    batch.topic = (message.pointee.rkt, message.pointee.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "")
                }
                if !batch.revoking.isEmpty,
                    batch.revoking.contains(KafkaTopicPartition(topic: batch.topic.name, partition: message.pointee.partition))
                {
                    continue
                }
                if let sink {
                    sink.fetched(message, topic: batch.topic.name)
                    batch.sunk += 1
                } else {
                    batch.records.append(Self.record(from: message, topic: batch.topic.name))
                }
            }
            return false
        case RD_KAFKA_EVENT_REBALANCE:
            flush(&batch)
            rebalance(event)
            return true
        case RD_KAFKA_EVENT_OFFSET_COMMIT:
            commitResult(event)
            return false
        case RD_KAFKA_EVENT_ERROR:
            let code = rd_kafka_event_error(event)
            let reason = String(cString: rd_kafka_event_error_string(event))
            if rd_kafka_event_error_is_fatal(event) != 0 {
                let error = GantryError(kafka: code, "the Kafka consumer hit a fatal error and must be recreated: \(reason)", retriable: false)
                logger.critical("\(error)")
                state.withLock { state in
                    state.terminalError = error
                    if state.lifecycle == .running { state.lifecycle = .closeRequested }
                }
            } else {
                // librdkafka recovers from these itself (a broker went away, a topic does not
                // exist yet); they are worth seeing, not worth stopping for.
                logger.warning("Kafka consumer: \(reason)", metadata: ["rdkafka.error": "\(String(cString: rd_kafka_err2name(code)))"])
            }
            return false
        case RD_KAFKA_EVENT_LOG:
            RDKafkaClient.forwardLog(event, to: logger)
            return false
        default:
            return false
        }
    }

    private static func record(from message: UnsafePointer<rd_kafka_message_t>, topic: String) -> KafkaRecord {
        let m = message.pointee
        var headers: [KafkaHeader] = []
        forEachKafkaHeader(of: message, count: { headers.reserveCapacity($0) }) { name, value, size in
            headers.append(KafkaHeader(key: String(cString: name), value: value == nil ? nil : kafkaBytes(value, size)))
        }
        var timestampType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let timestamp = rd_kafka_message_timestamp(message, &timestampType)
        return KafkaRecord(
            topic: topic,
            partition: m.partition,
            offset: m.offset,
            key: m.key == nil ? nil : kafkaBytes(m.key, m.key_len),
            value: kafkaBytes(m.payload, m.len),
            headers: headers,
            timestampMilliseconds: timestampType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? nil : timestamp
        )
    }

    private func rebalance(_ event: OpaquePointer) {
        let code = rd_kafka_event_error(event)
        let list = rd_kafka_event_topic_partition_list(event)
        let partitions = kafkaTopicPartitions(list).map(\.0)
        let cooperative = String(cString: rd_kafka_rebalance_protocol(client.handle)) == "COOPERATIVE"
        switch code {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            if cooperative {
                if let error = rd_kafka_incremental_assign(client.handle, list) {
                    logger.error("\(GantryError(consuming: error, "taking Kafka partitions \(partitions)"))")
                }
            } else {
                let error = rd_kafka_assign(client.handle, list)
                if error != RD_KAFKA_RESP_ERR_NO_ERROR {
                    logger.error("\(GantryError(kafka: error, "taking Kafka partitions \(partitions)"))")
                }
            }
            let paused = state.withLock { state in
                state.assignment.formUnion(partitions)
                return state.paused
            }
            // The buffer is full: new partitions start paused like the others.
            if paused { _ = rd_kafka_pause_partitions(client.handle, list) }
            logger.info("Kafka partitions assigned", metadata: ["partitions": "\(partitions.compactDescription)"])
            deliver(.partitionsAssigned(partitions))
        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            let lost = rd_kafka_assignment_lost(client.handle) != 0
            let revoked = Set(partitions)
            let revocation: KafkaPartitionRevocation = state.withLock { state in
                let id = state.nextID
                state.nextID += 1
                state.revoking = revoked
                state.revocation = PendingRevocation(
                    id: id, partitions: partitions, cooperative: cooperative,
                    deadline: .now + configuration.revocationGracePeriod,
                    finished: configuration.revocationGracePeriod <= .zero || state.lifecycle != .running
                )
                // Undelivered records of revoked partitions would be committed by nobody.
                var kept: [KafkaConsumerEvent] = []
                var keptRecords = 0
                while let buffered = state.popEvent() {
                    if case .records(let records) = buffered {
                        let remaining = records.filter { !revoked.contains($0.topicPartition) }
                        if remaining.isEmpty { continue }
                        keptRecords += remaining.count
                        kept.append(.records(remaining))
                    } else {
                        kept.append(buffered)
                    }
                }
                state.buffer = kept
                state.bufferHead = 0
                state.bufferedRecords = keptRecords
                return KafkaPartitionRevocation(partitions: partitions, isLost: lost, id: id, core: self)
            }
            logger.info("Kafka partitions revoked", metadata: ["partitions": "\(partitions.compactDescription)", "lost": "\(lost)"])
            deliver(.partitionsRevoked(revocation))
            completeRevocationIfDue(force: false)
        default:
            logger.error("\(GantryError(kafka: code, "Kafka group rebalance failed"))")
            _ = rd_kafka_assign(client.handle, nil)
            state.withLock { $0.assignment = [] }
        }
    }

    /// Gives revoked partitions up once the application finished with them, the grace
    /// period passed, or the consumer is closing.
    private func completeRevocationIfDue(force: Bool) {
        let due: PendingRevocation? = state.withLock { state in
            guard let revocation = state.revocation else { return nil }
            guard force || revocation.finished || ContinuousClock.now >= revocation.deadline else { return nil }
            state.revocation = nil
            state.revoking = []
            state.assignment.subtract(revocation.partitions)
            return revocation
        }
        guard let due else { return }
        if due.cooperative {
            let list = makeKafkaTopicPartitionList(due.partitions.map { ($0.topic, $0.partition, Int64(RD_KAFKA_OFFSET_INVALID)) })
            if let error = rd_kafka_incremental_unassign(client.handle, list) {
                logger.error("\(GantryError(consuming: error, "giving up Kafka partitions \(due.partitions)"))")
            }
            rd_kafka_topic_partition_list_destroy(list)
        } else {
            _ = rd_kafka_assign(client.handle, nil)
        }
    }

    private func commitResult(_ event: OpaquePointer) {
        let id = UInt(bitPattern: rd_kafka_event_opaque(event))
        let code = rd_kafka_event_error(event)
        let partitions = kafkaTopicPartitions(rd_kafka_event_topic_partition_list(event))
        guard let waiter = state.withLock({ $0.commits.removeValue(forKey: id) }) else { return }
        let failed = partitions.filter { $0.error != RD_KAFKA_RESP_ERR_NO_ERROR }
        if let first = failed.first {
            let names = failed.map { "\($0.0)" }.joined(separator: ", ")
            waiter.continuation.resume(throwing: GantryError(kafka: first.error, "the broker refused the Kafka offset commit for \(names)"))
        } else if code != RD_KAFKA_RESP_ERR_NO_ERROR && code != RD_KAFKA_RESP_ERR__NO_OFFSET {
            waiter.continuation.resume(throwing: GantryError(kafka: code, "committing Kafka offsets \(waiter.offsets)"))
        } else {
            waiter.continuation.resume()
        }
    }

    /// Hands an event to the sink, or to the waiting `next()`, or appends it to the buffer.
    private func deliver(_ event: KafkaConsumerEvent) {
        if let sink {
            sink.receive(.event(event))
            return
        }
        let waiter: CheckedContinuation<KafkaConsumerEvent?, any Error>? = state.withLock { state in
            if state.bufferIsEmpty, let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            if case .records(let records) = event {
                state.bufferedRecords += records.count
                // Merges into the previous batch while it stays under the batch size, so a slow
                // reader gets fewer, fuller batches.
                if let last = state.buffer.last, state.buffer.count > state.bufferHead, case .records(let previous) = last,
                    previous.count + records.count <= configuration.maxBatchSize
                {
                    state.buffer[state.buffer.count - 1] = .records(previous + records)
                    return nil
                }
            }
            state.buffer.append(event)
            return nil
        }
        waiter?.resume(returning: event)
    }

    /// Pauses fetching while the buffer is at capacity (resuming once half is read) or while
    /// the application asks for it.
    private func applyBackpressure() {
        enum Action { case pause, resume }
        let decision: (Action, Set<KafkaTopicPartition>)? = state.withLock { state in
            if !state.bufferFull && state.bufferedRecords >= configuration.bufferCapacity {
                state.bufferFull = true
            } else if state.bufferFull && state.bufferedRecords <= configuration.bufferCapacity / 2 {
                state.bufferFull = false
            }
            let pause = state.bufferFull || state.applicationPaused
            guard pause != state.paused else { return nil }
            state.paused = pause
            return (pause ? .pause : .resume, state.assignment)
        }
        guard let (action, partitions) = decision, !partitions.isEmpty else { return }
        let list = makeKafkaTopicPartitionList(partitions.map { ($0.topic, $0.partition, Int64(RD_KAFKA_OFFSET_INVALID)) })
        // Pausing keeps the consumer in its group (unlike not polling, which would exceed
        // max.poll.interval.ms); records fetched ahead are fetched again from the position
        // after the last one delivered.
        switch action {
        case .pause:
            logger.debug("Kafka consumer pausing fetch", metadata: ["buffered": "\(configuration.bufferCapacity)"])
            _ = rd_kafka_pause_partitions(client.handle, list)
        case .resume:
            _ = rd_kafka_resume_partitions(client.handle, list)
        }
        rd_kafka_topic_partition_list_destroy(list)
    }

    /// Destroys the handle, ends the stream and fails whatever still waits.
    private func finish() {
        var commits: [CheckedContinuation<Void, any Error>] = []
        var commandWaiters: [CheckedContinuation<Void, any Error>] = []
        var waiter: CheckedContinuation<KafkaConsumerEvent?, any Error>?
        var terminal: GantryError?
        var sinkFailure: GantryError?
        let closeWaiters: [CheckedContinuation<Void, Never>] = state.withLock { state in
            // Callers check `.closed` under this lock before queueing commands: nothing uses
            // the handle after this.
            state.lifecycle = .closed
            commits = state.commits.values.map(\.continuation)
            state.commits = [:]
            for command in state.commands {
                switch command {
                case .subscribe(_, let continuation), .commit(_, let continuation): commandWaiters.append(continuation)
                }
            }
            state.commands = []
            // Records left unread were never processed; their offsets are uncommitted, so the
            // group delivers them again.
            state.buffer = []
            state.bufferHead = 0
            state.bufferedRecords = 0
            state.assignment = []
            waiter = state.waiter
            state.waiter = nil
            if sink != nil {
                sinkFailure = state.terminalError
                state.terminalError = nil
            }
            if waiter != nil {
                terminal = state.terminalError
                state.terminalError = nil
            }
            defer { state.closeWaiters = [] }
            return state.closeWaiters
        }
        client.destroy()
        for continuation in commits + commandWaiters {
            continuation.resume(throwing: GantryError(.closed, "the Kafka consumer was closed before the operation finished"))
        }
        if let waiter {
            if let terminal { waiter.resume(throwing: terminal) } else { waiter.resume(returning: nil) }
        }
        sink?.receive(.finished(terminal ?? sinkFailure))
        for continuation in closeWaiters { continuation.resume() }
    }
}
