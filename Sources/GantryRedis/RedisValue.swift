/// One reply from Redis (RESP2).
///
/// Error replies are values too: inside a pipeline each command gets its own reply, so one
/// failed command does not hide the others' results. Single-command calls such as
/// ``RedisClient/send(_:)`` turn an error reply into a thrown ``GantryCore/GantryError``.
public enum RedisValue: Sendable, Hashable {
    /// A nil bulk string or nil array (`$-1`, `*-1`): the key or element does not exist.
    case null
    /// An integer reply (`:`).
    case integer(Int)
    /// A bulk string (`$`): binary-safe bytes.
    case bulk([UInt8])
    /// A simple status reply (`+`), such as `OK` or `PONG`.
    case status(String)
    /// An error reply (`-`), such as `ERR wrong number of arguments` or `NOSCRIPT …`.
    case error(String)
    /// An array reply (`*`).
    case array([RedisValue])
}

extension RedisValue {
    /// Whether this is ``null``.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The text of a bulk string (decoded as UTF-8, invalid bytes replaced) or a status reply.
    public var string: String? {
        switch self {
        case .bulk(let bytes): String(decoding: bytes, as: UTF8.self)
        case .status(let text): text
        default: nil
        }
    }

    /// The bytes of a bulk string, or the UTF-8 bytes of a status reply.
    public var bytes: [UInt8]? {
        switch self {
        case .bulk(let bytes): bytes
        case .status(let text): Array(text.utf8)
        default: nil
        }
    }

    /// An integer reply, or a bulk string holding a decimal integer (what `GET` of a counter
    /// returns).
    public var int: Int? {
        switch self {
        case .integer(let value): value
        case .bulk(let bytes): Int(String(decoding: bytes, as: UTF8.self))
        default: nil
        }
    }

    /// The elements of an array reply.
    public var array: [RedisValue]? {
        if case .array(let elements) = self { return elements }
        return nil
    }

    /// The message of an error reply, e.g. `WRONGTYPE Operation against a key holding the wrong kind of value`.
    public var errorMessage: String? {
        if case .error(let message) = self { return message }
        return nil
    }

    /// Whether this is an error reply.
    public var isError: Bool { errorMessage != nil }

    /// Whether this is the `NOSCRIPT` error that `EVALSHA` returns for a script the server
    /// does not have cached.
    var isNoScript: Bool {
        if case .error(let message) = self { return message.hasPrefix("NOSCRIPT") }
        return false
    }
}

extension RedisValue: CustomStringConvertible {
    /// A short rendering for logs and test failures, in the style of `redis-cli`.
    public var description: String {
        switch self {
        case .null: "(nil)"
        case .integer(let value): "(integer) \(value)"
        case .bulk(let bytes): String(reflecting: String(decoding: bytes, as: UTF8.self))
        case .status(let text): text
        case .error(let message): "(error) \(message)"
        case .array(let elements): "[" + elements.map(\.description).joined(separator: ", ") + "]"
        }
    }
}
