import GantryCore
import GantryRedis

extension StoreConfiguration {
    /// The `store.*` settings.
    public init(settings: GantrySettings) throws {
        self.init(
            namespace: try settings.string("store.namespace"),
            resultTTL: try settings.duration("store.result_ttl"),
            retention: try settings.duration("store.retention"),
            queueVisibility: try settings.duration("store.queue_visibility"),
            maxResultBytes: try settings.int("store.max_result_bytes"),
            maxInputBytes: try settings.int("store.max_input_bytes"),
            maxLostLeases: try settings.int("store.max_lost_leases"),
            batchesInFlight: try settings.int("store.batches_in_flight")
        )
        guard batchesInFlight >= 1 else {
            throw GantryError(.configuration, "setting 'store.batches_in_flight' (from \(settings.source(of: "store.batches_in_flight"))) must be at least 1, got \(batchesInFlight)")
        }
    }
}

extension RedisConfiguration {
    /// The `redis.*` settings.
    public init(settings: GantrySettings) throws {
        do {
            self = try RedisConfiguration(url: try settings.string("redis.url"))
        } catch let error as GantryError {
            throw GantryError(.configuration, "setting 'redis.url' (from \(settings.source(of: "redis.url"))): \(error.message)")
        }
        poolSize = try settings.int("redis.pool_size")
    }
}

extension RedisStateStore {
    /// A store for the `redis.*` and `store.*` settings. Does not connect until first used.
    public convenience init(settings: GantrySettings) throws {
        self.init(client: try RedisClient(configuration: RedisConfiguration(settings: settings)), configuration: try StoreConfiguration(settings: settings))
    }

    /// Checks that Redis answers, with an error that names the address and the setting to change.
    public func checkReachable(settings: GantrySettings) async throws {
        do {
            _ = try await client.send("PING")
        } catch let error as GantryError where error.code == .connectionFailed || error.code == .timeout {
            throw GantryError(.connectionFailed, "\(error.message) (the address comes from setting 'redis.url', set by \(settings.source(of: "redis.url")))")
        }
    }
}
