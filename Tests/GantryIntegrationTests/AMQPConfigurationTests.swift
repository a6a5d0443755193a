import GantryAMQP
import GantryCore
import Testing

/// URL parsing needs no broker; it lives here because this target is the one that links GantryAMQP.
@Suite("AMQP configuration")
struct AMQPConfigurationTests {
    @Test("the ops/stack URL: guest on the default vhost")
    func stackURL() throws {
        let configuration = try AMQPConfiguration(url: "amqp://guest:guest@127.0.0.1:5682/")
        #expect(configuration.host == "127.0.0.1")
        #expect(configuration.port == 5682)
        #expect(configuration.user == "guest")
        #expect(configuration.password == "guest")
        #expect(configuration.virtualHost == "/")
        #expect(configuration.tls == nil)
        #expect(configuration.heartbeat == .seconds(30))
    }

    @Test("defaults, percent-encoding, vhost and query keys")
    func fullURL() throws {
        let bare = try AMQPConfiguration(url: "amqp://rabbit.internal")
        #expect(bare.port == 5672)
        #expect(bare.user == "guest")
        #expect(bare.virtualHost == "/")

        let configuration = try AMQPConfiguration(
            url: "amqp://gantry%40ops:p%3Ass%2Fw@[::1]:5700/prod%2Fa?heartbeat=10&connection_timeout=2500&rpc_timeout=0&frame_max=65536&channel_max=16&connection_name=worker-1&prefetch=8"
        )
        #expect(configuration.user == "gantry@ops")
        #expect(configuration.password == "p:ss/w")
        #expect(configuration.host == "::1")
        #expect(configuration.port == 5700)
        #expect(configuration.endpoint == "[::1]:5700")
        #expect(configuration.virtualHost == "prod/a")
        #expect(configuration.heartbeat == .seconds(10))
        #expect(configuration.connectTimeout == .milliseconds(2500))
        #expect(configuration.rpcTimeout == nil)
        #expect(configuration.frameMax == 65536)
        #expect(configuration.channelMax == 16)
        #expect(configuration.connectionName == "worker-1")
        #expect(configuration.defaultPrefetchCount == 8)
        #expect(try AMQPConfiguration(url: "amqp://h/%2F").virtualHost == "/")
        #expect(try AMQPConfiguration(url: "amqp://h/jobs").virtualHost == "jobs")
    }

    @Test("amqps with TLS settings")
    func tlsURL() throws {
        let defaults = try AMQPConfiguration(url: "amqps://broker.example.com")
        #expect(defaults.port == 5671)
        #expect(defaults.tls == AMQPTLSConfiguration())
        #expect(defaults.tls?.verifyPeer == true)
        #expect(defaults.tls?.verifyHostname == true)

        let configuration = try AMQPConfiguration(
            url: "amqps://u:p@broker:5671/?cacertfile=/etc/gantry/ca.pem&certfile=/etc/gantry/client.pem&keyfile=/etc/gantry/client.key&verify=verify_none&verify_hostname=false"
        )
        #expect(configuration.tls == AMQPTLSConfiguration(
            caCertificatePath: "/etc/gantry/ca.pem",
            clientCertificatePath: "/etc/gantry/client.pem",
            clientKeyPath: "/etc/gantry/client.key",
            verifyPeer: false,
            verifyHostname: false
        ))
    }

    @Test("bad URLs are refused with the reason, never echoing the password")
    func invalidURLs() {
        let cases: [(String, String)] = [
            ("rabbit:5672", "no scheme"),
            ("http://h", "not amqp or amqps"),
            ("amqp://h:99999", "port"),
            ("amqp://h?heartbeat=soon", "heartbeat"),
            ("amqp://h?cacertfile=/ca.pem", "use amqps://"),
            ("amqps://h?certfile=/c.pem", "certfile and keyfile"),
            ("amqp://h?color=blue", "unknown query key 'color'"),
            ("amqp://u:secret@h/a/b", "%2F"),
            ("amqp://u:secret@h?prefetch=0", "prefetch"),
        ]
        for (url, problem) in cases {
            let error = #expect(throws: GantryError.self, "\(url)") { try AMQPConfiguration(url: url) }
            #expect(error?.code == .configuration)
            #expect(error?.message.contains(problem) == true, "\(url): \(error?.message ?? "")")
            #expect(error?.message.contains("secret") == false)
        }
    }

    @Test("the environment variable wins over the default, and its errors name it")
    func environment() throws {
        #expect(try AMQPConfiguration.fromEnvironment([:]).port == 5682)
        #expect(try AMQPConfiguration.fromEnvironment(["GANTRY_AMQP_URL": "amqp://other:5999/"]).port == 5999)
        let error = #expect(throws: GantryError.self) {
            try AMQPConfiguration.fromEnvironment(["GANTRY_AMQP_URL": "amqp://h:0"])
        }
        #expect(error?.message.hasPrefix("GANTRY_AMQP_URL: ") == true)
    }

    @Test("the description hides the password")
    func description() throws {
        let configuration = try AMQPConfiguration(url: "amqp://alice:hunter2@h:5672/jobs")
        #expect(configuration.description == "amqp://alice@h:5672/jobs")
    }
}
