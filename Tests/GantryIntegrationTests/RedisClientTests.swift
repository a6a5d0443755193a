import Foundation
import GantryCore
import GantryRedis
import GantryRuntime
import Testing

/// Integration tests of ``RedisClient`` against the shared Redis of `ops/stack up redis`
/// (`GANTRY_REDIS_URL`), and against private servers for the tests that stop, flush or
/// reconfigure Redis. Every test uses its own UUID-named keys.
@Suite("Redis client", .timeLimit(.minutes(2)))
struct RedisClientTests {
    // MARK: Commands and values

    @Test("SET, GET and DEL round-trip binary data")
    func roundTripBinary() async throws {
        let client = try RedisTestEnvironment.client()
        defer { client.close() }
        let key = RedisTestEnvironment.key("binary")
        // Every byte value, NULs and RESP framing characters: nothing may be interpreted.
        let payload: [UInt8] = Array(0...255) + Array("\r\n$-1\r\n*3\r\n".utf8) + [0, 0, 0xFF]

        #expect(try await client.send("SET", key, payload) == .status("OK"))
        #expect(try await client.send("GET", key) == .bulk(payload))
        #expect(try await client.send(["STRLEN", .string(key)]).int == payload.count)
        #expect(try await client.send("DEL", key) == .integer(1))
        #expect(try await client.send("GET", key) == .null)

        // Empty values and integers at the edges of Int64 survive the trip too.
        #expect(try await client.send(["SET", .string(key), .bytes([])]) == .status("OK"))
        #expect(try await client.send("GET", key) == .bulk([]))
        #expect(try await client.send("SET", key, Int.min) == .status("OK"))
        #expect(try await client.send("GET", key).string == "\(Int.min)")
        #expect(try await client.send("SET", key, UInt64.max) == .status("OK"))
        #expect(try await client.send("GET", key).string == "\(UInt64.max)")
        _ = try await client.send("DEL", key)
    }

    @Test("an error reply of a single command throws .commandFailed naming the command")
    func singleCommandError() async throws {
        let client = try RedisTestEnvironment.client()
        defer { client.close() }
        let key = RedisTestEnvironment.key("wrongtype")
        _ = try await client.send("SET", key, "text")
        let error = await #expect(throws: GantryError.self) { try await client.send("LPUSH", key, "x") }
        #expect(error?.code == .commandFailed)
        #expect(error?.message.hasPrefix("LPUSH failed: WRONGTYPE") == true, "\(String(describing: error))")
        #expect(error?.isRetriable == false)
        _ = try await client.send("DEL", key)
    }

    @Test("a pipeline of 1,000 commands returns 1,000 replies in order, with a per-command error")
    func pipelineInOrder() async throws {
        let client = try RedisTestEnvironment.client()
        defer { client.close() }
        let list = RedisTestEnvironment.key("list")
        let text = RedisTestEnvironment.key("text")
        _ = try await client.send("SET", text, "not a number")

        var commands: [[RedisArgument]] = []
        for index in 0..<1000 {
            commands.append(index == 500 ? ["INCR", .string(text)] : ["RPUSH", .string(list), .integer(index)])
        }
        let replies = try await client.pipeline(commands)

        #expect(replies.count == 1000)
        for (index, reply) in replies.enumerated() {
            if index == 500 {
                #expect(reply.errorMessage?.contains("not an integer") == true, "reply \(index): \(reply)")
            } else {
                // RPUSH answers the new length: it rises by one per command, in send order.
                #expect(reply == .integer(index < 500 ? index + 1 : index), "reply \(index)")
            }
        }
        let stored = try await client.send("LRANGE", list, 0, -1).array?.compactMap(\.int)
        #expect(stored == (0..<1000).filter { $0 != 500 })
        _ = try await client.send("DEL", list, text)
    }

    @Test("RedisPipeline builds the same commands as arrays, and is reusable")
    func pipelineBuilder() async throws {
        let client = try RedisTestEnvironment.client()
        defer { client.close() }
        let key = RedisTestEnvironment.key("builder")
        var batch = RedisPipeline(reservingCapacity: 4)
        batch.append("SET", key, 41)
        batch.append(["INCR", .string(key)])
        batch.append("GET", key)
        batch.append("NOSUCHCOMMAND")
        #expect(batch.count == 4)
        let replies = try await client.pipeline(batch)
        #expect(replies[0] == .status("OK"))
        #expect(replies[1] == .integer(42))
        #expect(replies[2].string == "42")
        #expect(replies[3].errorMessage?.hasPrefix("ERR unknown command") == true)

        batch.removeAll()
        #expect(batch.isEmpty)
        batch.append("DEL", key)
        #expect(try await client.pipeline(batch) == [.integer(1)])
        #expect(try await client.pipeline(RedisPipeline()) == [])
    }

    // MARK: Scripts

    @Test("RedisScript computes the SHA1 Redis uses")
    func scriptSHA1() async throws {
        #expect(RedisScript(name: "empty", source: "").sha1 == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        #expect(RedisScript(name: "abc", source: "abc").sha1 == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(
            RedisScript(name: "two-blocks", source: "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").sha1
                == "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        )
        let client = try RedisTestEnvironment.client(poolSize: 1)
        defer { client.close() }
        let script = RedisScript(name: "sha-check", source: "return '\(UUID().uuidString)' -- ünïcödé")
        #expect(try await client.load(script) == script.sha1)
    }

    @Test("EVALSHA loads the script itself after SCRIPT FLUSH, alone and inside pipelines")
    func evalshaAutoLoad() async throws {
        // SCRIPT FLUSH empties the cache of the whole server: do it on a private one.
        try await withRedisTestServer { server in
            let client = try RedisClient(url: server.url)
            defer { client.close() }
            let add = RedisScript(name: "add_to", source: "return redis.call('INCRBY', KEYS[1], ARGV[1])")
            let echo = RedisScript(name: "echo", source: "return ARGV[1]")
            let key = RedisTestEnvironment.key("counter")

            // Never loaded: the first call loads it.
            #expect(try await client.evalsha(add, keys: [.string(key)], args: [5]) == .integer(5))
            #expect(try await client.send("SCRIPT", "FLUSH") == .status("OK"))
            #expect(try await client.send("SCRIPT", "EXISTS", add.sha1) == .array([.integer(0)]))
            #expect(try await client.evalsha(add, keys: [.string(key)], args: [5]) == .integer(10))

            // Inside a pipeline: every EVALSHA comes back with its own result, in its slot,
            // next to the plain commands and a per-command error.
            #expect(try await client.send("SCRIPT", "FLUSH") == .status("OK"))
            var batch = RedisPipeline()
            for index in 1...10 {
                batch.evalsha(add, keys: key, args: 1)
                batch.evalsha(echo, keys: [], args: ["e\(index)"])
                batch.append("NOSUCHCOMMAND")
            }
            let replies = try await client.pipeline(batch)
            #expect(replies.count == 30)
            let counts = stride(from: 0, to: 30, by: 3).map { replies[$0].int }
            #expect(counts == Array(11...20))
            #expect(stride(from: 1, to: 30, by: 3).map { replies[$0].string } == (1...10).map { "e\($0)" })
            #expect(stride(from: 2, to: 30, by: 3).allSatisfy { replies[$0].errorMessage?.hasPrefix("ERR unknown command") == true })
            #expect(try await client.send("GET", key).int == 20)
        }
    }

    @Test("script errors name the script; a script that does not compile is reported per command")
    func scriptErrors() async throws {
        let client = try RedisTestEnvironment.client(poolSize: 1)
        defer { client.close() }
        let failing = RedisScript(name: "always_fails", source: "return redis.error_reply('ERR refused by design')")
        let error = await #expect(throws: GantryError.self) { try await client.evalsha(failing) }
        #expect(error?.code == .commandFailed)
        #expect(error?.message == "EVALSHA always_fails failed: ERR refused by design")

        // A unique source guarantees the server has never cached it.
        let broken = RedisScript(name: "broken", source: "this is not lua \(UUID().uuidString)")
        var batch = RedisPipeline()
        batch.append("PING")
        batch.evalsha(broken, keys: [], args: [])
        let replies = try await client.pipeline(batch)
        #expect(replies[0] == .status("PONG"))
        #expect(replies[1].errorMessage?.hasPrefix("SCRIPT LOAD of broken failed: ERR Error compiling script") == true, "\(replies[1])")
    }

    // MARK: Pool

    @Test("200 concurrent tasks share a pool of 4 connections without losing an increment")
    func concurrentIncrements() async throws {
        let client = try RedisTestEnvironment.client(poolSize: 4)
        defer { client.close() }
        let key = RedisTestEnvironment.key("concurrent")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<200 {
                group.addTask {
                    for _ in 0..<5 { _ = try await client.send("INCR", key) }
                }
            }
            try await group.waitForAll()
        }
        #expect(try await client.send("GET", key).int == 1000)
        _ = try await client.send("DEL", key)
    }

    @Test("waiting for a connection is first come, first served, and cancellable")
    func fairAndCancellableAcquisition() async throws {
        let client = try RedisTestEnvironment.client(poolSize: 1)
        defer { client.close() }
        let helper = try RedisTestEnvironment.client(poolSize: 1)
        defer { helper.close() }
        let gate = RedisTestEnvironment.key("gate")
        let order = RedisTestEnvironment.key("order")

        // Occupy the only connection until the helper pushes to the gate list.
        let holder = Task { try await client.send("BLPOP", gate, 30) }
        try await redisWaitUntil("the BLPOP to block") {
            try await helper.send("CLIENT", "LIST", "TYPE", "normal").string?.contains("cmd=blpop") == true
        }

        // A cancelled waiter leaves the line at once, with .cancelled.
        let cancelled = Task { try await client.send("PING") }
        try await redisWaitUntil("one waiter") { client.waitingForConnection == 1 }
        cancelled.cancel()
        let cancellation = await #expect(throws: GantryError.self) { try await cancelled.value }
        #expect(cancellation?.code == .cancelled)
        #expect(client.waitingForConnection == 0)

        // Waiters are served in arrival order.
        var waiters: [Task<RedisValue, any Error>] = []
        for index in 1...5 {
            waiters.append(Task { try await client.send("RPUSH", order, index) })
            try await redisWaitUntil("waiter \(index) to queue") { client.waitingForConnection == index }
        }
        _ = try await helper.send("LPUSH", gate, "go")
        #expect(try await holder.value.array?.last?.string == "go")
        for waiter in waiters { _ = try await waiter.value }
        #expect(try await helper.send("LRANGE", order, 0, -1).array?.compactMap(\.int) == [1, 2, 3, 4, 5])
        _ = try await helper.send("DEL", gate, order)
    }

    @Test("a closed client refuses work with .closed")
    func closedClient() async throws {
        let client = try RedisTestEnvironment.client(poolSize: 1)
        _ = try await client.send("PING")
        client.close()
        let error = await #expect(throws: GantryError.self) { try await client.send("PING") }
        #expect(error?.code == .closed)
    }

    // MARK: Authentication

    @Test("AUTH with an ACL user, and a clear error for a bad password")
    func aclUser() async throws {
        let admin = try RedisTestEnvironment.client(poolSize: 1)
        defer { admin.close() }
        let user = "gantry-test-\(UUID().uuidString)"
        let password = UUID().uuidString
        let prefix = "gantry-test:acl:\(UUID().uuidString)"
        #expect(try await admin.send("ACL", "SETUSER", user, "on", ">\(password)", "~\(prefix):*", "+@all") == .status("OK"))
        do {
            var configuration = try RedisTestEnvironment.configuration(poolSize: 2)
            configuration.username = user
            configuration.password = password
            let client = try RedisClient(configuration: configuration)
            defer { client.close() }
            #expect(try await client.send("ACL", "WHOAMI").string == user)
            #expect(try await client.send("SET", "\(prefix):k", "v") == .status("OK"))
            #expect(try await client.send("GET", "\(prefix):k").string == "v")
            let denied = await #expect(throws: GantryError.self) { try await client.send("GET", "gantry-test:elsewhere") }
            #expect(denied?.message.contains("NOPERM") == true)
            _ = try await client.send("DEL", "\(prefix):k")

            configuration.password = "wrong-\(password)"
            let refused = try RedisClient(configuration: configuration)
            defer { refused.close() }
            let error = await #expect(throws: GantryError.self) { try await refused.send("PING") }
            #expect(error?.code == .configuration)
            #expect(error?.isRetriable == false)
            #expect(error?.message.contains("AUTH as user '\(user)' failed: WRONGPASS") == true, "\(String(describing: error))")
            #expect(error?.message.contains(configuration.address) == true)
            #expect(error?.message.contains(password) == false, "the message must not leak the password")
        } catch {
            _ = try? await admin.send("ACL", "DELUSER", user)
            throw error
        }
        #expect(try await admin.send("ACL", "DELUSER", user) == .integer(1))
    }

    @Test("AUTH with a password only (requirepass), and SELECT of a database")
    func passwordOnly() async throws {
        let password = UUID().uuidString
        try await withRedisTestServer(extraArguments: ["--requirepass", password]) { server in
            let key = RedisTestEnvironment.key("db")
            let authenticated = try RedisClient(url: "redis://:\(password)@127.0.0.1:\(server.port)/3")
            defer { authenticated.close() }
            #expect(try await authenticated.send("SET", key, "in db 3") == .status("OK"))
            #expect(try await authenticated.send("CLIENT", "INFO").string?.contains(" db=3 ") == true)

            let anonymous = try RedisClient(url: server.url)
            defer { anonymous.close() }
            let noAuth = await #expect(throws: GantryError.self) { try await anonymous.send("GET", key) }
            #expect(noAuth?.message.hasPrefix("GET failed: NOAUTH") == true)

            let wrong = try RedisClient(url: "redis://:nope@127.0.0.1:\(server.port)")
            defer { wrong.close() }
            let refused = await #expect(throws: GantryError.self) { try await wrong.send("PING") }
            #expect(refused?.code == .configuration)
            #expect(refused?.message.contains("AUTH failed") == true, "\(String(describing: refused))")
        }
    }

    // MARK: Failures and recovery

    @Test("a server that is not running gives a retriable .connectionFailed naming the address")
    func serverDown() async throws {
        let port = try TCPProbe.freeLoopbackPort()
        var configuration = try RedisConfiguration(url: "redis://127.0.0.1:\(port)")
        configuration.connectTimeout = .seconds(1)
        let client = try RedisClient(configuration: configuration)
        defer { client.close() }
        for _ in 0..<2 {  // the second attempt meets the reconnect backoff: same kind of error
            let error = await #expect(throws: GantryError.self) { try await client.send("GET", "k") }
            #expect(error?.code == .connectionFailed)
            #expect(error?.isRetriable == true)
            #expect(error?.message.hasPrefix("GET failed: Redis at 127.0.0.1:\(port) is unreachable") == true, "\(String(describing: error))")
            #expect(error?.message.contains("start it with ops/stack up or set GANTRY_REDIS_URL") == true)
        }
        // retrying(until:) gives up at the deadline with the last retriable error.
        let started = ContinuousClock.now
        let error = await #expect(throws: GantryError.self) {
            try await client.retrying(until: .now + .milliseconds(300)) { try await client.send("PING") }
        }
        #expect(error?.code == .connectionFailed)
        #expect(ContinuousClock.now - started < .seconds(2))
    }

    @Test("a command over the command timeout throws .timeout and the connection recovers")
    func commandTimeout() async throws {
        var configuration = try RedisTestEnvironment.configuration(poolSize: 1)
        configuration.commandTimeout = .milliseconds(200)
        let client = try RedisClient(configuration: configuration)
        defer { client.close() }
        let key = RedisTestEnvironment.key("never-pushed")
        let error = await #expect(throws: GantryError.self) { try await client.send("BLPOP", key, 5) }
        #expect(error?.code == .timeout)
        #expect(error?.isRetriable == true)
        #expect(error?.message.hasPrefix("BLPOP failed: no reply from Redis at 127.0.0.1") == true, "\(String(describing: error))")
        // The timed-out connection was dropped; the next command gets a fresh one.
        #expect(try await client.send("PING") == .status("PONG"))
    }

    @Test("the same client survives a Redis restart and reads back the data")
    func restartSurvival() async throws {
        try await withRedisTestServer { server in
            var configuration = try RedisConfiguration(url: server.url)
            configuration.poolSize = 2
            configuration.reconnectBackoffInitial = .milliseconds(20)
            configuration.reconnectBackoffMax = .milliseconds(200)
            let client = try RedisClient(configuration: configuration)
            defer { client.close() }
            let key = RedisTestEnvironment.key("durable")
            let script = RedisScript(name: "get_it", source: "return redis.call('GET', KEYS[1])")

            #expect(try await client.send("SET", key, "survives") == .status("OK"))
            #expect(try await client.evalsha(script, keys: [.string(key)]).string == "survives")

            try await server.stop()
            // Down: every call fails fast and retriably, naming the address.
            for _ in 0..<3 {
                let error = await #expect(throws: GantryError.self) { try await client.send("GET", key) }
                #expect(error?.code == .connectionFailed)
                #expect(error?.isRetriable == true)
                #expect(error?.message.contains("127.0.0.1:\(server.port)") == true)
            }

            try await server.start()
            let value = try await client.retrying(until: .now + .seconds(15)) {
                try await client.send("GET", key)
            }
            #expect(value.string == "survives")
            // The restarted server lost its script cache: EVALSHA loads the script again.
            let viaScript = try await client.retrying(until: .now + .seconds(15)) {
                try await client.evalsha(script, keys: [.string(key)])
            }
            #expect(viaScript.string == "survives")
        }
    }
}

extension RedisClientTests {
    @Test("a connection the server drops in the middle of a write fails the command, not the process")
    func droppedMidWrite() async throws {
        // With proto-max-bulk-len 1mb the server rejects a 32 MB argument after its header and
        // closes the connection while we are still writing. The write fails (ECONNRESET, or
        // EPIPE, which would raise a process-killing SIGPIPE were it not blocked on the
        // connection threads); the command must fail and the next one reconnect.
        try await withRedisTestServer(extraArguments: ["--proto-max-bulk-len", "1mb"]) { server in
            let client = try RedisClient(url: server.url)
            defer { client.close() }
            let key = RedisTestEnvironment.key("huge")
            let huge = [UInt8](repeating: 0x61, count: 32 << 20)
            let error = await #expect(throws: GantryError.self) { try await client.send("SET", key, huge) }
            #expect(error?.code == .connectionFailed || error?.code == .commandFailed, "\(String(describing: error))")
            #expect(try await client.send("PING") == .status("PONG"))
        }
    }
}

extension RedisClientTests {
    @Test("waiting requests share a round trip, but never one with a blocking command")
    func blockingCommandsAreNotGrouped() async throws {
        // CLIENT LIST must see only this test's connections: use a private server.
        try await withRedisTestServer { server in
            var configuration = try RedisConfiguration(url: server.url)
            configuration.poolSize = 2
            configuration.commandTimeout = .seconds(60)
            let client = try RedisClient(configuration: configuration)
            defer { client.close() }
            let helper = try RedisClient(url: server.url)
            defer { helper.close() }
            func blocked() async throws -> Int {
                let clients = try await helper.send("CLIENT", "LIST").string ?? ""
                return clients.components(separatedBy: "cmd=blpop").count - 1
            }

            // Both connections busy in BLPOPs.
            let first = Task { try await client.send("BLPOP", "gate-1", 30) }
            let second = Task { try await client.send("BLPOP", "gate-2", 30) }
            try await redisWaitUntil("two BLPOPs to block") { try await blocked() == 2 }
            // Queued behind them: another BLPOP, then a PING.
            let third = Task { try await client.send("BLPOP", "gate-3", 30) }
            try await redisWaitUntil("the third BLPOP to queue") { client.waitingForConnection == 1 }
            let pinged = Task { try await client.send("PING") }
            try await redisWaitUntil("the PING to queue") { client.waitingForConnection == 2 }

            // The first connection frees up and takes the BLPOP alone; the second takes the
            // PING, which must not be stuck behind the still-blocked BLPOP.
            _ = try await helper.send("LPUSH", "gate-1", "go")
            _ = try await first.value
            try await redisWaitUntil("the third BLPOP to block") { client.waitingForConnection == 1 }
            _ = try await helper.send("LPUSH", "gate-2", "go")
            _ = try await second.value
            #expect(try await pinged.value == .status("PONG"))
            #expect(try await blocked() == 1, "the third BLPOP is still blocked")
            _ = try await helper.send("LPUSH", "gate-3", "go")
            #expect(try await third.value.array?.last?.string == "go")
        }
    }
}
