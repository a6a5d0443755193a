import GantryCore
import GantryRedis
import Testing

/// URL parsing and validation of ``RedisConfiguration``; no server needed.
@Suite("Redis configuration")
struct RedisConfigurationTests {
    @Test("defaults point at the local stack")
    func defaults() throws {
        let configuration = RedisConfiguration()
        #expect(configuration.address == "127.0.0.1:6390")
        #expect(configuration.poolSize == 4)
        #expect(configuration.connectTimeout == .seconds(2))
        #expect(configuration.commandTimeout == .seconds(5))
        #expect(try RedisConfiguration(url: RedisConfiguration.defaultURL) == configuration)
    }

    @Test("URLs with user, password, port and database")
    func urls() throws {
        let full = try RedisConfiguration(url: "redis://alice:s%40cr%3At@redis.internal:7000/2")
        #expect(full.host == "redis.internal")
        #expect(full.port == 7000)
        #expect(full.username == "alice")
        #expect(full.password == "s@cr:t")
        #expect(full.database == 2)
        #expect(full.redactedURL == "redis://alice:***@redis.internal:7000/2")

        let passwordOnly = try RedisConfiguration(url: "redis://:secret@localhost")
        #expect(passwordOnly.username == nil)
        #expect(passwordOnly.password == "secret")
        #expect(passwordOnly.port == 6379)
        #expect(passwordOnly.database == 0)

        let userOnly = try RedisConfiguration(url: "redis://bob@h:1/")
        #expect(userOnly.username == "bob")
        #expect(userOnly.password == "")

        let ipv6 = try RedisConfiguration(url: "redis://[::1]:6390/1")
        #expect(ipv6.host == "::1")
        #expect(ipv6.address == "[::1]:6390")
    }

    @Test("bad URLs and values are .configuration errors that say what is wrong", arguments: [
        ("http://localhost", "does not start with redis://"),
        ("rediss://localhost", "TLS"),
        ("redis://", "host is missing"),
        ("redis://localhost:99999", "port '99999'"),
        ("redis://localhost:6379/x", "database 'x'"),
        ("redis://:%zz@localhost", "bad %-escape"),
        ("redis://localhost?timeout=1", "query parameters"),
    ])
    func badURLs(url: String, complaint: String) throws {
        let error = #expect(throws: GantryError.self) { try RedisConfiguration(url: url) }
        #expect(error?.code == .configuration)
        #expect(error?.message.contains(complaint) == true, "\(String(describing: error))")
    }

    @Test("the environment overrides the defaults")
    func environment() throws {
        let configuration = try RedisConfiguration.fromEnvironment([
            "GANTRY_REDIS_URL": "redis://10.0.0.5:6400/4",
            "GANTRY_REDIS_POOL_SIZE": "8",
            "GANTRY_REDIS_COMMAND_TIMEOUT_MS": "250",
        ])
        #expect(configuration.address == "10.0.0.5:6400")
        #expect(configuration.database == 4)
        #expect(configuration.poolSize == 8)
        #expect(configuration.commandTimeout == .milliseconds(250))
        #expect(try RedisConfiguration.fromEnvironment([:]) == RedisConfiguration())
        let error = #expect(throws: GantryError.self) {
            try RedisConfiguration.fromEnvironment(["GANTRY_REDIS_POOL_SIZE": "zero"])
        }
        #expect(error?.message.contains("GANTRY_REDIS_POOL_SIZE=zero") == true)
    }

    @Test("a client refuses a configuration that cannot work")
    func validation() throws {
        var configuration = RedisConfiguration()
        configuration.poolSize = 0
        let error = #expect(throws: GantryError.self) { try RedisClient(configuration: configuration) }
        #expect(error?.code == .configuration)
        #expect(error?.message.contains("poolSize 0") == true)
    }
}
