import GantryCore
import GantryRedis

/// A lease in Redis that at most one holder has at a time: the coordinators' leader election.
///
/// `SET key id NX PX ttl` takes it; a script extends it only while the value is still the
/// caller's id, so a holder that stalled past its lease cannot extend someone else's.
public struct LeaderLease: Sendable {
    private let client: RedisClient
    /// The Redis key of the lease.
    public let key: String
    /// This contender's identity.
    public let holder: String

    private static let extend = RedisScript(name: "leader_extend", source: """
        if redis.call('GET', KEYS[1]) == ARGV[1] then
          redis.call('PEXPIRE', KEYS[1], ARGV[2])
          return 1
        end
        return 0
        """)

    private static let resign = RedisScript(name: "leader_resign", source: """
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
        return 0
        """)

    /// A lease named `name` under the store's namespace.
    public init(store: RedisStateStore, name: String = "coordinator", holder: String) {
        self.client = store.client
        self.key = "\(store.configuration.namespace):leader:\(name)"
        self.holder = holder
    }

    /// Takes the lease if free, or extends it if already ours. Returns whether we hold it now.
    public func acquireOrExtend(ttl: Duration) async throws -> Bool {
        let extended = try await client.evalsha(Self.extend, keys: [.string(key)], args: [.string(holder), .integer(Int(ttl.milliseconds))])
        if extended.int == 1 { return true }
        let taken = try await client.send("SET", key, holder, "NX", "PX", Int(ttl.milliseconds))
        return !taken.isNull
    }

    /// Gives the lease up if we hold it, so a standby takes over at once.
    public func resign() async throws {
        _ = try await client.evalsha(Self.resign, keys: [.string(key)], args: [.string(holder)])
    }

    /// The current holder, if any.
    public func currentHolder() async throws -> String? {
        try await client.send("GET", key).string
    }
}
