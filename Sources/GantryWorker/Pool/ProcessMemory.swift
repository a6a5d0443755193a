#if canImport(Glibc)
import Glibc
#endif

/// Memory figures of other processes, from procfs.
enum ProcessMemory {
    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// The resident set size of `pid` in bytes, or `nil` if it cannot be read (the process is gone,
    /// or this is not Linux).
    ///
    /// Reading procfs does not wait on a disk: the kernel formats the figures on the spot, so this
    /// is fine on the cooperative pool.
    static func residentBytes(of pid: Int32) -> Int? {
        // /proc/<pid>/statm: "size resident shared text lib data dt", in pages.
        let descriptor = open("/proc/\(pid)/statm", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress!, $0.count) }
        guard count > 0 else { return nil }
        let fields = buffer[..<count].split(separator: UInt8(ascii: " "))
        guard fields.count > 1, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return nil }
        return pages * pageSize
    }
}
