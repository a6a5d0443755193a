#if canImport(Glibc)
import Glibc
#endif

/// Identities for Gantry processes in leases, heartbeats and logs.
public enum ProcessIdentity {
    /// `host:pid:random`: unique across restarts that reuse a process id.
    public static func make() -> String {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count - 1)
        let host = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return "\(host):\(getpid()):\(String(UInt16.random(in: 0...UInt16.max), radix: 16))"
    }
}
