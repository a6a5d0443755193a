#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// One relayed connection: its two sockets and the responses it waits to rewrite.
final class RelayConnection: Sendable {
    let client: Int32
    let upstream: Int32
    private let state = Mutex(ConnectionState())

    private struct ConnectionState {
        var open = true
        var pumpsFinished = 0
        var expected: [Int32: KafkaWire.RequestHeader] = [:]
    }

    init(client: Int32, upstream: Int32) {
        self.client = client
        self.upstream = upstream
    }

    func expect(_ header: KafkaWire.RequestHeader) {
        state.withLock { $0.expected[header.correlationID] = header }
    }

    func take(_ correlationID: Int32) -> KafkaWire.RequestHeader? {
        state.withLock { $0.expected.removeValue(forKey: correlationID) }
    }

    /// Shuts both sockets down, waking both threads. Under the lock, so that it never hits
    /// descriptors that were closed and reused meanwhile.
    func cut() {
        state.withLock { state in
            guard state.open else { return }
            _ = shutdown(client, Int32(SHUT_RDWR))
            _ = shutdown(upstream, Int32(SHUT_RDWR))
        }
    }

    /// Called once by each of the two threads; the second closes the sockets and returns
    /// true.
    func pumpFinished() -> Bool {
        state.withLock { state in
            state.pumpsFinished += 1
            guard state.pumpsFinished == 2 else { return false }
            state.open = false
            close(client)
            close(upstream)
            return true
        }
    }
}
