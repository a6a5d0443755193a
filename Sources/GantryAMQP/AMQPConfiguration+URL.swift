import GantryCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads one variable of the process environment.
func processEnvironment(_ key: String) -> String? {
    guard let value = getenv(key) else { return nil }
    return String(cString: value)
}

/// The `amqp://` / `amqps://` grammar of ``AMQPConfiguration/init(url:)``.
enum AMQPURLParser {
    static let knownQueryKeys = [
        "heartbeat", "connection_timeout", "rpc_timeout", "frame_max", "channel_max",
        "connection_name", "prefetch", "cacertfile", "certfile", "keyfile", "verify", "verify_hostname",
    ]

    static func parse(_ url: String) throws(GantryError) -> AMQPConfiguration {
        let (schemePart, afterScheme) = split(url, at: "://")
        guard let rest = afterScheme else {
            throw invalid(url, "it has no scheme; write amqp://host or amqps://host")
        }
        let secure: Bool
        switch schemePart.lowercased() {
        case "amqp": secure = false
        case "amqps": secure = true
        default: throw invalid(url, "the scheme '\(schemePart)' is not amqp or amqps")
        }

        // authority [/path] [?query]; the fragment has no meaning here and is dropped.
        let withoutFragment = split(rest, at: "#").0
        let (beforeQuery, query) = split(withoutFragment, at: "?")
        let (authority, path) = split(beforeQuery, at: "/")

        var configuration = AMQPConfiguration(tls: secure ? AMQPTLSConfiguration() : nil)

        var hostPort = authority
        if let at = authority.lastIndex(of: "@") {
            let userInfo = String(authority[..<at])
            hostPort = String(authority[authority.index(after: at)...])
            let (user, password) = split(userInfo, at: ":")
            configuration.user = try percentDecoded(user, in: url, what: "user")
            if let password {
                configuration.password = try percentDecoded(password, in: url, what: "password")
            }
        }

        let (host, port) = try splitHostPort(hostPort, in: url)
        if !host.isEmpty { configuration.host = try percentDecoded(host, in: url, what: "host") }
        if let port { configuration.port = port }

        if let path, !path.isEmpty {
            // A raw slash in the path is ambiguous in the URI spec; '%2F' is not.
            guard !path.contains("/") else {
                throw invalid(url, "the vhost '\(path)' contains '/'; percent-encode it as %2F")
            }
            configuration.virtualHost = try percentDecoded(path, in: url, what: "vhost")
        }

        if let query, !query.isEmpty {
            try applyQuery(query, to: &configuration, url: url)
        }
        return configuration
    }

    private static func applyQuery(_ query: String, to configuration: inout AMQPConfiguration, url: String) throws(GantryError) {
        var tls = configuration.tls
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let (rawKey, rawValue) = split(String(pair), at: "=")
            let key = try percentDecoded(rawKey, in: url, what: "query key")
            let value = try percentDecoded(rawValue ?? "", in: url, what: "query value of '\(key)'")
            switch key {
            case "heartbeat":
                configuration.heartbeat = .seconds(try integer(value, key: key, url: url, range: 0...65_535))
            case "connection_timeout":
                configuration.connectTimeout = .milliseconds(try integer(value, key: key, url: url, range: 1...86_400_000))
            case "rpc_timeout":
                let milliseconds = try integer(value, key: key, url: url, range: 0...86_400_000)
                configuration.rpcTimeout = milliseconds == 0 ? nil : .milliseconds(milliseconds)
            case "frame_max":
                // 4096 is the AMQP 0-9-1 minimum frame size.
                configuration.frameMax = try integer(value, key: key, url: url, range: 4096...Int(Int32.max))
            case "channel_max":
                configuration.channelMax = try integer(value, key: key, url: url, range: 0...65_535)
            case "connection_name":
                configuration.connectionName = value
            case "prefetch":
                configuration.defaultPrefetchCount = UInt16(try integer(value, key: key, url: url, range: 1...65_535))
            case "cacertfile", "certfile", "keyfile", "verify", "verify_hostname":
                guard tls != nil else {
                    throw invalid(url, "'\(key)' is a TLS setting but the scheme is amqp://; use amqps://")
                }
                switch key {
                case "cacertfile": tls?.caCertificatePath = value
                case "certfile": tls?.clientCertificatePath = value
                case "keyfile": tls?.clientKeyPath = value
                case "verify":
                    switch value {
                    case "verify_peer": tls?.verifyPeer = true
                    case "verify_none": tls?.verifyPeer = false
                    default: throw invalid(url, "verify must be verify_peer or verify_none, not '\(value)'")
                    }
                default:
                    switch value.lowercased() {
                    case "true", "1", "yes": tls?.verifyHostname = true
                    case "false", "0", "no": tls?.verifyHostname = false
                    default: throw invalid(url, "verify_hostname must be true or false, not '\(value)'")
                    }
                }
            default:
                throw invalid(url, "unknown query key '\(key)'; known keys: \(knownQueryKeys.joined(separator: ", "))")
            }
        }
        if let tls, (tls.clientCertificatePath == nil) != (tls.clientKeyPath == nil) {
            throw invalid(url, "certfile and keyfile must be given together")
        }
        configuration.tls = tls
    }

    private static func splitHostPort(_ hostPort: String, in url: String) throws(GantryError) -> (String, Int?) {
        var host = hostPort
        var portText: String?
        if hostPort.hasPrefix("[") {
            // IPv6 literal: [::1]:5672
            guard let close = hostPort.firstIndex(of: "]") else {
                throw invalid(url, "the IPv6 address has no closing ']'")
            }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if after.hasPrefix(":") {
                portText = String(after.dropFirst())
            } else if !after.isEmpty {
                throw invalid(url, "unexpected '\(after)' after the IPv6 address")
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = String(hostPort[..<colon])
            portText = String(hostPort[hostPort.index(after: colon)...])
        }
        guard let portText else { return (host, nil) }
        if portText.isEmpty { return (host, nil) }
        guard let port = Int(portText), (1...65_535).contains(port) else {
            throw invalid(url, "the port '\(portText)' is not a number from 1 to 65535")
        }
        return (host, port)
    }

    private static func integer(_ text: String, key: String, url: String, range: ClosedRange<Int>) throws(GantryError) -> Int {
        guard let value = Int(text), range.contains(value) else {
            throw invalid(url, "\(key) must be a whole number from \(range.lowerBound) to \(range.upperBound), not '\(text)'")
        }
        return value
    }

    /// Splits at the first occurrence of `separator`; the second part is nil when absent.
    private static func split(_ text: String, at separator: String) -> (String, String?) {
        guard let range = text.range(of: separator) else { return (text, nil) }
        return (String(text[..<range.lowerBound]), String(text[range.upperBound...]))
    }

    private static func percentDecoded(_ text: String, in url: String, what: String) throws(GantryError) -> String {
        guard text.contains("%") else { return text }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                throw invalid(url, "the \(what) has a '%' not followed by two hex digits")
            }
            bytes.append(high << 4 | low)
        }
        guard let decoded = String(validating: bytes, as: UTF8.self) else {
            throw invalid(url, "the \(what) does not decode to UTF-8")
        }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    private static func invalid(_ url: String, _ problem: String) -> GantryError {
        GantryError(.configuration, "invalid AMQP URL '\(redacted(url))': \(problem)")
    }

    /// The URL with any password replaced, so errors never leak it into logs.
    static func redacted(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"),
              let at = url[schemeEnd.upperBound...].firstIndex(of: "@") else { return url }
        let userInfo = url[schemeEnd.upperBound..<at]
        guard let colon = userInfo.firstIndex(of: ":") else { return url }
        return String(url[..<colon]) + ":***" + String(url[at...])
    }
}
