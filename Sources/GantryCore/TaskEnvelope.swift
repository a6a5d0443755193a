/// The message that carries one task attempt over the broker.
///
/// Binary, versioned and compact (a no-op task is under 100 bytes):
///
/// ```
/// "GT" version:u8 flags:u8
/// run:str stage:str index:uvarint(0 = none, else index+1) task:str kind:u8 priority:u8
/// attempt:uvarint epoch:uvarint deadline_ms:uvarint(0 = none) enqueued_ms:uvarint
/// trace:str payload:bytes
/// [flags & signed: key_id:str mac:32 bytes]   HMAC-SHA256 over every byte before key_id
/// ```
/// `str`/`bytes` are a uvarint length then the bytes. A reader rejects a higher version than it
/// knows, so a new field means a new version.
public struct TaskEnvelope: Hashable, Sendable {
    /// The format version this code writes.
    public static let currentVersion: UInt8 = 1

    /// The run this task belongs to.
    public var runID: RunID
    /// The stage (and map element) this task computes.
    public var node: NodeID
    /// The registered task function to run.
    public var task: String
    /// Where the worker runs it: the child-process pool or an async task.
    public var kind: StageKind
    /// 0...9, higher first, where the broker supports it.
    public var priority: UInt8
    /// 1 for the first try, counting up with each retry.
    public var attempt: UInt32
    /// The fencing token: the worker's lease and result commit must carry this epoch.
    public var epoch: UInt64
    /// When the attempt must be finished, in Unix milliseconds; `nil` means no deadline.
    public var deadlineMilliseconds: UInt64?
    /// When the task was published, in Unix milliseconds, to measure queue wait.
    public var enqueuedMilliseconds: UInt64
    /// W3C `traceparent` of the submitting trace, or empty.
    public var traceParent: String
    /// The task's input bytes.
    public var payload: [UInt8]

    /// Creates an envelope.
    public init(
        runID: RunID, node: NodeID, task: String, kind: StageKind, priority: UInt8 = 0, attempt: UInt32 = 1, epoch: UInt64,
        deadlineMilliseconds: UInt64? = nil, enqueuedMilliseconds: UInt64 = currentMilliseconds(), traceParent: String = "",
        payload: [UInt8] = []
    ) {
        self.runID = runID
        self.node = node
        self.task = task
        self.kind = kind
        self.priority = priority
        self.attempt = attempt
        self.epoch = epoch
        self.deadlineMilliseconds = deadlineMilliseconds
        self.enqueuedMilliseconds = enqueuedMilliseconds
        self.traceParent = traceParent
        self.payload = payload
    }

    private enum Flag {
        static let signed: UInt8 = 1
    }

    /// The encoded message, unsigned.
    public func encoded() -> [UInt8] {
        var writer = ByteWriter(capacity: 64 + payload.count + traceParent.utf8.count)
        writeBody(into: &writer, flags: 0)
        return writer.bytes
    }

    /// The encoded message, signed with `key` under the name `keyID`.
    public func encoded(signedWith key: [UInt8], keyID: String) -> [UInt8] {
        var writer = ByteWriter(capacity: 128 + payload.count + traceParent.utf8.count)
        writeBody(into: &writer, flags: Flag.signed)
        let mac = SHA256.hmac(key: key, message: writer.bytes)
        writer.writeString(keyID)
        writer.writeRaw(mac)
        return writer.bytes
    }

    private func writeBody(into writer: inout ByteWriter, flags: UInt8) {
        writer.writeRaw([UInt8(ascii: "G"), UInt8(ascii: "T"), Self.currentVersion, flags])
        writer.writeString(runID.rawValue)
        writer.writeString(node.stage.rawValue)
        writer.writeVarint(node.index.map { UInt64($0) + 1 } ?? 0)
        writer.writeString(task)
        writer.writeByte(kind == .cpu ? 1 : 0)
        writer.writeByte(priority)
        writer.writeVarint(UInt64(attempt))
        writer.writeVarint(epoch)
        writer.writeVarint(deadlineMilliseconds ?? 0)
        writer.writeVarint(enqueuedMilliseconds)
        writer.writeString(traceParent)
        writer.writeBytes(payload)
    }

    /// Decodes a message, checking its signature when `keys` is given.
    ///
    /// - Parameters:
    ///   - bytes: the message as received.
    ///   - maxPayload: the largest payload accepted; a larger one is a `.payloadTooLarge` error.
    ///   - keys: signing keys by key id. When non-nil, an unsigned message, an unknown key id or a
    ///     wrong MAC is a `.signatureInvalid` error; when nil, signatures are not checked.
    public init(decoding bytes: [UInt8], maxPayload: Int = 16 << 20, keys: [String: [UInt8]]? = nil) throws {
        var reader = ByteReader(bytes)
        let header = try reader.readRaw(4)
        guard header[0] == UInt8(ascii: "G"), header[1] == UInt8(ascii: "T") else {
            throw GantryError(.invalidEnvelope, "not a Gantry task envelope (bad magic bytes); publish tasks with `gantry submit` or the GantryCore API")
        }
        guard header[2] == Self.currentVersion else {
            throw GantryError(.invalidEnvelope, "task envelope version \(header[2]) is not supported by this worker (it reads version \(Self.currentVersion)); upgrade the worker")
        }
        let flags = header[3]
        guard flags & ~Flag.signed == 0 else {
            throw GantryError(.invalidEnvelope, "task envelope has unknown flags \(flags)")
        }
        let runText = try reader.readString(field: "run id")
        guard let runID = RunID(rawValue: runText) else {
            throw GantryError(.invalidEnvelope, "task envelope has a malformed run id '\(runText)'")
        }
        let stageText = try reader.readString(field: "stage")
        guard let stage = StageName(rawValue: stageText) else {
            throw GantryError(.invalidEnvelope, "task envelope has a malformed stage name '\(stageText)'")
        }
        let indexPlusOne = try reader.readVarint(field: "index")
        guard indexPlusOne <= UInt64(Int32.max) else { throw GantryError(.invalidEnvelope, "task envelope map index \(indexPlusOne) is out of range") }
        let task = try reader.readString(field: "task")
        let kindByte = try reader.readByte(field: "kind")
        guard kindByte <= 1 else { throw GantryError(.invalidEnvelope, "task envelope has unknown stage kind \(kindByte)") }
        let priority = try reader.readByte(field: "priority")
        let attempt = try reader.readVarint(field: "attempt")
        guard attempt >= 1, attempt <= UInt64(UInt32.max) else { throw GantryError(.invalidEnvelope, "task envelope attempt \(attempt) is out of range") }
        let epoch = try reader.readVarint(field: "epoch")
        let deadline = try reader.readVarint(field: "deadline")
        let enqueued = try reader.readVarint(field: "enqueued time")
        let trace = try reader.readString(field: "trace context")
        let payloadLength = try reader.readVarint(field: "payload length")
        guard payloadLength <= UInt64(maxPayload) else {
            throw GantryError(.payloadTooLarge, "task payload is \(payloadLength) bytes, over the limit of \(maxPayload) bytes; raise max_payload_bytes or pass large data by reference")
        }
        let payload = try reader.readRaw(Int(payloadLength))
        let bodyEnd = reader.offset

        if flags & Flag.signed != 0 {
            let keyID = try reader.readString(field: "signing key id")
            let mac = try reader.readRaw(32)
            if let keys {
                guard let key = keys[keyID] else {
                    throw GantryError(.signatureInvalid, "task envelope is signed with unknown key id '\(keyID)'; add it to signing.keys")
                }
                let expected = SHA256.hmac(key: key, message: bytes[0..<bodyEnd])
                guard constantTimeEqual(expected, mac) else {
                    throw GantryError(.signatureInvalid, "task envelope signature does not match (key id '\(keyID)'): the message was altered or signed with another key")
                }
            }
        } else if keys != nil {
            throw GantryError(.signatureInvalid, "task envelope is not signed but signing is required by this worker")
        }
        guard reader.isAtEnd else {
            throw GantryError(.invalidEnvelope, "task envelope has \(reader.remaining) unexpected trailing bytes")
        }
        self.init(
            runID: runID, node: NodeID(stage: stage, index: indexPlusOne == 0 ? nil : Int(indexPlusOne - 1)), task: task,
            kind: kindByte == 1 ? .cpu : .io, priority: priority, attempt: UInt32(attempt), epoch: epoch,
            deadlineMilliseconds: deadline == 0 ? nil : deadline, enqueuedMilliseconds: enqueued, traceParent: trace, payload: payload
        )
    }
}

private func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for index in a.indices { difference |= a[index] ^ b[index] }
    return difference == 0
}

/// Appends the primitive encodings used by ``TaskEnvelope``.
struct ByteWriter {
    private(set) var bytes: [UInt8]

    init(capacity: Int) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    mutating func writeByte(_ byte: UInt8) { bytes.append(byte) }
    mutating func writeRaw(_ raw: some Collection<UInt8>) { bytes.append(contentsOf: raw) }

    mutating func writeVarint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    mutating func writeBytes(_ raw: [UInt8]) {
        writeVarint(UInt64(raw.count))
        bytes.append(contentsOf: raw)
    }

    mutating func writeString(_ text: String) {
        var text = text
        text.withUTF8 { utf8 in
            writeVarint(UInt64(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }
}

/// Reads the primitive encodings used by ``TaskEnvelope``; every read is bounds-checked.
struct ByteReader {
    private let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var isAtEnd: Bool { offset == bytes.count }
    var remaining: Int { bytes.count - offset }

    mutating func readByte(field: String) throws -> UInt8 {
        guard offset < bytes.count else { throw truncated(field) }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func readRaw(_ count: Int) throws -> [UInt8] {
        guard count >= 0, count <= remaining else { throw truncated("\(count) bytes") }
        defer { offset += count }
        return Array(bytes[offset..<(offset + count)])
    }

    mutating func readVarint(field: String) throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let byte = try readByte(field: field)
            guard shift < 64 else { throw GantryError(.invalidEnvelope, "task envelope field '\(field)' has an over-long number") }
            result |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
        }
    }

    mutating func readString(field: String) throws -> String {
        let length = try readVarint(field: field)
        guard length <= UInt64(remaining) else { throw truncated(field) }
        let raw = try readRaw(Int(length))
        guard let text = String(validating: raw, as: UTF8.self) else {
            throw GantryError(.invalidEnvelope, "task envelope field '\(field)' is not valid UTF-8")
        }
        return text
    }

    private func truncated(_ field: String) -> GantryError {
        GantryError(.invalidEnvelope, "task envelope is truncated: it ends inside '\(field)' at byte \(offset) of \(bytes.count)")
    }
}
