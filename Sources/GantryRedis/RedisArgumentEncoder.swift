/// Receives the bytes of one command argument from a ``RedisArgumentConvertible`` value.
///
/// A conformance calls exactly one `write` method exactly once: each call becomes one RESP
/// bulk string, written straight into the command buffer.
public struct RedisArgumentEncoder: Sendable {
    @usableFromInline var buffer: RESPBuffer
    /// Bulk strings written, so a conformance that writes none or two is caught at once
    /// instead of corrupting the command stream.
    @usableFromInline var written: Int = 0

    @usableFromInline
    init(capacity: Int) {
        buffer = RESPBuffer(capacity: capacity)
    }

    /// Writes raw bytes; the buffer only needs to be valid during the call.
    @inlinable
    public mutating func write(bytes: UnsafeRawBufferPointer) {
        buffer.appendBulk(bytes)
        written &+= 1
    }

    /// Writes the UTF-8 bytes of `text`.
    @inlinable
    public mutating func write(_ text: some StringProtocol) {
        // Native strings are contiguous UTF-8: this is the no-copy path.
        if text.utf8.withContiguousStorageIfAvailable({ write(bytes: UnsafeRawBufferPointer($0)) }) == nil {
            Array(text.utf8).withUnsafeBytes { write(bytes: $0) }
        }
    }

    /// Writes `value` in decimal, as Redis expects integers.
    @inlinable
    public mutating func write(_ value: Int) {
        buffer.appendInteger(value)
        written &+= 1
    }

    /// Encodes `argument`, checking that its conformance wrote exactly one argument.
    @inlinable
    mutating func append(_ argument: some RedisArgumentConvertible) {
        let before = written
        argument.encodeRedisArgument(into: &self)
        precondition(written == before &+ 1, "\(type(of: argument)).encodeRedisArgument(into:) must write exactly one argument")
    }
}
