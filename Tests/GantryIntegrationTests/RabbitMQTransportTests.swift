import Foundation
import GantryAMQP
import GantryCore
import GantryRuntime
import Synchronization
import Testing

private typealias Support = RabbitMQTransportTestSupport

private func message(_ text: String, priority: UInt8 = 0) -> OutgoingMessage {
    OutgoingMessage(body: Array(text.utf8), priority: priority)
}

/// The RabbitMQ transport against the real broker: what the conformance suite cannot show —
/// the wire shape, dead connections, broker restarts, dead-lettering and priorities.
@Suite("RabbitMQ transport") struct RabbitMQTransportTests {
    @Test("queues are durable with x-max-priority 10 and a .dlq route; messages are persistent with the key in a header")
    func wireShape() async throws {
        let queue = Support.uniqueQueue("shape")
        let configuration = try Support.configuration()
        try await Support.withTransport(configuration, deleting: [queue]) { transport in
            try await transport.declare(queues: [queue])
            // Idempotent.
            try await transport.declare(queues: [queue])
            try await transport.publish([OutgoingMessage(body: [1, 2, 3], key: "run-7", priority: 4, headers: ["trace": "abc"])], to: queue)

            let raw = try await AMQPClient.connect(configuration.amqp)
            // Redeclaring with exactly these arguments succeeds only if the transport used them
            // (RabbitMQ answers any difference with 406 PRECONDITION_FAILED).
            try await raw.declareQueue("gantry.\(queue)", arguments: [
                AMQPQueueArgument.maxPriority: 10,
                AMQPQueueArgument.deadLetterExchange: "",
                AMQPQueueArgument.deadLetterRoutingKey: .string("gantry.\(queue).dlq"),
            ])
            try await raw.declareQueue("gantry.\(queue).dlq")
            let consumer = try await raw.consume(queue: "gantry.\(queue)")
            let delivery = try await AMQPTestSupport.nextDelivery(consumer)
            #expect(delivery.body == [1, 2, 3])
            #expect(delivery.properties.isPersistent)
            #expect(delivery.properties.priority == 4)
            #expect(delivery.properties.headers["x-gantry-key"] == "run-7")
            #expect(delivery.properties.headers["trace"] == "abc")
            try await raw.ack(deliveryTag: delivery.deliveryTag)
            await raw.close()
        }
    }

    @Test("a consumer that dies without acking: another consumer gets its messages, redelivered; its late acks are refused")
    func redeliveryAfterAConsumerDies() async throws {
        let queue = Support.uniqueQueue("dies")
        try await Support.withTransport(deleting: [queue]) { survivor in
            try await survivor.declare(queues: [queue])
            try await survivor.publish((0..<3).map { message("m\($0)") }, to: queue)

            // The dying worker: its own transport (its own process, in real life).
            let doomed = try await RabbitMQTransport.connect(Support.configuration(name: "gantry-tests-doomed"))
            let doomedDeliveries = DeliveryCollector(try await doomed.consume(queues: [queue], credit: 10))
            let held = try await doomedDeliveries.wait(for: 3)
            #expect(held.allSatisfy { !$0.redelivered })
            await doomedDeliveries.stop()

            let taken = DeliveryCollector(try await survivor.consume(queues: [queue], credit: 10))
            let again = try await taken.wait(for: 3)
            #expect(Set(again.map(Support.text)) == ["m0", "m1", "m2"])
            #expect(again.allSatisfy { $0.redelivered })

            // The dead consumer's deliveries can no longer be settled: it would settle nothing, or
            // a wrong message.
            let late = await #expect(throws: GantryError.self) { try await doomed.ack(held[0]) }
            #expect(late?.code == .closed)
            #expect(late?.message.contains("requeued") == true)
            await doomed.close()

            for delivery in again { try await survivor.ack(delivery) }
            await taken.stop()
            #expect(try await survivor.depth(of: queue) == 0)
        }
    }

    @Test(
        "a consumer connection killed by the broker: the stream reconnects, redelivers, and refuses acks of the dead connection",
        .enabled(if: AMQPTestSupport.canUseRabbitmqctl, "needs rabbitmqctl for the ops/stack node")
    )
    func killedConsumerConnectionReconnects() async throws {
        let queue = Support.uniqueQueue("killed")
        let name = "gantry-tests-\(UUID().uuidString.prefix(8).lowercased())"
        try await Support.withTransport(Support.configuration(name: name), deleting: [queue]) { transport in
            try await transport.declare(queues: [queue])
            try await transport.publish((0..<3).map { message("k\($0)") }, to: queue)
            let collector = DeliveryCollector(try await transport.consume(queues: [queue], credit: 10))
            let first = try await collector.wait(for: 3)
            #expect(Set(first.map(Support.generation)) == [1])

            var pid: String?
            try await Support.eventually("rabbitmqctl lists the consumer connection") {
                let listing = await AMQPTestSupport.rabbitmqctlAsync(["list_connections", "pid", "client_properties"]) ?? ""
                pid = listing.split(separator: "\n").first { $0.contains("\(name)-consumer-") }?.split(separator: "\t").first.map(String.init)
                return pid != nil
            }
            _ = await AMQPTestSupport.rabbitmqctlAsync(["close_connection", try #require(pid), "gantry test: consumer connection killed"])

            // The same stream goes on, on connection 2, with the three messages again.
            let all = try await collector.wait(for: 6, timeout: .seconds(30))
            let second = Array(all.dropFirst(3))
            #expect(Set(second.map(Support.generation)) == [2])
            #expect(Set(second.map(Support.text)) == ["k0", "k1", "k2"])
            #expect(second.allSatisfy { $0.redelivered })

            // Delivery tags restart on a new connection: first[0] and second[0] may share a tag.
            // Acking the old one must not settle the new one.
            for stale in first {
                let error = await #expect(throws: GantryError.self) { try await transport.ack(stale) }
                #expect(error?.code == .closed)
                #expect(error?.message.contains("connection 1") == true)
            }
            for delivery in second { try await transport.ack(delivery) }
            try await Support.eventually("the queue is empty") { try await transport.depth(of: queue) == 0 }
            #expect(collector.deliveries.count == 6)
            await collector.stop()
        }
    }

    @Test(
        "the broker restarts mid-stream: publishing and consuming go on, every message arrives at least once",
        .enabled(if: PrivateRabbitMQ.isAvailable, "needs a RabbitMQ installation to start a private node"),
        .timeLimit(.minutes(5))
    )
    func brokerRestartMidStream() async throws {
        let broker = try await PrivateRabbitMQ.start()
        do {
            try await restartScenario(broker)
        } catch {
            await broker.shutDown()
            throw error
        }
        await broker.shutDown()
    }

    private func restartScenario(_ broker: PrivateRabbitMQ) async throws {
        final class Progress: Sendable {
            let published = Mutex(0)
            let received = Mutex<[String: Int]>([:])
            let redelivered = Mutex<Set<String>>([])
            let generations = Mutex<Set<UInt32>>([])
            /// Deliveries the consumer does not ack before the restart: in flight when it happens.
            let held = Mutex<[Delivery]>([])
            let staleAcks = Mutex(0)
            let phase = Mutex(0)
        }
        let count = 3000
        let batch = 10
        let third = count / 3
        let heldIDs = Set((third - 20..<third).map { "id-\($0)" })
        let queue = Support.uniqueQueue("restart")
        let transport = try await RabbitMQTransport.connect(Support.configuration(name: "gantry-tests-restart", url: broker.url))
        try await transport.declare(queues: [queue])
        let progress = Progress()

        let stream = try await transport.consume(queues: [queue], credit: 32)
        let consumer = Task {
            for try await delivery in stream {
                let id = Support.text(delivery)
                if id == "end" {
                    try await transport.ack(delivery)
                    return
                }
                let seen = progress.received.withLock { received in
                    received[id, default: 0] += 1
                    return received[id]!
                }
                progress.generations.withLock { _ = $0.insert(Support.generation(delivery)) }
                if delivery.redelivered { progress.redelivered.withLock { _ = $0.insert(id) } }
                if seen == 1 && heldIDs.contains(id) {
                    progress.held.withLock { $0.append(delivery) }
                    continue
                }
                do {
                    try await transport.ack(delivery)
                } catch let error as GantryError where error.code == .closed {
                    // Its connection died: the broker delivers it again.
                    progress.staleAcks.withLock { $0 += 1 }
                }
            }
        }

        let publisher = Task {
            for start in stride(from: 0, to: count, by: batch) {
                // The first third before the restart; the second while the node shuts down; the
                // rest once it is down, so those publishes must wait for it to come back.
                if start == third {
                    try await Support.eventually("the restart to begin", timeout: .seconds(60)) { progress.phase.withLock { $0 } >= 1 }
                } else if start == third * 2 {
                    try await Support.eventually("the node to be down", timeout: .seconds(60)) { progress.phase.withLock { $0 } >= 2 }
                }
                try await transport.publish((start..<min(start + batch, count)).map { message("id-\($0)") }, to: queue)
                progress.published.withLock { $0 = start + batch }
            }
        }

        try await Support.eventually("the first third is consumed", timeout: .seconds(60)) {
            progress.received.withLock { $0.count } >= third
        }
        #expect(progress.held.withLock { $0.count } == heldIDs.count)
        progress.phase.withLock { $0 = 1 }
        try await broker.stop()
        progress.phase.withLock { $0 = 2 }
        // Acks of deliveries from the dead connection are refused, not sent anywhere.
        for delivery in progress.held.withLock({ $0 }) {
            let error = await #expect(throws: GantryError.self) { try await transport.ack(delivery) }
            #expect(error?.code == .closed)
        }
        try await broker.start()

        try await publisher.value
        try await Support.eventually("every message arrives", timeout: .seconds(120)) {
            progress.received.withLock { $0.count } == count
        }
        // Published after everything else arrived, so it is the consumer's last delivery.
        try await transport.publish(message("end"), to: queue)
        try await consumer.value

        let received = progress.received.withLock { $0 }
        #expect(Set(received.keys) == Set((0..<count).map { "id-\($0)" }))
        // The deliveries in flight at the restart came again, flagged redelivered.
        for id in heldIDs {
            #expect(received[id, default: 0] >= 2, "\(id) was in flight at the restart and must be delivered again")
        }
        #expect(progress.redelivered.withLock { $0 }.isSuperset(of: heldIDs))
        // The stream itself went on over a new connection; it never ended or threw.
        #expect(progress.generations.withLock { $0 }.contains { $0 >= 2 })
        let duplicates = received.values.reduce(0) { $0 + $1 - 1 }
        print("restart test: \(count) ids, \(duplicates) duplicate deliveries, \(progress.staleAcks.withLock { $0 }) acks refused in the stream, generations \(progress.generations.withLock { $0.sorted() })")
        await transport.close()
    }

    @Test(
        "over amqps (TLS from the URL, peer and host name verified) the transport works; a CA that does not match is named",
        .enabled(if: PrivateRabbitMQ.isAvailable && FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl"), "needs RabbitMQ and openssl"),
        .timeLimit(.minutes(3))
    )
    func tls() async throws {
        let broker = try await PrivateRabbitMQ.start(tls: true)
        do {
            let port = try #require(broker.tlsPort)
            let ca = try #require(broker.caCertificatePath)
            let queue = Support.uniqueQueue("tls")
            let configuration = try Support.configuration(name: "gantry-tests-tls", url: "amqps://guest:guest@localhost:\(port)/?cacertfile=\(ca)")
            #expect(configuration.amqp.tls?.verifyPeer == true && configuration.amqp.tls?.verifyHostname == true)
            try await Support.withTransport(configuration, deleting: [queue]) { transport in
                try await transport.publish(OutgoingMessage(body: Array("secret".utf8), key: "k"), to: queue)
                let collector = DeliveryCollector(try await transport.consume(queues: [queue], credit: 4))
                let got = try await collector.wait(for: 1)[0]
                #expect(Support.text(got) == "secret" && got.key == "k")
                try await transport.ack(got)
                await collector.stop()
            }

            // Without the CA the broker's certificate cannot be verified: the error says to
            // look at the TLS settings (retried like any connect failure, so a short timeout).
            var untrusted = try Support.configuration(name: "gantry-tests-tls-untrusted", url: "amqps://guest:guest@localhost:\(port)/")
            untrusted.reconnectTimeout = .milliseconds(300)
            let error = await #expect(throws: GantryError.self) { _ = try await RabbitMQTransport.connect(untrusted) }
            #expect(error?.code == .connectionFailed)
            #expect(error?.message.contains("TLS") == true)
        } catch {
            await broker.shutDown()
            throw error
        }
        await broker.shutDown()
    }

    @Test("an undecodable message is dead-lettered: it lands in the .dlq with its reason, and the queue is empty")
    func undecodableMessageIsDeadLettered() async throws {
        let queue = Support.uniqueQueue("poison")
        try await Support.withTransport(deleting: [queue]) { transport in
            try await transport.declare(queues: [queue])
            let garbage: [UInt8] = Array("definitely not an envelope".utf8)
            try await transport.publish(OutgoingMessage(body: garbage, key: "run-9", headers: ["origin": "test"]), to: queue)

            // What a worker does: decode, and dead-letter what cannot be decoded.
            let stream = try await transport.consume(queues: [queue], credit: 1)
            var iterator = stream.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            let decodeError = #expect(throws: GantryError.self) { try TaskEnvelope(decoding: delivery.body) }
            let reason = "undecodable task envelope: \(try #require(decodeError).message)"
            try await transport.deadLetter(delivery, reason: reason)
            stream.stopIntake()

            let dead = DeliveryCollector(try await transport.consume(queues: [transport.deadLetterQueue(of: queue)], credit: 1))
            let got = try await dead.wait(for: 1)[0]
            #expect(got.body == garbage)
            #expect(got.queue == queue + ".dlq")
            #expect(got.headers[deadLetterReasonHeader] == reason)
            #expect(got.headers[deadLetterReasonHeader]?.contains("bad magic bytes") == true)
            #expect(got.key == "run-9")
            #expect(got.headers["origin"] == "test")
            try await transport.ack(got)
            await dead.stop()
            #expect(try await transport.depth(of: queue) == 0)
        }
    }

    @Test("nack without requeue takes the queue's dead-letter route, with a reason from RabbitMQ's x-death")
    func nackWithoutRequeueDeadLetters() async throws {
        let queue = Support.uniqueQueue("nacked")
        try await Support.withTransport(deleting: [queue]) { transport in
            try await transport.declare(queues: [queue])
            try await transport.publish(message("refused"), to: queue)
            let collector = DeliveryCollector(try await transport.consume(queues: [queue], credit: 1))
            try await transport.nack(try await collector.wait(for: 1)[0], requeue: false)
            let dead = DeliveryCollector(try await transport.consume(queues: [queue + ".dlq"], credit: 1))
            let got = try await dead.wait(for: 1)[0]
            #expect(Support.text(got) == "refused")
            #expect(got.headers[deadLetterReasonHeader] == "RabbitMQ dead-lettered it from queue '\(queue)': rejected")
            try await transport.ack(got)
            await dead.stop()
            await collector.stop()
        }
    }

    @Test("higher priorities are delivered first when messages are queued; equal ones keep their order")
    func prioritiesHigherFirst() async throws {
        let queue = Support.uniqueQueue("priority")
        try await Support.withTransport(deleting: [queue]) { transport in
            try await transport.declare(queues: [queue])
            let sent: [(String, UInt8)] = [("low-1", 0), ("mid-1", 5), ("top-1", 9), ("low-2", 0), ("top-2", 9), ("mid-2", 5), ("over", 200)]
            try await transport.publish(sent.map { message($0.0, priority: $0.1) }, to: queue)
            #expect(try await transport.depth(of: queue) == sent.count)
            let stream = try await transport.consume(queues: [queue], credit: 1)
            var order: [String] = []
            for try await delivery in stream {
                order.append(Support.text(delivery))
                try await transport.ack(delivery)
                if order.count == sent.count { break }
            }
            // 200 is above the queue's maximum and counts as 10, the highest.
            #expect(order == ["over", "top-1", "top-2", "mid-1", "mid-2", "low-1", "low-2"])
        }
    }

    @Test("credit bounds the unsettled deliveries of a multi-queue consumer together")
    func creditIsSharedAcrossQueues() async throws {
        let first = Support.uniqueQueue("credit-a")
        let second = Support.uniqueQueue("credit-b")
        try await Support.withTransport(deleting: [first, second]) { transport in
            try await transport.declare(queues: [first, second])
            try await transport.publish((0..<3).map { message("a\($0)") }, to: first)
            try await transport.publish((0..<3).map { message("b\($0)") }, to: second)
            let collector = DeliveryCollector(try await transport.consume(queues: [first, second], credit: 2))
            let held = try await collector.wait(for: 2)
            // The broker holds back the other four: a per-queue limit would have sent four.
            try await Support.eventually("the broker reports 4 messages ready") {
                let ready = try await (transport.depth(of: first) ?? 0) + (transport.depth(of: second) ?? 0)
                return ready == 4
            }
            #expect(collector.deliveries.count == 2)
            var settled = 0
            for delivery in held {
                try await transport.ack(delivery)
                settled += 1
            }
            while settled < 6 {
                let all = try await collector.wait(for: settled + 1)
                #expect(all.count <= settled + 2)
                try await transport.ack(all[settled])
                settled += 1
            }
            #expect(Set(collector.deliveries.map(\.queue)) == [first, second])
            await collector.stop()
        }
    }

    @Test("publishing to a queue nobody declared declares it instead of losing the message")
    func publishToUndeclaredQueue() async throws {
        let queue = Support.uniqueQueue("undeclared")
        try await Support.withTransport(deleting: [queue]) { transport in
            try await transport.publish(message("kept"), to: queue)
            #expect(try await transport.depth(of: queue) == 1)
            let collector = DeliveryCollector(try await transport.consume(queues: [queue], credit: 1))
            let got = try await collector.wait(for: 1)[0]
            #expect(Support.text(got) == "kept")
            try await transport.deadLetter(got, reason: "checking the .dlq exists too")
            #expect(try await transport.depth(of: queue + ".dlq") == 1)
            await collector.stop()
        }
    }

    @Test("a delivery settled twice, or after close, fails with a clear error; calls after close throw .closed")
    func settlingErrors() async throws {
        let queue = Support.uniqueQueue("settle")
        try await Support.withTransport(deleting: [queue]) { transport in
            try await transport.publish(message("once"), to: queue)
            let collector = DeliveryCollector(try await transport.consume(queues: [queue], credit: 1))
            let delivery = try await collector.wait(for: 1)[0]
            try await transport.ack(delivery)
            let twice = await #expect(throws: GantryError.self) { try await transport.ack(delivery) }
            #expect(twice?.code == .invalidArgument)
            var foreign = delivery
            foreign.token = DeliveryToken(consumer: UInt64(9999) << 32 | 1, sequence: 1)
            let unknown = await #expect(throws: GantryError.self) { try await transport.ack(foreign) }
            #expect(unknown?.code == .invalidArgument)
            await collector.stop()
            await transport.close()
            let after = await #expect(throws: GantryError.self) { try await transport.publish(message("late"), to: queue) }
            #expect(after?.code == .closed)
            let consumeAfter = await #expect(throws: GantryError.self) { _ = try await transport.consume(queues: [queue], credit: 1) }
            #expect(consumeAfter?.code == .closed)
        }
    }

    @Test("configuration from the environment, with every key")
    func configurationFromEnvironment() throws {
        let configuration = try RabbitMQTransportConfiguration.fromEnvironment([
            "GANTRY_AMQP_URL": "amqps://u:p@broker.example:5999/prod?verify=verify_none",
            "GANTRY_AMQP_QUEUE_PREFIX": "team.",
            "GANTRY_AMQP_RECONNECT_BACKOFF_MS": "20",
            "GANTRY_AMQP_RECONNECT_BACKOFF_MAX_MS": "800",
            "GANTRY_AMQP_RECONNECT_TIMEOUT_MS": "0",
        ])
        #expect(configuration.amqp.host == "broker.example")
        #expect(configuration.amqp.tls?.verifyPeer == false)
        #expect(configuration.queuePrefix == "team.")
        #expect(configuration.reconnectBackoffInitial == .milliseconds(20))
        #expect(configuration.reconnectBackoffMax == .milliseconds(800))
        #expect(configuration.reconnectTimeout == nil)
        let defaults = try RabbitMQTransportConfiguration.fromEnvironment([:])
        #expect(defaults.queuePrefix == "gantry.")
        #expect(defaults.maxPriority == 10)
        #expect(defaults.reconnectTimeout == .seconds(120))
        let bad = #expect(throws: GantryError.self) {
            try RabbitMQTransportConfiguration.fromEnvironment(["GANTRY_AMQP_RECONNECT_BACKOFF_MS": "soon"])
        }
        #expect(bad?.code == .configuration)
        #expect(bad?.message.contains("GANTRY_AMQP_RECONNECT_BACKOFF_MS") == true)
    }
}
