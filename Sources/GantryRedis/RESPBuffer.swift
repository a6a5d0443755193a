/// A growable byte buffer that RESP commands are encoded into, straight into their final place.
///
/// Encoding in Swift rather than through `redisAppendCommandArgv` turns a whole pipeline into
/// one contiguous buffer handed to hiredis with one `redisAppendFormattedCommand` call: no C
/// argv arrays, no `malloc` per command in hiredis, one copy per argument. The buffer is a
/// copy-on-write value; each argument costs one uniqueness and capacity check and raw
/// stores, not a checked `Array.append` per byte.
@usableFromInline
struct RESPBuffer: Sendable {
    /// The heap block behind a ``RESPBuffer``.
    ///
    /// `@unchecked Sendable`: a storage is written only through a buffer that holds the only
    /// reference to it (checked with `isKnownUniquelyReferenced` before every write), so a
    /// storage shared between threads is never mutated.
    @usableFromInline
    final class Storage: @unchecked Sendable {
        @usableFromInline let bytes: UnsafeMutableRawPointer
        @usableFromInline let capacity: Int

        @usableFromInline
        init(capacity: Int) {
            self.capacity = Swift.max(capacity, 64)
            self.bytes = .allocate(byteCount: self.capacity, alignment: 1)
        }

        deinit { bytes.deallocate() }
    }

    @usableFromInline var storage: Storage
    /// The number of bytes written.
    @usableFromInline var count: Int

    /// Creates an empty buffer with room for `capacity` bytes.
    @usableFromInline
    init(capacity: Int = 0) {
        storage = Storage(capacity: capacity)
        count = 0
    }

    /// Empties the buffer, keeping its memory when nobody else shares it.
    @usableFromInline
    mutating func removeAll(keepingCapacity: Bool) {
        if !keepingCapacity || !isKnownUniquelyReferenced(&storage) {
            storage = Storage(capacity: keepingCapacity ? storage.capacity : 0)
        }
        count = 0
    }

    /// Makes `extra` more bytes writable and returns where the next byte goes.
    @inlinable
    mutating func reserve(_ extra: Int) -> UnsafeMutableRawPointer {
        if _slowPath(!isKnownUniquelyReferenced(&storage) || count + extra > storage.capacity) {
            grow(toAtLeast: count + extra)
        }
        return storage.bytes + count
    }

    @usableFromInline
    mutating func grow(toAtLeast minimum: Int) {
        // Doubling keeps appends amortised O(1) per byte.
        let bigger = Storage(capacity: Swift.max(minimum, storage.capacity * 2))
        bigger.bytes.copyMemory(from: storage.bytes, byteCount: count)
        storage = bigger
    }

    /// Records that everything up to `end` (returned by ``reserve(_:)`` plus what was written) is filled.
    @inlinable
    mutating func commit(upTo end: UnsafeMutableRawPointer) {
        count = end - storage.bytes
    }

    /// Appends `*<count>\r\n`, the header of a command with `count` arguments.
    @inlinable
    mutating func appendCommandHeader(argumentCount: Int) {
        var cursor = reserve(23)
        cursor.storeBytes(of: UInt8(ascii: "*"), as: UInt8.self)
        cursor = Self.writeDecimal(argumentCount, at: cursor + 1)
        commit(upTo: Self.writeCRLF(at: cursor))
    }

    /// Appends `$<length>\r\n<bytes>\r\n`.
    @inlinable
    mutating func appendBulk(_ bytes: UnsafeRawBufferPointer) {
        var cursor = reserve(bytes.count + 25)
        cursor.storeBytes(of: UInt8(ascii: "$"), as: UInt8.self)
        cursor = Self.writeCRLF(at: Self.writeDecimal(bytes.count, at: cursor + 1))
        if let base = bytes.baseAddress, bytes.count > 0 {
            cursor.copyMemory(from: base, byteCount: bytes.count)
            cursor += bytes.count
        }
        commit(upTo: Self.writeCRLF(at: cursor))
    }

    /// Appends an integer as a decimal bulk string without a detour through text.
    @inlinable
    mutating func appendInteger(_ value: Int) {
        var cursor = reserve(48)
        cursor.storeBytes(of: UInt8(ascii: "$"), as: UInt8.self)
        cursor = Self.writeCRLF(at: Self.writeDecimal(Self.decimalLength(value), at: cursor + 1))
        cursor = Self.writeDecimal(value, at: cursor)
        commit(upTo: Self.writeCRLF(at: cursor))
    }

    /// Appends bytes `range` of `other` (an already-encoded command).
    mutating func append(_ other: RESPBuffer, range: Range<Int>) {
        let cursor = reserve(range.count)
        cursor.copyMemory(from: other.storage.bytes + range.lowerBound, byteCount: range.count)
        commit(upTo: cursor + range.count)
    }

    /// Calls `body` with the bytes written so far.
    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(storage) {
            try body(UnsafeRawBufferPointer(start: storage.bytes, count: count))
        }
    }

    // MARK: Digits

    @inlinable
    static func writeCRLF(at cursor: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer {
        cursor.storeBytes(of: UInt8(ascii: "\r"), as: UInt8.self)
        (cursor + 1).storeBytes(of: UInt8(ascii: "\n"), as: UInt8.self)
        return cursor + 2
    }

    /// The number of bytes of `value` in decimal, sign included.
    @inlinable
    static func decimalLength(_ value: Int) -> Int {
        var length = value < 0 ? 2 : 1
        var magnitude = value.magnitude
        while magnitude >= 10 {
            magnitude /= 10
            length += 1
        }
        return length
    }

    /// Writes `value` in decimal at `cursor` and returns the position after it.
    @inlinable
    static func writeDecimal(_ value: Int, at cursor: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer {
        if value >= 0 && value < 10 {
            cursor.storeBytes(of: UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: value), as: UInt8.self)
            return cursor + 1
        }
        let end = cursor + decimalLength(value)
        var position = end
        var magnitude = value.magnitude
        repeat {
            position -= 1
            position.storeBytes(of: UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: magnitude % 10), as: UInt8.self)
            magnitude /= 10
        } while magnitude > 0
        if value < 0 { cursor.storeBytes(of: UInt8(ascii: "-"), as: UInt8.self) }
        return end
    }

    /// The first argument of the command encoded at `range` (its name, such as `SET`), for
    /// error messages; `nil` if the bytes are not a RESP command.
    func commandName(in range: Range<Int>) -> String? {
        withUnsafeBytes { all in
            let bytes = all[range]
            // *<n>\r\n$<len>\r\n<name>\r\n
            guard let firstLineEnd = bytes.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
            let lengthStart = firstLineEnd + 2
            guard lengthStart < bytes.endIndex, bytes[firstLineEnd + 1] == UInt8(ascii: "$"),
                  let lengthEnd = bytes[lengthStart...].firstIndex(of: UInt8(ascii: "\r")),
                  let length = Int(String(decoding: bytes[lengthStart..<lengthEnd], as: UTF8.self))
            else { return nil }
            let nameStart = lengthEnd + 2
            guard nameStart + length <= bytes.endIndex else { return nil }
            return String(decoding: bytes[nameStart..<nameStart + Swift.min(length, 64)], as: UTF8.self).uppercased()
        }
    }
}

extension RESPBuffer {
    /// Commands that can hold a connection until data arrives or their timeout passes.
    private static let blockingCommands: Set<String> = [
        "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP",
        "XREAD", "XREADGROUP", "WAIT", "WAITAOF",
    ]

    /// Whether the command encoded at `start` is one of ``blockingCommands``.
    @usableFromInline
    func commandMayBlock(startingAt start: Int) -> Bool {
        withUnsafeBytes { bytes in
            // *<n>\r\n$<len>\r\n<name>, and every candidate name is 4 to 10 bytes long.
            var index = start + 1
            while index < bytes.count && bytes[index] != UInt8(ascii: "\n") { index += 1 }
            guard index + 4 < bytes.count, bytes[index + 1] == UInt8(ascii: "$") else { return false }
            let length = Int(bytes[index + 2]) - Int(UInt8(ascii: "0"))
            let singleDigit = bytes[index + 3] == UInt8(ascii: "\r")
            guard (singleDigit && (4...9).contains(length))
                || (length == 1 && bytes[index + 3] == UInt8(ascii: "0") && bytes[index + 4] == UInt8(ascii: "\r"))
            else { return false }
            let nameStart = index + (length == 1 ? 6 : 5)
            let nameLength = length == 1 ? 10 : length
            guard nameStart + nameLength <= bytes.count else { return false }
            // Cheap first-letter filter before building a string: B…, X…, W….
            switch bytes[nameStart] | 0x20 {
            case UInt8(ascii: "b"), UInt8(ascii: "x"), UInt8(ascii: "w"): break
            default: return false
            }
            let name = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[nameStart..<nameStart + nameLength]), as: UTF8.self)
            return Self.blockingCommands.contains(name.uppercased())
        }
    }

    /// Appends the UTF-8 bytes of `text` as a bulk string (for the client's own commands).
    mutating func appendString(_ text: String) {
        var text = text
        text.withUTF8 { appendBulk(UnsafeRawBufferPointer($0)) }
    }
}
