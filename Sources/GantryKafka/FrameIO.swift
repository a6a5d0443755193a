#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Blocking reads and writes of whole frames, with one reusable copy buffer.
struct FrameIO {
    /// Larger frames are treated as garbage; the mock keeps at most 5 MB per partition.
    static let maxFrame = 256 * 1024 * 1024

    private var buffer = [UInt8](repeating: 0, count: 64 * 1024)

    /// Reads exactly `count` bytes, or nil at end of stream or on error.
    mutating func readExact(_ fd: Int32, count: Int) -> [UInt8]? {
        var result = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = result.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, count - done) }
            if n > 0 {
                done += n
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return nil
            }
        }
        return result
    }

    /// Writes all of `bytes`; false when the peer is gone.
    func writeFrame(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { Self.writeAll(fd, $0.baseAddress, $0.count) }
    }

    private static func writeAll(_ fd: Int32, _ base: UnsafeRawPointer?, _ count: Int) -> Bool {
        guard let base else { return count == 0 }
        var done = 0
        while done < count {
            // MSG_NOSIGNAL: a client that hung up must not kill the broker with SIGPIPE.
            let n = send(fd, base + done, count - done, Int32(MSG_NOSIGNAL))
            if n > 0 {
                done += n
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return false
            }
        }
        return true
    }

    /// Copies `count` bytes from one socket to the other.
    mutating func copy(from source: Int32, to destination: Int32, count: Int) -> Bool {
        var remaining = count
        while remaining > 0 {
            let chunk = min(remaining, buffer.count)
            let n = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress!, chunk) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            let written = buffer.withUnsafeBytes { Self.writeAll(destination, $0.baseAddress, n) }
            guard written else { return false }
            remaining -= n
        }
        return true
    }
}

func errnoText() -> String {
    String(cString: strerror(errno))
}
