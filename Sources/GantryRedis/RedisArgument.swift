/// A value that can be sent to Redis as one command argument (a RESP bulk string).
///
/// `String`, `Substring`, `[UInt8]`, `ArraySlice<UInt8>`, `Int`, `Int64`, `Int32`, `UInt64`
/// and ``RedisArgument`` conform. Conforming types write their bytes in place, so building a
/// command copies each argument once, straight into the outgoing buffer.
public protocol RedisArgumentConvertible: Sendable {
    /// Writes this value with exactly one call to one of the encoder's `write` methods.
    func encodeRedisArgument(into encoder: inout RedisArgumentEncoder)
}

/// One argument of a Redis command: text, raw bytes or an integer.
///
/// Literals convert implicitly, so commands read like `redis-cli`:
/// `["SET", .string(key), .bytes(payload), "EX", 60]`.
public enum RedisArgument: Sendable, Hashable {
    /// Text, sent as its UTF-8 bytes.
    case string(String)
    /// Binary-safe bytes.
    case bytes([UInt8])
    /// An integer, sent in decimal as Redis expects.
    case integer(Int)
}

extension RedisArgument: ExpressibleByStringInterpolation {
    /// Creates a ``string(_:)`` argument from a literal.
    public init(stringLiteral value: String) { self = .string(value) }
}

extension RedisArgument: ExpressibleByIntegerLiteral {
    /// Creates an ``integer(_:)`` argument from a literal.
    public init(integerLiteral value: Int) { self = .integer(value) }
}

extension RedisArgument: RedisArgumentConvertible {
    @inlinable
    public func encodeRedisArgument(into encoder: inout RedisArgumentEncoder) {
        switch self {
        case .string(let text): encoder.write(text)
        case .bytes(let bytes): bytes.withUnsafeBytes { encoder.write(bytes: $0) }
        case .integer(let value): encoder.write(value)
        }
    }
}

extension String: RedisArgumentConvertible {
    @inlinable
    public func encodeRedisArgument(into encoder: inout RedisArgumentEncoder) {
        encoder.write(self)
    }
}

extension Substring: RedisArgumentConvertible {
    @inlinable
    public func encodeRedisArgument(into encoder: inout RedisArgumentEncoder) {
        encoder.write(self)
    }
}

extension Array: RedisArgumentConvertible where Element == UInt8 {
    @inlinable
    public func encodeRedisArgument(into encoder: inout RedisArgumentEncoder) {
        withUnsafeBytes { encoder.write(bytes: $0) }
    }
}

extension ArraySlice: RedisArgumentConvertible where Element == UInt8 {
    @inlinable
    public func encodeRedisArgument(into encoder: inout RedisArgumentEncoder) {
        withUnsafeBytes { encoder.write(bytes: $0) }
    }
}

extension Int: RedisArgumentConvertible {
    @inlinable
    public func encodeRedisArgument(into encoder: inout RedisArgumentEncoder) {
        encoder.write(self)
    }
}

extension Int64: RedisArgumentConvertible {
    @inlinable
    public func encodeRedisArgument(into encoder: inout RedisArgumentEncoder) {
        encoder.write(Int(self))
    }
}

extension Int32: RedisArgumentConvertible {
    @inlinable
    public func encodeRedisArgument(into encoder: inout RedisArgumentEncoder) {
        encoder.write(Int(self))
    }
}

extension UInt64: RedisArgumentConvertible {
    @inlinable
    public func encodeRedisArgument(into encoder: inout RedisArgumentEncoder) {
        // Values above Int.max are rare (hashes, masks): format those through String.
        if let small = Int(exactly: self) {
            encoder.write(small)
        } else {
            encoder.write(String(self))
        }
    }
}
