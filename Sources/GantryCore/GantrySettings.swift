import Foundation
import Yams

/// Every setting of a Gantry process, from `config/gantry.yaml`, then `GANTRY_*` environment
/// variables, then command-line flags (applied by the executables).
///
/// Keys (defaults in brackets):
///
/// ```yaml
/// redis:
///   url: redis://127.0.0.1:6390          # [redis://127.0.0.1:6390] redis://[user:password@]host:port[/db]
///   pool_size: 8                         # [8] connections per process
/// broker:
///   kind: rabbitmq                       # [rabbitmq] rabbitmq | kafka | memory (one process only)
///   rabbitmq_url: amqp://guest:guest@127.0.0.1:5682/   # amqp:// or amqps:// (TLS options in the query)
///   kafka_brokers: 127.0.0.1:9092        # comma-separated bootstrap servers
///   kafka_group: gantry-workers          # consumer group of the workers
///   kafka_properties: {}                 # librdkafka properties passed through (TLS, SASL)
///   queue_prefix: gantry.                # queue / topic name prefix
/// store:
///   namespace: gantry                    # prefix of every Redis key
///   result_ttl: 7d                       # how long a run's results are kept after its last commit
///   retention: 7d                        # how long finished runs are kept
///   queue_visibility: 2m                 # a queued task unclaimed this long is published again
///   max_result_bytes: 1048576            # larger results are refused
///   max_input_bytes: 1048576             # larger run inputs are refused
///   max_lost_leases: 3                   # a task whose worker dies this often is poison
///   batches_in_flight: 2                 # claim / commit batches in flight to Redis at once
/// worker:
///   queues: [default]                    # queues to consume
///   concurrency: 64                      # tasks in flight (and broker credit)
///   lease: 30s                           # lease length; renewed every renew_interval
///   renew_interval: 10s
///   drain_timeout: 20s                   # on SIGTERM, how long in-flight tasks may finish
///   max_payload_bytes: 16777216          # larger messages are dead-lettered
///   task_limits: {}                      # per task type in-flight limits, e.g. {http: 16}; env "http=16,exec=2"
///   local_continuation: true             # run stages its own commits made ready at once, while it has free slots
/// tasks:                                 # the built-in http and exec tasks
///   exec_allow: []                       # commands exec may run (names on PATH or absolute paths); [] = exec off
///   exec_max_output_bytes: 1048576       # larger stdout fails the task
///   http_timeout: 30s                    # per request when args.timeout is not given
///   http_max_response_bytes: 1048576     # larger response bodies fail the task
/// coordinator:
///   leader_lease: 5s                     # a standby takes over within this
///   sweep_interval: 100ms                # how often due timers are handled
/// pool:                                  # child processes that run `kind: cpu` stages
///   size: 0                              # children; 0 = one per core
///   executable: ""                       # "" = the worker's own binary (/proc/self/exe)
///   max_tasks_per_child: 1000            # a child is replaced after this many tasks
///   rss_limit_bytes: 1073741824          # ... or when its resident memory exceeds this (0 = no limit)
///   respawn_backoff: 100ms               # first wait before replacing a crashed child
///   max_respawn_backoff: 5s
///   termination_grace: 2s                # SIGTERM → SIGKILL after this on timeout or shutdown
///   startup_timeout: 10s
///   acquire_timeout: 5m                  # longest wait for a free child
///   max_frame_bytes: 268435456           # largest task input or result crossing to a child
/// signing:
///   key_id: ""                           # sign published envelopes with this key ("" = unsigned)
///   keys: {}                             # key id → secret; verification keys for workers
///   required: false                      # workers dead-letter unsigned or tampered messages
/// log:
///   level: info                          # trace | debug | info | notice | warning | error | critical
/// observability:                         # /healthz, /readyz, /metrics (and the coordinator's dashboard)
///   worker_listen: 127.0.0.1:0           # gantry-worker's address; port 0 = any free port; off = none
///   coordinator_listen: 127.0.0.1:9470   # gantry-coordinator's address, dashboard included
///   port_file: ""                        # write the bound host:port here once listening ("" = no file)
///   dashboard: true                      # the coordinator serves the dashboard
/// ```
///
/// Environment: `GANTRY_<SECTION>_<KEY>` in upper case overrides any scalar key, e.g.
/// `GANTRY_WORKER_CONCURRENCY=16`, `GANTRY_BROKER_KIND=kafka`; lists are comma-separated.
/// Shorter aliases: `GANTRY_REDIS_URL`, `GANTRY_AMQP_URL` (broker.rabbitmq_url),
/// `GANTRY_KAFKA_BROKERS` (broker.kafka_brokers), `GANTRY_BROKER` (broker.kind),
/// `GANTRY_LOG_LEVEL`.
public struct GantrySettings: Sendable {
    /// Raw values by `section.key`, after file and environment.
    public private(set) var values: [String: JSONValue]
    /// Where each value came from, for error messages.
    private var sources: [String: String]

    /// The keys that exist, with their defaults.
    public static let defaults: [String: JSONValue] = [
        "redis.url": "redis://127.0.0.1:6390", "redis.pool_size": 8,
        "broker.kind": "rabbitmq", "broker.rabbitmq_url": "amqp://guest:guest@127.0.0.1:5682/",
        "broker.kafka_brokers": "127.0.0.1:9092", "broker.kafka_group": "gantry-workers",
        "broker.kafka_properties": .object([:]), "broker.queue_prefix": "gantry.",
        "store.namespace": "gantry", "store.result_ttl": "7d", "store.retention": "7d", "store.queue_visibility": "2m",
        "store.max_result_bytes": 1_048_576, "store.max_input_bytes": 1_048_576, "store.max_lost_leases": 3,
        "store.batches_in_flight": 2,
        "worker.queues": .array(["default"]), "worker.concurrency": 64, "worker.lease": "30s", "worker.renew_interval": "10s",
        "worker.drain_timeout": "20s", "worker.max_payload_bytes": 16_777_216, "worker.task_limits": .object([:]),
        "worker.local_continuation": true,
        "tasks.exec_allow": .array([]), "tasks.exec_max_output_bytes": 1_048_576, "tasks.http_timeout": "30s",
        "tasks.http_max_response_bytes": 1_048_576,
        "coordinator.leader_lease": "5s", "coordinator.sweep_interval": "100ms",
        "pool.size": 0, "pool.executable": "", "pool.max_tasks_per_child": 1000, "pool.rss_limit_bytes": 1_073_741_824,
        "pool.respawn_backoff": "100ms", "pool.max_respawn_backoff": "5s", "pool.termination_grace": "2s",
        "pool.startup_timeout": "10s", "pool.acquire_timeout": "5m", "pool.max_frame_bytes": 268_435_456,
        "signing.key_id": "", "signing.keys": .object([:]), "signing.required": false,
        "log.level": "info",
        "observability.worker_listen": "127.0.0.1:0", "observability.coordinator_listen": "127.0.0.1:9470",
        "observability.port_file": "", "observability.dashboard": true,
    ]

    private static let aliases: [String: String] = [
        "GANTRY_REDIS_URL": "redis.url", "GANTRY_AMQP_URL": "broker.rabbitmq_url", "GANTRY_KAFKA_BROKERS": "broker.kafka_brokers",
        "GANTRY_BROKER": "broker.kind", "GANTRY_LOG_LEVEL": "log.level",
    ]

    /// The defaults only.
    public init() {
        values = Self.defaults
        sources = [:]
    }

    /// Loads `file` (when it exists; a missing default file is fine, a missing named file is an
    /// error), then applies `environment`.
    public static func load(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment, fileMustExist: Bool = false) throws -> GantrySettings {
        var settings = GantrySettings()
        if let file {
            if let data = FileManager.default.contents(atPath: file) {
                try settings.apply(yaml: String(decoding: data, as: UTF8.self), file: file)
            } else if fileMustExist {
                throw GantryError(.configuration, "cannot read configuration file '\(file)'; pass an existing file with --config or unset GANTRY_CONFIG")
            }
        }
        try settings.apply(environment: environment)
        return settings
    }

    /// The settings of a Gantry process: the file named by `--config` (`explicitFile`), else by
    /// `GANTRY_CONFIG` (both must exist), else `config/gantry.yaml` when present; then the
    /// environment.
    public static func forProcess(explicitFile: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> GantrySettings {
        let named = explicitFile ?? environment["GANTRY_CONFIG"]
        return try load(file: named ?? "config/gantry.yaml", environment: environment, fileMustExist: named != nil)
    }

    /// Applies a YAML document of sections.
    public mutating func apply(yaml: String, file: String) throws {
        let parsed: Any?
        do {
            parsed = try Yams.load(yaml: yaml)
        } catch {
            throw GantryError(.configuration, "\(file): not valid YAML: \(error)")
        }
        guard let parsed else { return }
        guard let sections = parsed as? [String: Any] else {
            throw GantryError(.configuration, "\(file): configuration must be a mapping of sections (redis, broker, store, worker, tasks, coordinator, pool, signing, log, observability)")
        }
        for (section, body) in sections {
            guard let body = body as? [String: Any] else {
                throw GantryError(.configuration, "\(file): section '\(section)' must be a mapping")
            }
            for (key, value) in body {
                let name = "\(section).\(key)"
                guard Self.defaults[name] != nil else {
                    throw GantryError(.configuration, "\(file): unknown setting '\(name)'\(suggestion(name, among: Array(Self.defaults.keys))); see config/gantry.yaml for every key")
                }
                values[name] = Self.json(value)
                sources[name] = file
            }
        }
    }

    /// Applies `GANTRY_*` variables.
    public mutating func apply(environment: [String: String]) throws {
        for (variable, text) in environment where variable.hasPrefix("GANTRY_") {
            let name: String
            if let alias = Self.aliases[variable] {
                name = alias
            } else {
                let rest = variable.dropFirst("GANTRY_".count).lowercased()
                guard let dot = rest.firstIndex(of: "_") else { continue }
                let candidate = String(rest[..<dot]) + "." + String(rest[rest.index(after: dot)...])
                guard Self.defaults[candidate] != nil else { continue }
                name = candidate
            }
            switch Self.defaults[name] {
            case .array: values[name] = .array(text.split(separator: ",").map { .string(String($0).trimmingSpaces) })
            case .int: values[name] = Int64(text).map(JSONValue.int) ?? .string(text)
            case .bool: values[name] = .bool(["1", "true", "yes", "on"].contains(text.lowercased()))
            default: values[name] = .string(text)
            }
            sources[name] = "environment variable \(variable)"
        }
    }

    /// Sets a value from a command-line flag.
    public mutating func set(_ name: String, _ value: JSONValue, source: String) {
        values[name] = value
        sources[name] = source
    }

    // MARK: Typed access

    /// The value of `name` as text.
    public func string(_ name: String) throws -> String {
        switch values[name] {
        case .string(let text): return text
        case .int(let number): return String(number)
        case .double(let number): return String(number)
        case .bool(let flag): return String(flag)
        default: throw invalid(name, "text")
        }
    }

    /// The value of `name` as a whole number.
    public func int(_ name: String) throws -> Int {
        if let number = values[name]?.intValue { return Int(number) }
        if let text = values[name]?.stringValue, let number = Int(text) { return number }
        throw invalid(name, "a whole number")
    }

    /// The value of `name` as a duration (`250ms`, `30s`, `5m`, `7d`, or seconds).
    public func duration(_ name: String) throws -> Duration {
        if let seconds = values[name]?.doubleValue { return .nanoseconds(Int64(seconds * 1e9)) }
        if let text = values[name]?.stringValue, let duration = Duration(parsing: text) { return duration }
        throw invalid(name, "a duration like 500ms, 30s or 5m")
    }

    /// The value of `name` as a list of strings.
    public func strings(_ name: String) throws -> [String] {
        switch values[name] {
        case .array(let items): return try items.map { guard let text = $0.stringValue else { throw invalid(name, "a list of names") }; return text }
        case .string(let text): return text.split(separator: ",").map { String($0).trimmingSpaces }
        default: throw invalid(name, "a list of names")
        }
    }

    /// The value of `name` as a string-to-string mapping.
    public func dictionary(_ name: String) throws -> [String: String] {
        guard let object = values[name]?.objectValue else { throw invalid(name, "a mapping") }
        return try object.mapValues { value in
            switch value {
            case .string(let text): return text
            case .int(let number): return String(number)
            case .bool(let flag): return String(flag)
            default: throw invalid(name, "a mapping of names to text")
            }
        }
    }

    /// The value of `name` as a flag.
    public func bool(_ name: String) throws -> Bool {
        if case .bool(let flag) = values[name] { return flag }
        throw invalid(name, "true or false")
    }

    /// Where `name`'s value came from: a file, an environment variable, a flag, or the default.
    public func source(of name: String) -> String {
        sources[name] ?? "the default"
    }

    private func invalid(_ name: String, _ expected: String) -> GantryError {
        GantryError(.configuration, "setting '\(name)' (from \(source(of: name))) must be \(expected), got \(values[name].map { "\($0)" } ?? "nothing")")
    }

    private static func json(_ value: Any) -> JSONValue {
        switch value {
        case let flag as Bool: return .bool(flag)
        case let number as Int: return .int(Int64(number))
        case let number as Double: return .double(number)
        case let text as String: return .string(text)
        case let list as [Any]: return .array(list.map(json))
        case let map as [String: Any]: return .object(map.mapValues(json))
        default: return .null
        }
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}
