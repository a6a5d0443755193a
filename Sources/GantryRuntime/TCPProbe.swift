import Foundation
import GantryCore

#if canImport(Glibc)
import Glibc
private let systemConnect = Glibc.connect
#elseif canImport(Darwin)
import Darwin
private let systemConnect = Darwin.connect
#endif

/// Plain TCP checks: whether something accepts connections at an address, and a free
/// loopback port to start a server on.
public enum TCPProbe {
    /// Tries to open a TCP connection to `host:port` within `timeout`; nil when it was
    /// accepted, else the reason it was not (`connection refused`, `timed out after 2s`, …).
    ///
    /// The blocking resolve and connect run on a thread of their own, never on the cooperative pool.
    public static func connect(host: String, port: Int, timeout: Duration) async -> String? {
        await withCheckedContinuation { (continuation: CheckedContinuation<String?, Never>) in
            let thread = Thread {
                continuation.resume(returning: connectBlocking(host: host, port: port, timeout: timeout))
            }
            thread.name = "gantry-tcp-probe"
            thread.start()
        }
    }

    /// Splits `host:port` (or `[v6]:port`), using `defaultPort` when the port is missing.
    public static func split(_ address: String, defaultPort: Int) -> (host: String, port: Int) {
        var text = Substring(address)
        if text.hasPrefix("[") , let close = text.firstIndex(of: "]") {
            let host = String(text[text.index(after: text.startIndex)..<close])
            text = text[text.index(after: close)...]
            return (host, text.hasPrefix(":") ? Int(text.dropFirst()) ?? defaultPort : defaultPort)
        }
        if let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) {
            return (String(text[..<colon]), port)
        }
        return (String(text), defaultPort)
    }

    /// A loopback port nothing listens on right now (the kernel's pick for port 0). Another
    /// process may take it before the caller binds it; callers that start a server on it
    /// check that the server came up.
    public static func freeLoopbackPort() throws -> Int {
        try freeLoopbackPorts(1)[0]
    }

    /// `count` distinct loopback ports nothing listens on right now: each socket stays bound
    /// until all are chosen, so the kernel hands out different ports.
    public static func freeLoopbackPorts(_ count: Int) throws -> [Int] {
        var sockets: [Int32] = []
        defer { for fd in sockets { close(fd) } }
        var ports: [Int] = []
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw GantryError(.configuration, "cannot open a socket to find a free port: \(String(cString: strerror(errno)))") }
            sockets.append(fd)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = 0
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
            }
            guard bound == 0 else { throw GantryError(.configuration, "cannot bind a loopback socket to find a free port: \(String(cString: strerror(errno)))") }
            let named = withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            guard named == 0 else { throw GantryError(.configuration, "cannot read the port of a loopback socket: \(String(cString: strerror(errno)))") }
            ports.append(Int(UInt16(bigEndian: address.sin_port)))
        }
        return ports
    }

    private static func connectBlocking(host: String, port: Int, timeout: Duration) -> String? {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let resolved = getaddrinfo(host, String(port), &hints, &list)
        guard resolved == 0, let list else {
            return "cannot resolve '\(host)': \(String(cString: gai_strerror(resolved)))"
        }
        // getaddrinfo allocates the list; freeaddrinfo releases it.
        defer { freeaddrinfo(list) }
        var reason = "no address for '\(host)'"
        var entry: UnsafeMutablePointer<addrinfo>? = list
        while let current = entry {
            entry = current.pointee.ai_next
            let fd = socket(current.pointee.ai_family, current.pointee.ai_socktype, current.pointee.ai_protocol)
            guard fd >= 0 else {
                reason = String(cString: strerror(errno))
                continue
            }
            defer { close(fd) }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            if systemConnect(fd, current.pointee.ai_addr, current.pointee.ai_addrlen) == 0 { return nil }
            guard errno == EINPROGRESS else {
                reason = String(cString: strerror(errno))
                continue
            }
            var descriptor = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let milliseconds = Int32(clamping: timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
            let ready = poll(&descriptor, 1, milliseconds)
            if ready == 0 {
                reason = "timed out after \(timeout)"
                continue
            }
            var error: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size)
            if ready > 0 && error == 0 { return nil }
            reason = String(cString: strerror(error != 0 ? error : errno)).lowercased()
        }
        return reason.lowercased()
    }
}
