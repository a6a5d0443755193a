import Foundation
import GantryAMQP
import GantryCore
import Testing

/// The RabbitMQ wire against the real broker (`ops/stack up rabbitmq`, or `GANTRY_AMQP_URL`).
/// Every test works on its own UUID-named queues and deletes them at the end.
@Suite("AMQP wire against RabbitMQ")
struct AMQPTests {
    typealias Support = AMQPTestSupport

    @Test("publish with confirm, consume, ack: body, headers and properties survive the round trip")
    func publishConsumeAckRoundTrip() async throws {
        let queue = Support.uniqueName("roundtrip")
        let headers: [String: AMQPFieldValue] = [
            "x-gantry-run": "run-1",
            "attempt": 3,
            "big": .int64(1 << 40),
            "retriable": true,
            "ratio": 0.25,
            "raw": .bytes([0, 255, 7]),
            "list": [1, "two", false],
            "trace": ["span": "abc", "sampled": true],
            "stamp": .timestamp(1_700_000_000),
        ]
        let body = Array("hello, gantry".utf8) + [0, 1, 2, 255]
        let properties = AMQPProperties(
            persistent: true, priority: 4, headers: headers,
            messageID: "message-1", correlationID: "correlation-1",
            contentType: "application/octet-stream", type: "gantry.task"
        )

        try await Support.withClient(deleting: [queue]) { observer in
            try await Support.withClient(deleting: []) { client in
                let declared = try await client.declareQueue(queue, arguments: [AMQPQueueArgument.maxPriority: 9])
                #expect(declared == AMQPQueueStatus(name: queue, messageCount: 0, consumerCount: 0))
                // Declaring again with the same settings is a no-op.
                try await client.declareQueue(queue, arguments: [AMQPQueueArgument.maxPriority: 9])

                try await client.confirmSelect()
                try await client.publish(routingKey: queue, body: body, properties: properties)
                // Confirmed means stored: the queue holds it before anyone consumes.
                #expect(try await client.queueDepth(queue) == 1)

                let consumer = try await client.consume(queue: queue)
                let delivery = try await Support.nextDelivery(consumer)
                #expect(delivery.body == body)
                #expect(delivery.properties.headers == headers)
                #expect(delivery.properties == properties)
                #expect(delivery.properties.isPersistent)
                #expect(!delivery.redelivered)
                #expect(delivery.exchange == "")
                #expect(delivery.routingKey == queue)
                #expect(delivery.consumerTag == consumer.consumerTag)

                try await client.ack(deliveryTag: delivery.deliveryTag)
                try await consumer.cancel()
                #expect(try await consumer.next() == nil)
            }
            // Had the ack not reached the broker, closing the channel would have requeued it.
            #expect(try await observer.queueDepth(queue) == 0)
        }
    }

    @Test("nack with requeue: the message comes back flagged redelivered")
    func nackRequeueRedelivers() async throws {
        let queue = Support.uniqueName("nack")
        try await Support.withClient(deleting: [queue]) { client in
            try await client.declareQueue(queue)
            try await client.confirmSelect()
            try await client.publish(routingKey: queue, body: Array("retry me".utf8))

            let consumer = try await client.consume(queue: queue)
            let first = try await Support.nextDelivery(consumer, "the first delivery")
            #expect(!first.redelivered)
            try await client.nack(deliveryTag: first.deliveryTag, requeue: true)

            let second = try await Support.nextDelivery(consumer, "the redelivery")
            #expect(second.redelivered)
            #expect(second.body == first.body)
            #expect(second.deliveryTag != first.deliveryTag)
            try await client.ack(deliveryTag: second.deliveryTag)
            try await consumer.cancel()
        }
    }

    @Test("a consumer closed without acking: the message goes to the next consumer, redelivered")
    func unackedMessageIsRedeliveredToNewConsumer() async throws {
        let queue = Support.uniqueName("abandoned")
        try await Support.withClient(deleting: [queue]) { client in
            try await client.declareQueue(queue)
            try await client.confirmSelect()
            try await client.publish(routingKey: queue, body: Array("survives a crash".utf8), properties: AMQPProperties(persistent: true))

            let doomed = try await Support.connect(name: "gantry-tests-doomed")
            let doomedConsumer = try await doomed.consume(queue: queue)
            let lost = try await Support.nextDelivery(doomedConsumer, "the delivery to the first consumer")
            #expect(!lost.redelivered)
            // The worker dies holding the message: its connection closes without an ack.
            await doomed.close()
            #expect(try await doomedConsumer.next() == nil)

            let consumer = try await client.consume(queue: queue)
            let again = try await Support.nextDelivery(consumer, "the redelivery to the second consumer")
            #expect(again.redelivered)
            #expect(again.body == lost.body)
            try await client.ack(deliveryTag: again.deliveryTag)
            try await consumer.cancel()
        }
    }

    @Test("acks made together, out of order and around an unacked delivery: only that one comes back")
    func acksMadeTogetherSettleExactlyTheirDeliveries() async throws {
        let queue = Support.uniqueName("acks")
        try await Support.withClient(deleting: [queue]) { observer in
            try await observer.declareQueue(queue)
            try await observer.confirmSelect()
            try await observer.publish((0..<40).map { AMQPOutboundMessage(routingKey: queue, body: [UInt8($0)], properties: AMQPProperties(persistent: true)) })

            let client = try await Support.connect(name: "gantry-tests-acks")
            try await client.qos(prefetchCount: 64)
            let consumer = try await client.consume(queue: queue)
            var deliveries: [AMQPDelivery] = []
            for _ in 0..<40 { deliveries.append(try await Support.nextDelivery(consumer)) }
            // Everything but message 7, from many tasks at once and in reverse order, so the acks
            // reach the connection thread together: some below the unacked one, some above it.
            let kept = deliveries[7]
            try await withThrowingTaskGroup(of: Void.self) { group in
                for delivery in deliveries.reversed() where delivery.deliveryTag != kept.deliveryTag {
                    group.addTask { try await client.ack(deliveryTag: delivery.deliveryTag) }
                }
                try await group.waitForAll()
            }
            // An ack that was accepted counts as settled at once: a second one is refused.
            await #expect(throws: GantryError.self) { try await client.ack(deliveryTag: deliveries[3].deliveryTag) }
            await client.close()

            let again = try await observer.consume(queue: queue)
            let back = try await Support.nextDelivery(again, "the one unacked delivery")
            #expect(back.body == kept.body)
            #expect(back.redelivered)
            try await observer.ack(deliveryTag: back.deliveryTag)
            try await again.cancel()
            // The 39 acked messages did not come back.
            #expect(try await observer.queueDepth(queue) == 0)
        }
    }

    @Test("reject without requeue lands the message in the dead-letter queue")
    func rejectDeadLetters() async throws {
        let queue = Support.uniqueName("work")
        let deadLetters = Support.uniqueName("dead")
        try await Support.withClient(deleting: [queue, deadLetters]) { client in
            try await client.declareQueue(deadLetters)
            try await client.declareQueue(queue, arguments: [
                AMQPQueueArgument.deadLetterExchange: "",
                AMQPQueueArgument.deadLetterRoutingKey: .string(deadLetters),
                AMQPQueueArgument.queueType: "classic",
            ])
            try await client.confirmSelect()
            let body = Array("poison".utf8)
            try await client.publish(routingKey: queue, body: body, properties: AMQPProperties(headers: ["reason-we-sent": "test"]))

            let consumer = try await client.consume(queue: queue)
            let delivery = try await Support.nextDelivery(consumer)
            try await client.reject(deliveryTag: delivery.deliveryTag, requeue: false)
            try await consumer.cancel()

            let deadConsumer = try await client.consume(queue: deadLetters)
            let dead = try await Support.nextDelivery(deadConsumer, "the dead-lettered message")
            #expect(dead.body == body)
            #expect(dead.routingKey == deadLetters)
            #expect(dead.properties.headers["reason-we-sent"] == "test")
            let death = try #require(dead.properties.headers["x-death"]?.arrayValue?.first?.tableValue)
            #expect(death["queue"]?.stringValue == queue)
            #expect(death["reason"]?.stringValue == "rejected")
            try await client.ack(deliveryTag: dead.deliveryTag)
            try await deadConsumer.cancel()
            #expect(try await client.queueDepth(queue) == 0)
        }
    }

    @Test("prefetch 2 with 5 messages: only 2 are delivered before an ack")
    func prefetchBoundsUnackedDeliveries() async throws {
        let queue = Support.uniqueName("prefetch")
        try await Support.withClient(deleting: [queue]) { client in
            try await client.declareQueue(queue)
            try await client.confirmSelect()
            try await client.publish((0..<5).map { AMQPOutboundMessage(routingKey: queue, body: [UInt8($0)]) })
            try await client.qos(prefetchCount: 2)

            let consumer = try await client.consume(queue: queue)
            var received: [AMQPDelivery] = []
            received.append(try await Support.nextDelivery(consumer))
            received.append(try await Support.nextDelivery(consumer))
            // The broker holds the other 3 back: they stay ready while 2 are unacked.
            try await Support.eventually("3 messages ready and 1 consumer") {
                try await client.queueStatus(queue) == AMQPQueueStatus(name: queue, messageCount: 3, consumerCount: 1)
            }
            #expect(try await client.queueDepth(queue) == 3)

            // Acking both (multiple) opens the window for exactly 2 more.
            try await client.ack(deliveryTag: received[1].deliveryTag, multiple: true)
            received.append(try await Support.nextDelivery(consumer))
            received.append(try await Support.nextDelivery(consumer))
            try await Support.eventually("1 message still ready") { try await client.queueDepth(queue) == 1 }

            try await client.ack(deliveryTag: received[3].deliveryTag, multiple: true)
            received.append(try await Support.nextDelivery(consumer))
            try await client.ack(deliveryTag: received[4].deliveryTag)

            #expect(received.map(\.body) == (0..<5).map { [UInt8($0)] })
            #expect(received.allSatisfy { !$0.redelivered })
            try await consumer.cancel()
        }
    }

    @Test("cancelling a consumer requeues what it buffered; cancelling the iterating task ends it")
    func cancellingConsumers() async throws {
        let queue = Support.uniqueName("cancel")
        try await Support.withClient(deleting: [queue]) { client in
            try await client.declareQueue(queue)
            try await client.confirmSelect()
            try await client.publish((0..<3).map { AMQPOutboundMessage(routingKey: queue, body: [UInt8($0)]) })

            let consumer = try await client.consume(queue: queue)
            let first = try await Support.nextDelivery(consumer)
            // All three are with us now: one read, two buffered unread.
            try await Support.eventually("all messages delivered") { try await client.queueDepth(queue) == 0 }
            try await consumer.cancel()
            #expect(try await consumer.next() == nil)
            // The two unread ones went back; the one we read is still ours to settle. (Eventually:
            // the nacks travel on the consuming channel, the depth query on another one.)
            try await Support.eventually("the unread deliveries are requeued") { try await client.queueDepth(queue) == 2 }
            try await client.ack(deliveryTag: first.deliveryTag)

            let second = try await client.consume(queue: queue)
            let rest = [try await Support.nextDelivery(second), try await Support.nextDelivery(second)]
            #expect(rest.map(\.body) == [[1], [2]])
            for delivery in rest { try await client.ack(deliveryTag: delivery.deliveryTag) }

            // A task waiting on an empty queue: cancelling it ends the iteration and the consumer.
            let iteration = Task {
                var count = 0
                for try await _ in second { count += 1 }
                return count
            }
            try await Support.eventually("the queue shows the consumer") { try await client.queueStatus(queue).consumerCount == 1 }
            iteration.cancel()
            #expect(try await iteration.value == 0)
            try await Support.eventually("the broker dropped the consumer") { try await client.queueStatus(queue).consumerCount == 0 }
        }
    }

    @Test("a batch publish waits for all confirms; the messages arrive in order")
    func batchPublishWithConfirms() async throws {
        let queue = Support.uniqueName("batch")
        try await Support.withClient(deleting: [queue]) { client in
            try await client.declareQueue(queue)
            try await client.confirmSelect()
            let count = 500
            try await client.publish((0..<count).map {
                AMQPOutboundMessage(routingKey: queue, body: Array("task-\($0)".utf8), properties: AMQPProperties(persistent: true))
            })
            // Every confirm arrived, so every message is already in the queue.
            #expect(try await client.queueDepth(queue) == UInt32(count))

            try await client.qos(prefetchCount: 50)
            let consumer = try await client.consume(queue: queue)
            for index in 0..<count {
                let delivery = try await Support.nextDelivery(consumer)
                #expect(delivery.body == Array("task-\(index)".utf8))
                if index % 50 == 49 {
                    try await client.ack(deliveryTag: delivery.deliveryTag, multiple: true)
                }
            }
            try await consumer.cancel()
            #expect(try await client.queueDepth(queue) == 0)
        }
    }

    @Test("a refused declare or a missing queue fails that call only; the client keeps working")
    func channelErrorsOnTopologyDoNotBreakTheClient() async throws {
        let queue = Support.uniqueName("mismatch")
        try await Support.withClient(deleting: [queue]) { client in
            try await client.declareQueue(queue, arguments: [AMQPQueueArgument.maxPriority: 5])

            let mismatch = await #expect(throws: GantryError.self) {
                try await client.declareQueue(queue, arguments: [AMQPQueueArgument.maxPriority: 9])
            }
            #expect(mismatch?.code == .commandFailed)
            #expect(mismatch?.message.contains("406 PRECONDITION_FAILED") == true)
            #expect(mismatch?.message.contains("queue.declare of queue '\(queue)'") == true)

            let missing = await #expect(throws: GantryError.self) {
                try await client.queueStatus(Support.uniqueName("missing"))
            }
            #expect(missing?.code == .notFound)
            let missingConsume = await #expect(throws: GantryError.self) {
                try await client.consume(queue: Support.uniqueName("missing"))
            }
            #expect(missingConsume?.code == .notFound)

            // Both channels still work.
            #expect(client.isOpen)
            try await client.confirmSelect()
            try await client.publish(routingKey: queue, body: [42])
            let consumer = try await client.consume(queue: queue)
            let delivery = try await Support.nextDelivery(consumer)
            #expect(delivery.body == [42])

            // An unknown tag is refused locally instead of letting RabbitMQ close the channel.
            let badAck = await #expect(throws: GantryError.self) {
                try await client.ack(deliveryTag: delivery.deliveryTag + 1000)
            }
            #expect(badAck?.code == .invalidArgument)
            try await client.ack(deliveryTag: delivery.deliveryTag)
            let doubleAck = await #expect(throws: GantryError.self) {
                try await client.ack(deliveryTag: delivery.deliveryTag)
            }
            #expect(doubleAck?.code == .invalidArgument)
            #expect(client.isOpen)
            try await consumer.cancel()
        }
    }

    @Test("messages the broker refuses (basic.nack) fail the batch publish with the count")
    func nackedPublishFails() async throws {
        let queue = Support.uniqueName("full")
        try await Support.withClient(deleting: [queue]) { client in
            // A full queue that rejects publishes makes RabbitMQ nack the overflow.
            try await client.declareQueue(queue, arguments: [AMQPQueueArgument.maxLength: 1, "x-overflow": "reject-publish"])
            try await client.confirmSelect()
            let error = await #expect(throws: GantryError.self) {
                try await client.publish((0..<3).map { AMQPOutboundMessage(routingKey: queue, body: [UInt8($0)]) })
            }
            #expect(error?.code == .commandFailed)
            #expect(error?.isRetriable == true)
            #expect(error?.message.contains("refused 2 of 3") == true)
            #expect(try await client.queueDepth(queue) == 1)
            // The channel is fine: nacks are answers, not errors.
            try await client.purgeQueue(queue)
            try await client.publish(routingKey: queue, body: [9])
            #expect(client.isOpen)
        }
    }

    @Test("a mandatory publish nobody can route fails with notFound")
    func unroutableMandatoryPublishFails() async throws {
        try await Support.withClient(deleting: []) { client in
            try await client.confirmSelect()
            let error = await #expect(throws: GantryError.self) {
                try await client.publish(routingKey: Support.uniqueName("nobody"), body: [1], mandatory: true)
            }
            #expect(error?.code == .notFound)
            #expect(error?.message.contains("312 NO_ROUTE") == true)
            // Not mandatory: the broker drops it and confirms.
            try await client.publish(routingKey: Support.uniqueName("nobody"), body: [1])
            #expect(client.isOpen)
        }
    }

    @Test("a channel closed by the broker fails the client with a retriable connectionFailed")
    func channelClosedByBrokerFailsTheClient() async throws {
        let queue = Support.uniqueName("channel-closed")
        try await Support.withClient(deleting: [queue]) { client in
            try await client.declareQueue(queue)
            try await client.confirmSelect()
            let consumer = try await client.consume(queue: queue)

            // Publishing to a missing exchange makes RabbitMQ close the publishing channel.
            let publishError = await #expect(throws: GantryError.self) {
                try await client.publish(exchange: Support.uniqueName("no-such-exchange"), routingKey: "x", body: [1])
            }
            #expect(publishError?.code == .connectionFailed)
            #expect(publishError?.isRetriable == true)
            #expect(publishError?.message.contains("404 NOT_FOUND") == true)

            let consumerError = await #expect(throws: GantryError.self) {
                _ = try await Support.withDeadline(10, "the consumer to end") { try await consumer.next() }
            }
            #expect(consumerError?.code == .connectionFailed)
            #expect(!client.isOpen)
            #expect(client.failure?.code == .connectionFailed)
            let later = await #expect(throws: GantryError.self) { try await client.queueDepth(queue) }
            #expect(later?.code == .connectionFailed)

            // The remedy: a new client.
            let replacement = try await Support.connect()
            #expect(try await replacement.queueDepth(queue) == 0)
            await replacement.close()
        }
    }

    @Test(
        "a connection closed by the broker ends consumers with a retriable connectionFailed",
        .enabled(if: AMQPTestSupport.canUseRabbitmqctl, "needs rabbitmqctl for the ops/stack node")
    )
    func connectionClosedByBrokerIsDetected() async throws {
        let queue = Support.uniqueName("forced")
        let name = Support.uniqueName("victim")
        try await Support.withClient(deleting: [queue]) { setup in
            try await setup.declareQueue(queue)
            let client = try await Support.connect(name: name)
            let consumer = try await client.consume(queue: queue)

            var pid: String?
            try await Support.eventually("rabbitmqctl lists the connection") {
                let listing = await Support.rabbitmqctlAsync(["list_connections", "pid", "name", "client_properties"]) ?? ""
                pid = listing.split(separator: "\n").first { $0.contains(name) }?.split(separator: "\t").first.map(String.init)
                return pid != nil
            }
            _ = await Support.rabbitmqctlAsync(["close_connection", try #require(pid), "gantry test: simulated broker shutdown"])

            let error = await #expect(throws: GantryError.self) {
                _ = try await Support.withDeadline(15, "the consumer to notice") { try await consumer.next() }
            }
            #expect(error?.code == .connectionFailed)
            #expect(error?.isRetriable == true)
            #expect(error?.message.contains("320") == true)
            let call = await #expect(throws: GantryError.self) { try await client.queueDepth(queue) }
            #expect(call?.isRetriable == true)
            await client.close()
        }
    }

    @Test("close ends consumers and refuses later calls with .closed")
    func closeEndsEverything() async throws {
        let queue = Support.uniqueName("close")
        try await Support.withClient(deleting: [queue]) { setup in
            try await setup.declareQueue(queue)
            let client = try await Support.connect()
            let consumer = try await client.consume(queue: queue)
            let waiting = Task { try await consumer.next() }
            await client.close()
            #expect(try await waiting.value == nil)
            #expect(!client.isOpen)
            #expect(client.failure == nil)
            let error = await #expect(throws: GantryError.self) { try await client.queueDepth(queue) }
            #expect(error?.code == .closed)
            await client.close()
        }
    }

    @Test("connecting to a closed port or with a wrong password names the problem")
    func connectErrorsAreClear() async throws {
        var unreachable = try AMQPTestSupport.configuration()
        unreachable.host = "127.0.0.1"
        unreachable.port = 1
        let refused = await #expect(throws: GantryError.self) { try await AMQPClient.connect(unreachable) }
        #expect(refused?.code == .connectionFailed)
        #expect(refused?.isRetriable == true)
        #expect(refused?.message.hasPrefix("cannot connect to RabbitMQ at 127.0.0.1:1: connection refused") == true)

        var wrongPassword = try AMQPTestSupport.configuration()
        wrongPassword.password = "not-the-password"
        let denied = await #expect(throws: GantryError.self) { try await AMQPClient.connect(wrongPassword) }
        #expect(denied?.code == .connectionFailed)
        #expect(denied?.isRetriable == false)
        #expect(denied?.message.contains("ACCESS_REFUSED") == true)
        #expect(denied?.message.contains("not-the-password") == false)

        var wrongVhost = try AMQPTestSupport.configuration()
        wrongVhost.virtualHost = Support.uniqueName("vhost")
        let noVhost = await #expect(throws: GantryError.self) { try await AMQPClient.connect(wrongVhost) }
        #expect(noVhost?.isRetriable == false)
        #expect(noVhost?.message.contains("vhost") == true)
    }
}
