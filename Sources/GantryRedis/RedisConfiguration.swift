import GantryCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How a ``RedisClient`` reaches Redis and how it behaves when Redis is slow or gone.
///
/// Every setting has a default, so `RedisConfiguration()` talks to the local stack started
/// by `ops/stack up redis`. ``fromEnvironment(_:)`` reads these environment variables, each
/// optional:
///
/// | key | meaning | default |
/// |---|---|---|
/// | `GANTRY_REDIS_URL` | `redis://[user:password@]host[:port][/db]` | `redis://127.0.0.1:6390` |
/// | `GANTRY_REDIS_POOL_SIZE` | connections, each on its own thread | `4` |
/// | `GANTRY_REDIS_CONNECT_TIMEOUT_MS` | ``connectTimeout`` | `2000` |
/// | `GANTRY_REDIS_COMMAND_TIMEOUT_MS` | ``commandTimeout`` | `5000` |
/// | `GANTRY_REDIS_RECONNECT_BACKOFF_MS` | ``reconnectBackoffInitial`` | `50` |
/// | `GANTRY_REDIS_RECONNECT_BACKOFF_MAX_MS` | ``reconnectBackoffMax`` | `2000` |
public struct RedisConfiguration: Sendable, Hashable {
    /// The URL used when none is given: the Redis of the local stack (`ops/stack up redis`).
    public static let defaultURL = "redis://127.0.0.1:6390"

    /// Host name or IP address of the server. Default `127.0.0.1`.
    public var host: String
    /// TCP port of the server. Default `6390` (the local stack); a URL without a port means `6379`.
    public var port: Int
    /// ACL user name. When set, connecting sends `AUTH username password`. Default `nil`.
    public var username: String?
    /// Password. When set without ``username``, connecting sends `AUTH password`. Default `nil`.
    public var password: String?
    /// Logical database selected on every (re)connect with `SELECT`. Default `0`.
    public var database: Int
    /// Number of connections, each owned by its own thread. Default `4`.
    public var poolSize: Int
    /// Longest wait for a TCP connection to be established. Default 2 s.
    public var connectTimeout: Duration
    /// Longest wait for any single socket read or write of a command; past it the command
    /// fails with ``GantryError/Code/timeout`` and the connection is re-established. Blocking
    /// commands (`BLPOP`, `WAIT`) need a timeout above their own. Default 5 s.
    public var commandTimeout: Duration
    /// Delay before the second attempt to reconnect a broken connection (the first is
    /// immediate); it doubles per failed attempt up to ``reconnectBackoffMax``. Default 50 ms.
    public var reconnectBackoffInitial: Duration
    /// Upper bound of the reconnect delay. Default 2 s.
    public var reconnectBackoffMax: Duration

    /// Creates a configuration; every parameter has the documented default.
    public init(
        host: String = "127.0.0.1",
        port: Int = 6390,
        username: String? = nil,
        password: String? = nil,
        database: Int = 0,
        poolSize: Int = 4,
        connectTimeout: Duration = .seconds(2),
        commandTimeout: Duration = .seconds(5),
        reconnectBackoffInitial: Duration = .milliseconds(50),
        reconnectBackoffMax: Duration = .seconds(2)
    ) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.poolSize = poolSize
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.reconnectBackoffInitial = reconnectBackoffInitial
        self.reconnectBackoffMax = reconnectBackoffMax
    }

    /// Creates a configuration from a `redis://[user:password@]host[:port][/db]` URL; the
    /// other settings keep their defaults.
    ///
    /// `redis://:secret@host` (empty user) authenticates with `AUTH secret`; user and password
    /// may be percent-encoded. An IPv6 host goes in brackets: `redis://[::1]:6390`.
    /// - Throws: ``GantryError`` with code `.configuration` naming what is wrong in the URL.
    public init(url: String) throws {
        self.init()
        try apply(url: url)
    }

    /// Creates a configuration from the `GANTRY_REDIS_*` environment variables listed on the
    /// type, falling back to the defaults for the ones that are unset.
    /// - Parameter environment: the variables to read; `nil` reads the process environment.
    /// - Throws: ``GantryError`` with code `.configuration` naming the bad variable.
    public static func fromEnvironment(_ environment: [String: String]? = nil) throws -> RedisConfiguration {
        var configuration = RedisConfiguration()
        try configuration.apply(environment: environment)
        return configuration
    }

    private mutating func apply(environment: [String: String]?) throws {
        func value(_ key: String) -> String? {
            if let environment { return environment[key] }
            return getenv(key).map { String(cString: $0) }
        }
        try apply(url: value("GANTRY_REDIS_URL") ?? Self.defaultURL)
        func milliseconds(_ key: String) throws -> Duration? {
            guard let text = value(key) else { return nil }
            guard let ms = Int(text), ms > 0 else {
                throw GantryError(.configuration, "\(key)=\(text) is not a positive number of milliseconds")
            }
            return .milliseconds(ms)
        }
        if let text = value("GANTRY_REDIS_POOL_SIZE") {
            guard let size = Int(text), size > 0 else {
                throw GantryError(.configuration, "GANTRY_REDIS_POOL_SIZE=\(text) is not a positive number of connections")
            }
            poolSize = size
        }
        connectTimeout = try milliseconds("GANTRY_REDIS_CONNECT_TIMEOUT_MS") ?? connectTimeout
        commandTimeout = try milliseconds("GANTRY_REDIS_COMMAND_TIMEOUT_MS") ?? commandTimeout
        reconnectBackoffInitial = try milliseconds("GANTRY_REDIS_RECONNECT_BACKOFF_MS") ?? reconnectBackoffInitial
        reconnectBackoffMax = try milliseconds("GANTRY_REDIS_RECONNECT_BACKOFF_MAX_MS") ?? reconnectBackoffMax
    }

    /// `host:port`, as used in error messages (IPv6 hosts in brackets).
    public var address: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The configuration as a URL with the password replaced by `***`, safe to log.
    public var redactedURL: String {
        var userInfo = ""
        if username != nil || password != nil {
            userInfo = (username ?? "") + (password != nil ? ":***" : "") + "@"
        }
        return "redis://\(userInfo)\(address)" + (database != 0 ? "/\(database)" : "")
    }

    /// Checks that the values can work together, so a mistake is reported when the client
    /// is made rather than on the first command.
    func validate() throws {
        func fail(_ what: String) -> GantryError {
            GantryError(.configuration, "Redis configuration for \(redactedURL): \(what)")
        }
        guard !host.isEmpty else { throw fail("the host is empty") }
        guard (1...65535).contains(port) else { throw fail("port \(port) is not in 1...65535") }
        guard database >= 0 else { throw fail("database \(database) is negative") }
        guard poolSize > 0 else { throw fail("poolSize \(poolSize) must be at least 1") }
        for (name, value) in [
            ("connectTimeout", connectTimeout), ("commandTimeout", commandTimeout),
            ("reconnectBackoffInitial", reconnectBackoffInitial), ("reconnectBackoffMax", reconnectBackoffMax),
        ] where value <= .zero {
            throw fail("\(name) must be positive, not \(value)")
        }
        guard reconnectBackoffMax >= reconnectBackoffInitial else {
            throw fail("reconnectBackoffMax \(reconnectBackoffMax) is below reconnectBackoffInitial \(reconnectBackoffInitial)")
        }
    }

    private mutating func apply(url: String) throws {
        func fail(_ what: String) -> GantryError {
            // The URL may hold a password: name the problem, not the whole URL.
            GantryError(
                .configuration,
                "invalid Redis URL: \(what); expected redis://[user:password@]host[:port][/db], e.g. \(Self.defaultURL)"
            )
        }
        let scheme = "redis://"
        guard url.hasPrefix(scheme) else {
            if url.hasPrefix("rediss://") { throw fail("TLS (rediss://) is not supported") }
            throw fail("it does not start with \(scheme)")
        }
        var rest = Substring(url.dropFirst(scheme.count))
        if rest.contains("?") || rest.contains("#") { throw fail("query parameters and fragments are not supported") }

        // The path (database) is after the first "/" that follows the authority.
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        // User info ends at the last "@": a password may itself contain an unencoded "@".
        var hostPort = rest
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            hostPort = rest[rest.index(after: at)...]
            let userPart = userInfo.firstIndex(of: ":").map { userInfo[..<$0] } ?? userInfo
            let passwordPart = userInfo.firstIndex(of: ":").map { userInfo[userInfo.index(after: $0)...] }
            guard let user = Self.percentDecoded(userPart), let pass = passwordPart.map(Self.percentDecoded) ?? "" else {
                throw fail("the user or password has a bad %-escape")
            }
            username = user.isEmpty ? nil : user
            if passwordPart != nil {
                password = pass
            } else {
                // A lone user name (redis://alice@host): ACL users with `nopass` accept any
                // password, so connecting sends an empty one.
                password = user.isEmpty ? nil : ""
            }
        }

        var portText: Substring?
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { throw fail("the IPv6 host has no closing ]") }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("unexpected text after the IPv6 host") }
                portText = after.dropFirst()
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = String(hostPort[..<colon])
            portText = hostPort[hostPort.index(after: colon)...]
        } else {
            host = String(hostPort)
        }
        guard !host.isEmpty else { throw fail("the host is missing") }
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value) else {
                throw fail("port '\(portText)' is not a number in 1...65535")
            }
            port = value
        } else {
            port = 6379
        }
        if !path.isEmpty {
            guard let db = Int(path), db >= 0 else { throw fail("database '\(path)' is not a non-negative number") }
            database = db
        } else {
            database = 0
        }
    }

    private static func percentDecoded(_ text: Substring) -> String? {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                return nil
            }
            bytes.append(high << 4 | low)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
