import GantryCore

/// Where a Gantry process serves `/healthz`, `/readyz` and `/metrics` (and, for a coordinator,
/// the dashboard), from the `observability.*` settings.
///
/// Keys (defaults in brackets):
///
/// ```yaml
/// observability:
///   worker_listen: 127.0.0.1:0           # [127.0.0.1:0] gantry-worker; port 0 = any free port, "off" = no server
///   coordinator_listen: 127.0.0.1:9470   # [127.0.0.1:9470] gantry-coordinator, which also serves the dashboard
///   port_file: ""                        # [""] write the bound host:port to this file once listening
///   dashboard: true                      # [true] the coordinator serves the dashboard on its listen address
/// ```
///
/// Workers default to an ephemeral port because many run on one machine; each logs the address
/// it bound, writes it to `port_file` when set and reports it in its heartbeat (`gantry workers --json`, the dashboard).
/// A coordinator on the default address whose port is taken (a standby on the same machine)
/// listens on a free port instead and logs it; an address set explicitly must be free.
public struct ObservabilityConfiguration: Sendable, Hashable {
    /// The kinds of process, each with its own listen setting.
    public enum ProcessKind: String, Sendable, Hashable {
        case worker, coordinator

        /// The setting that holds this kind's listen address.
        public var listenSetting: String { "observability.\(rawValue)_listen" }
    }

    /// Where to listen; nil when the server is turned off.
    public var listen: ListenAddress?
    /// A file to write the bound `host:port` to, if any.
    public var portFile: String?
    /// Whether a coordinator serves the dashboard.
    public var dashboard: Bool
    /// The setting `listen` came from and its source, for error messages.
    public var origin: String
    /// When `listen`'s port is taken, listen on any free port instead of failing: true when the
    /// address is the built-in default (a second coordinator on one machine), false when someone
    /// chose it.
    public var fallbackToAnyPort: Bool

    /// A configuration listening on `listen`.
    public init(listen: ListenAddress?, portFile: String? = nil, dashboard: Bool = true, origin: String = "the caller", fallbackToAnyPort: Bool = false) {
        self.listen = listen
        self.portFile = portFile
        self.dashboard = dashboard
        self.origin = origin
        self.fallbackToAnyPort = fallbackToAnyPort
    }

    /// The settings of a process of `kind`.
    public init(settings: GantrySettings, process kind: ProcessKind) throws {
        let name = kind.listenSetting
        let origin = "setting '\(name)' (from \(settings.source(of: name)))"
        let text = try settings.string(name)
        let listen = try ListenAddress.parse(text, origin: origin)
        let file = try settings.string("observability.port_file")
        self.init(
            listen: listen, portFile: file.isEmpty ? nil : file, dashboard: try settings.bool("observability.dashboard"), origin: origin,
            fallbackToAnyPort: settings.source(of: name) == "the default"
        )
    }
}

/// A TCP listen address: a host (name, IPv4, or IPv6 in brackets) and a port, 0 for any free one.
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    /// The host to bind, without brackets.
    public var host: String
    /// The port; 0 lets the system choose.
    public var port: Int

    /// An address.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `host:port`, with IPv6 hosts in brackets.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Parses `host:port`, `[ipv6]:port` or `:port` (all interfaces); `off`, `none` or an empty
    /// text turn the server off (nil).
    ///
    /// - Throws: `.configuration` naming `origin` and the expected form.
    public static func parse(_ text: String, origin: String) throws -> ListenAddress? {
        let trimmed = text.trimmingSpaces
        if ["", "off", "none", "false"].contains(trimmed.lowercased()) { return nil }
        func invalid(_ why: String) -> GantryError {
            GantryError(.configuration, "\(origin) must be host:port like 127.0.0.1:9470 or 0.0.0.0:0 (port 0 = any free port), or off; got '\(text)': \(why)")
        }
        let host: Substring
        let portText: Substring
        if trimmed.hasPrefix("[") {
            guard let close = trimmed.firstIndex(of: "]") else { throw invalid("an IPv6 host needs a closing ']'") }
            host = trimmed[trimmed.index(after: trimmed.startIndex)..<close]
            let rest = trimmed[trimmed.index(after: close)...]
            guard rest.hasPrefix(":") else { throw invalid("the port is missing after ']'") }
            portText = rest.dropFirst()
        } else {
            guard let colon = trimmed.lastIndex(of: ":") else { throw invalid("the port is missing") }
            host = trimmed[..<colon]
            portText = trimmed[trimmed.index(after: colon)...]
            guard !host.contains(":") else { throw invalid("write an IPv6 host in brackets, like [::1]:9470") }
        }
        guard let port = Int(portText), (0...65_535).contains(port) else { throw invalid("'\(portText)' is not a port number from 0 to 65535") }
        return ListenAddress(host: host.isEmpty ? "0.0.0.0" : String(host), port: port)
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        var slice = Substring(self)
        while slice.first?.isWhitespace == true { slice.removeFirst() }
        while slice.last?.isWhitespace == true { slice.removeLast() }
        return String(slice)
    }
}
