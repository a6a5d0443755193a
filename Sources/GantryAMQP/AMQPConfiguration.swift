import GantryCore

/// How to reach and talk to one RabbitMQ broker over AMQP 0-9-1.
///
/// Build one from a URL (``init(url:)``), from the environment (``fromEnvironment(_:)``), or
/// field by field. The URL form follows the RabbitMQ URI specification:
///
/// ```
/// amqp[s]://[user[:password]@]host[:port][/vhost][?key=value&...]
/// ```
///
/// - `user`, `password`: default `guest` / `guest`; percent-encode reserved characters.
/// - `host`: a name, an IPv4 address, or an IPv6 address in brackets; default `localhost`.
/// - `port`: default 5672 for `amqp://`, 5671 for `amqps://`.
/// - `vhost`: percent-decoded path after the first `/`. An empty path (`amqp://host` or
///   `amqp://host/`) means the default vhost `/`; write `%2F` to spell `/` explicitly.
///
/// Query keys (all optional):
///
/// | key | meaning | default |
/// |---|---|---|
/// | `heartbeat` | heartbeat interval in seconds, `0` disables | 30 |
/// | `connection_timeout` | TCP connect + AMQP handshake deadline, milliseconds | 10000 |
/// | `rpc_timeout` | deadline for each synchronous AMQP method, milliseconds, `0` = none | 30000 |
/// | `frame_max` | largest frame we accept, bytes | 131072 |
/// | `channel_max` | most channels we ask for, `0` = the server's limit | 0 |
/// | `connection_name` | the name RabbitMQ's management UI shows | `gantry` |
/// | `prefetch` | prefetch count applied by `consume` when `qos` was never called | 64 |
/// | `cacertfile` | PEM file of CAs that sign the broker certificate (`amqps` only) | system default |
/// | `certfile`, `keyfile` | PEM client certificate and key, both or neither (`amqps` only) | none |
/// | `verify` | `verify_peer` or `verify_none` (`amqps` only) | `verify_peer` |
/// | `verify_hostname` | `true` or `false` (`amqps` only) | `true` |
public struct AMQPConfiguration: Sendable, Hashable, CustomStringConvertible {
    /// The environment variable ``fromEnvironment(_:)`` reads the URL from.
    public static let environmentKey = "GANTRY_AMQP_URL"
    /// The URL used when ``environmentKey`` is unset: the broker `ops/stack up rabbitmq` starts.
    public static let defaultURL = "amqp://guest:guest@127.0.0.1:5682/"

    /// The broker's host name or address.
    public var host: String
    /// The broker's TCP port.
    public var port: Int
    /// The user to log in as (SASL PLAIN).
    public var user: String
    /// The user's password. Never printed by ``description``.
    public var password: String
    /// The virtual host to open.
    public var virtualHost: String
    /// How often each side must show it is alive; `.zero` disables heartbeats.
    ///
    /// The broker may lower it. A peer silent for two intervals is treated as dead.
    public var heartbeat: Duration
    /// Deadline for the TCP connect and, separately, for the AMQP handshake.
    public var connectTimeout: Duration
    /// Deadline for each synchronous AMQP method (declare, bind, qos, ...); `nil` waits forever.
    ///
    /// When it expires librabbitmq drops the connection, which then fails as retriable.
    public var rpcTimeout: Duration?
    /// The largest frame we accept, in bytes; bodies larger than this are split.
    public var frameMax: Int
    /// The most channels we ask for; 0 takes the server's limit. Gantry uses two per connection.
    public var channelMax: Int
    /// The connection name shown by RabbitMQ (`rabbitmqctl list_connections name`).
    public var connectionName: String
    /// The prefetch `AMQPClient.consume` applies when `qos` was never called, so that the
    /// number of buffered deliveries is always bounded.
    public var defaultPrefetchCount: UInt16
    /// TLS settings; non-nil means `amqps`.
    public var tls: AMQPTLSConfiguration?

    /// Creates a configuration; every parameter has the default the URL form documents.
    public init(
        host: String = "localhost",
        port: Int? = nil,
        user: String = "guest",
        password: String = "guest",
        virtualHost: String = "/",
        heartbeat: Duration = .seconds(30),
        connectTimeout: Duration = .seconds(10),
        rpcTimeout: Duration? = .seconds(30),
        frameMax: Int = 131_072,
        channelMax: Int = 0,
        connectionName: String = "gantry",
        defaultPrefetchCount: UInt16 = 64,
        tls: AMQPTLSConfiguration? = nil
    ) {
        self.host = host
        self.port = port ?? (tls == nil ? 5672 : 5671)
        self.user = user
        self.password = password
        self.virtualHost = virtualHost
        self.heartbeat = heartbeat
        self.connectTimeout = connectTimeout
        self.rpcTimeout = rpcTimeout
        self.frameMax = frameMax
        self.channelMax = channelMax
        self.connectionName = connectionName
        self.defaultPrefetchCount = defaultPrefetchCount
        self.tls = tls
    }

    /// Parses an `amqp://` or `amqps://` URL (see the type's documentation for the grammar).
    ///
    /// - Throws: `GantryError` with code `.configuration` naming the part that is wrong.
    public init(url: String) throws(GantryError) {
        self = try AMQPURLParser.parse(url)
    }

    /// Reads the URL from ``environmentKey`` (`GANTRY_AMQP_URL`), or uses ``defaultURL``.
    ///
    /// - Parameter environment: the variables to read; `nil` reads the process environment.
    public static func fromEnvironment(_ environment: [String: String]? = nil) throws(GantryError) -> AMQPConfiguration {
        let value = environment.map { $0[environmentKey] } ?? processEnvironment(environmentKey)
        guard let url = value, !url.isEmpty else { return try AMQPConfiguration(url: defaultURL) }
        do {
            return try AMQPConfiguration(url: url)
        } catch {
            throw GantryError(.configuration, "\(environmentKey): \(error.message)", underlying: error)
        }
    }

    /// `host:port`, for messages.
    public var endpoint: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The URL without the password, safe to log.
    public var description: String {
        let scheme = tls == nil ? "amqp" : "amqps"
        return "\(scheme)://\(user)@\(endpoint)/\(virtualHost == "/" ? "" : virtualHost)"
    }
}

/// TLS settings for an `amqps` connection.
public struct AMQPTLSConfiguration: Sendable, Hashable {
    /// PEM file with the CAs that sign the broker's certificate; `nil` uses the system store.
    public var caCertificatePath: String?
    /// PEM client certificate, for brokers that require mutual TLS. Set with ``clientKeyPath``.
    public var clientCertificatePath: String?
    /// PEM private key of ``clientCertificatePath``.
    public var clientKeyPath: String?
    /// Whether the broker's certificate chain must verify. Turn off only for local testing.
    public var verifyPeer: Bool
    /// Whether the broker's certificate must name the host we connected to.
    public var verifyHostname: Bool

    /// Creates TLS settings; by default the peer and its host name are verified.
    public init(
        caCertificatePath: String? = nil,
        clientCertificatePath: String? = nil,
        clientKeyPath: String? = nil,
        verifyPeer: Bool = true,
        verifyHostname: Bool = true
    ) {
        self.caCertificatePath = caCertificatePath
        self.clientCertificatePath = clientCertificatePath
        self.clientKeyPath = clientKeyPath
        self.verifyPeer = verifyPeer
        self.verifyHostname = verifyHostname
    }
}
