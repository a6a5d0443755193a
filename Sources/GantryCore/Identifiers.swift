#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The identifier of one run of a pipeline.
///
/// A ULID: 48 bits of milliseconds since the epoch followed by 80 random bits, written as 26
/// characters of Crockford base32. Identifiers made later sort after earlier ones, so the
/// newest runs are found by ordering keys, not by keeping a separate index.
public struct RunID: Hashable, Sendable, Codable, Comparable, CustomStringConvertible, RawRepresentable {
    /// The 26-character text form.
    public let rawValue: String

    /// Wraps a text form after checking it is a well-formed run identifier.
    public init?(rawValue: String) {
        guard rawValue.utf8.count == 26, rawValue.utf8.allSatisfy({ RunID.decodeTable[Int($0)] != 0xFF }) else {
            return nil
        }
        self.rawValue = rawValue
    }

    /// Parses a run identifier, throwing an error that says what is wrong with it.
    public init(validating text: String) throws {
        guard let id = RunID(rawValue: text.uppercased()) else {
            throw GantryError(.invalidArgument, "'\(text)' is not a run id: expected 26 characters of Crockford base32, as printed by `gantry submit`")
        }
        self = id
    }

    /// Makes a new identifier for the current time.
    public static func make() -> RunID {
        var generator = SystemRandomNumberGenerator()
        return make(milliseconds: currentMilliseconds(), using: &generator)
    }

    /// Makes an identifier for the given time from the given random source.
    public static func make(milliseconds: UInt64, using generator: inout some RandomNumberGenerator) -> RunID {
        let high = UInt64.random(in: 0...UInt64(UInt16.max), using: &generator)
        let low = UInt64.random(in: 0...UInt64.max, using: &generator)
        // 128 bits: 48 time | 16 random | 64 random, encoded 5 bits at a time from the top.
        let hi64 = (milliseconds << 16) | high
        var chars = [UInt8](repeating: 0, count: 26)
        for index in 0..<26 {
            let bitOffset = index * 5 - 2  // 130 bits of room, the two leading bits are zero
            chars[index] = alphabet[Int(bits(hi64, low, from: bitOffset))]
        }
        return RunID(unchecked: String(decoding: chars, as: UTF8.self))
    }

    /// The creation time encoded in the identifier, in milliseconds since the epoch.
    public var milliseconds: UInt64 {
        var value: UInt64 = 0
        for byte in rawValue.utf8.prefix(10) {
            value = value << 5 | UInt64(RunID.decodeTable[Int(byte)])
        }
        // The first 10 characters are 50 bits: two zero pad bits, then the 48-bit time.
        return value
    }

    public var description: String { rawValue }

    public static func < (lhs: RunID, rhs: RunID) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        try self.init(validating: text)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    private init(unchecked rawValue: String) { self.rawValue = rawValue }

    private static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
    private static let decodeTable: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (value, char) in alphabet.enumerated() { table[Int(char)] = UInt8(value) }
        return table
    }()

    /// Five bits of the 130-bit number (two zero bits, `hi`, `lo`) starting at `offset` from the top
    /// of the 128 data bits; a negative offset reaches into the zero padding.
    private static func bits(_ hi: UInt64, _ lo: UInt64, from offset: Int) -> UInt64 {
        var result: UInt64 = 0
        for bit in offset..<(offset + 5) {
            let value: UInt64
            if bit < 0 {
                value = 0
            } else if bit < 64 {
                value = (hi >> UInt64(63 - bit)) & 1
            } else {
                value = (lo >> UInt64(127 - bit)) & 1
            }
            result = result << 1 | value
        }
        return result
    }
}

/// Milliseconds since the Unix epoch, from the wall clock.
public func currentMilliseconds() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return UInt64(spec.tv_sec) * 1000 + UInt64(spec.tv_nsec) / 1_000_000
}

/// The name of a stage in a pipeline: 1 to 64 characters of letters, digits, `_` and `-`,
/// starting with a letter.
public struct StageName: Hashable, Sendable, Codable, Comparable, CustomStringConvertible, RawRepresentable, ExpressibleByStringLiteral {
    public let rawValue: String

    /// Wraps a name if it is valid.
    public init?(rawValue: String) {
        guard StageName.isValid(rawValue) else { return nil }
        self.rawValue = rawValue
    }

    public init(stringLiteral value: String) {
        precondition(StageName.isValid(value), "invalid stage name literal '\(value)'")
        self.rawValue = value
    }

    /// Whether `text` is a valid stage name.
    public static func isValid(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard (1...64).contains(bytes.count), let first = bytes.first, isLetter(first) else { return false }
        return bytes.allSatisfy { isLetter($0) || ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }

    /// What a valid name looks like, for error messages.
    public static let rule = "1 to 64 letters, digits, '_' or '-', starting with a letter"

    private static func isLetter(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
    }

    public var description: String { rawValue }
    public static func < (lhs: StageName, rhs: StageName) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let name = StageName(rawValue: text) else {
            throw GantryError(.invalidArgument, "'\(text)' is not a stage name: \(StageName.rule)")
        }
        self = name
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// One schedulable unit of a run: a stage, or one element of a stage that maps over a list.
///
/// Its text form is `stage` or `stage[index]`.
public struct NodeID: Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
    /// The stage this node belongs to.
    public var stage: StageName
    /// The element index for a node of a mapped stage; `nil` for an ordinary stage.
    public var index: Int?

    /// Creates a node identifier.
    public init(stage: StageName, index: Int? = nil) {
        self.stage = stage
        self.index = index
    }

    /// Parses the text form `stage` or `stage[index]`.
    public init?(_ text: String) {
        if let open = text.firstIndex(of: "["), text.hasSuffix("]") {
            guard let stage = StageName(rawValue: String(text[..<open])),
                  let index = Int(text[text.index(after: open)..<text.index(before: text.endIndex)]), index >= 0
            else { return nil }
            self.init(stage: stage, index: index)
        } else {
            guard let stage = StageName(rawValue: text) else { return nil }
            self.init(stage: stage)
        }
    }

    public var description: String {
        if let index { return "\(stage.rawValue)[\(index)]" }
        return stage.rawValue
    }

    public static func < (lhs: NodeID, rhs: NodeID) -> Bool {
        if lhs.stage != rhs.stage { return lhs.stage < rhs.stage }
        return (lhs.index ?? -1) < (rhs.index ?? -1)
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let node = NodeID(text) else {
            throw GantryError(.invalidArgument, "'\(text)' is not a node id: expected 'stage' or 'stage[index]'")
        }
        self = node
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// The kind of work a stage does, which decides where a worker runs it.
public enum StageKind: String, Hashable, Sendable, Codable, CaseIterable {
    /// CPU-bound: runs in the worker's pool of child processes.
    case cpu
    /// I/O-bound: runs as an async task in the worker process.
    case io
}
