/// Just enough of the Kafka wire protocol for ``KafkaRelay`` to route every connection
/// through itself and to create topics with the dev broker's default partition count.
///
/// Each Kafka frame is a 4-byte big-endian length and a body. Requests start with
/// `api_key int16, api_version int16, correlation_id int32, client_id nullable string`;
/// responses with `correlation_id int32`. Only the non-flexible versions are parsed (the
/// ones librdkafka's mock broker offers: Metadata v0–2, FindCoordinator v0–2); anything
/// else is passed through untouched.
enum KafkaWire {
    static let metadataKey: Int16 = 3
    static let findCoordinatorKey: Int16 = 10
    /// Metadata v9 and FindCoordinator v3 are the first flexible (tagged-field) versions.
    static let firstFlexibleMetadata: Int16 = 9
    static let firstFlexibleFindCoordinator: Int16 = 3

    /// The fixed part of a request header.
    struct RequestHeader: Equatable {
        var apiKey: Int16
        var apiVersion: Int16
        var correlationID: Int32
    }

    /// Reads big-endian values from a frame body; every read fails softly (nil) at the end.
    struct Cursor {
        let bytes: [UInt8]
        var index: Int

        init(_ bytes: [UInt8], at index: Int = 0) {
            self.bytes = bytes
            self.index = index
        }

        mutating func int16() -> Int16? {
            guard index + 2 <= bytes.count else { return nil }
            defer { index += 2 }
            return Int16(bitPattern: UInt16(bytes[index]) << 8 | UInt16(bytes[index + 1]))
        }

        mutating func int32() -> Int32? {
            guard index + 4 <= bytes.count else { return nil }
            defer { index += 4 }
            var value: UInt32 = 0
            for offset in 0..<4 { value = value << 8 | UInt32(bytes[index + offset]) }
            return Int32(bitPattern: value)
        }

        /// A `string` or `nullable string` (int16 length, -1 for null).
        mutating func string() -> String?? {
            guard let length = int16() else { return nil }
            if length < 0 { return .some(nil) }
            guard index + Int(length) <= bytes.count else { return nil }
            defer { index += Int(length) }
            return .some(String(decoding: bytes[index..<index + Int(length)], as: UTF8.self))
        }

        mutating func skipString() -> Bool {
            guard let length = int16() else { return false }
            if length < 0 { return true }
            guard index + Int(length) <= bytes.count else { return false }
            index += Int(length)
            return true
        }
    }

    /// The big-endian int32 at the start of `bytes`.
    static func int32(_ bytes: [UInt8]) -> Int32? {
        var cursor = Cursor(bytes)
        return cursor.int32()
    }

    static func requestHeader(_ prefix: [UInt8]) -> RequestHeader? {
        var cursor = Cursor(prefix)
        guard let key = cursor.int16(), let version = cursor.int16(), let correlation = cursor.int32() else { return nil }
        return RequestHeader(apiKey: key, apiVersion: version, correlationID: correlation)
    }

    /// The topic names a Metadata request asks for; empty for "all topics" or a version this
    /// parser does not know.
    static func metadataRequestTopics(_ body: [UInt8], apiVersion: Int16) -> [String] {
        guard apiVersion >= 0 && apiVersion < firstFlexibleMetadata else { return [] }
        var cursor = Cursor(body, at: 8)
        guard cursor.skipString(), let count = cursor.int32(), count > 0 else { return [] }
        var topics: [String] = []
        for _ in 0..<count {
            guard case .some(.some(let name)) = cursor.string() else { return topics }
            topics.append(name)
        }
        return topics
    }

    /// Writes `value` big-endian at `index`.
    static func put(_ value: Int32, into bytes: inout [UInt8], at index: Int) {
        let raw = UInt32(bitPattern: value)
        for offset in 0..<4 { bytes[index + offset] = UInt8(truncatingIfNeeded: raw >> (24 - 8 * UInt32(offset))) }
    }

    /// Replaces broker ports in a Metadata response body (starting at the correlation id)
    /// with `ports[old]`. Returns the number of ports replaced, or nil when the body did not
    /// parse (it is then left as it was).
    @discardableResult
    static func rewriteMetadataResponse(_ body: inout [UInt8], apiVersion: Int16, ports: [Int32: Int32]) -> Int? {
        guard apiVersion >= 0 && apiVersion < firstFlexibleMetadata else { return nil }
        var cursor = Cursor(body, at: 4)
        if apiVersion >= 3 { guard cursor.int32() != nil else { return nil } }  // throttle_time_ms
        guard let count = cursor.int32(), count >= 0 else { return nil }
        var replacements: [(Int, Int32)] = []
        for _ in 0..<count {
            guard cursor.int32() != nil, cursor.skipString() else { return nil }  // node_id, host
            let portIndex = cursor.index
            guard let port = cursor.int32() else { return nil }
            if apiVersion >= 1 { guard cursor.skipString() else { return nil } }  // rack
            if let relayed = ports[port] { replacements.append((portIndex, relayed)) }
        }
        for (index, port) in replacements { put(port, into: &body, at: index) }
        return replacements.count
    }

    /// Replaces the coordinator's port in a FindCoordinator response body (starting at the
    /// correlation id). Returns the number of ports replaced, or nil when it did not parse.
    @discardableResult
    static func rewriteFindCoordinatorResponse(_ body: inout [UInt8], apiVersion: Int16, ports: [Int32: Int32]) -> Int? {
        guard apiVersion >= 0 && apiVersion < firstFlexibleFindCoordinator else { return nil }
        var cursor = Cursor(body, at: 4)
        if apiVersion >= 1 { guard cursor.int32() != nil else { return nil } }  // throttle_time_ms
        guard cursor.int16() != nil else { return nil }  // error_code
        if apiVersion >= 1 { guard cursor.skipString() else { return nil } }  // error_message
        guard cursor.int32() != nil, cursor.skipString() else { return nil }  // node_id, host
        let portIndex = cursor.index
        guard let port = cursor.int32() else { return nil }
        guard let relayed = ports[port] else { return 0 }
        put(relayed, into: &body, at: portIndex)
        return 1
    }

    /// Whether `name` is a topic name Kafka accepts: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
    static func isValidTopicName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 249, name != ".", name != ".." else { return false }
        return name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == 0x2E || byte == 0x5F || byte == 0x2D
        }
    }
}
