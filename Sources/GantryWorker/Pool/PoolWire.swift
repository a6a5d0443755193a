import GantryCore

/// The bytes a worker and its pool children exchange over the child's stdin and stdout.
///
/// Every message is a frame: a 4-byte big-endian payload length, then the payload, whose first
/// byte is a ``Kind``. A child first sends a hello; after that the parent sends one
/// ``ChildRequest`` at a time and the child answers each with a result or a failure carrying the
/// request's id. Inside a payload, integers are big-endian and byte strings and texts are
/// prefixed by a 4-byte length.
enum PoolWire {
    /// Bumped whenever the layout changes, so that a child from another build is refused at hello.
    static let version: UInt32 = 1
    /// The size of the length prefix.
    static let headerSize = 4

    enum Kind: UInt8 {
        case hello = 1
        case request = 2
        case result = 3
        case failure = 4
    }

    /// The codes a failure can carry, by name; a code the parent does not know becomes `.taskFailed`.
    static let codes: [String: GantryError.Code] = Dictionary(uniqueKeysWithValues: [
        GantryError.Code.invalidPipeline, .invalidEnvelope, .invalidArgument, .unknownTask, .payloadTooLarge,
        .connectionFailed, .commandFailed, .timeout, .staleEpoch, .notFound, .taskFailed, .configuration,
        .protocolError, .cancelled, .closed, .signatureInvalid,
    ].map { ($0.description, $0) })
}

/// Builds one frame.
struct WireWriter {
    private(set) var bytes: [UInt8]

    /// Starts a frame of `kind`, with room for about `capacity` payload bytes.
    init(_ kind: PoolWire.Kind, capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(PoolWire.headerSize + 1 + capacity)
        bytes.append(contentsOf: [0, 0, 0, 0, kind.rawValue])
    }

    mutating func u8(_ value: UInt8) { bytes.append(value) }

    mutating func bool(_ value: Bool) { bytes.append(value ? 1 : 0) }

    mutating func u32(_ value: UInt32) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func u64(_ value: UInt64) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func i64(_ value: Int64) { u64(UInt64(bitPattern: value)) }

    mutating func data(_ value: some Collection<UInt8>) {
        u32(UInt32(clamping: value.count))
        bytes.append(contentsOf: value)
    }

    mutating func text(_ value: String) { data(value.utf8) }

    /// The finished frame, its length prefix filled in.
    ///
    /// - Throws: `.payloadTooLarge` when the payload is over `limit` bytes.
    func frame(limit: Int, what: @autoclosure () -> String) throws -> [UInt8] {
        let payload = bytes.count - PoolWire.headerSize
        guard payload <= limit, payload <= Int(UInt32.max) else {
            throw GantryError(.payloadTooLarge, "\(what()) is \(payload) bytes, over the process pool's frame limit of \(limit) bytes (pool.max_frame_bytes)")
        }
        var result = bytes
        let length = UInt32(payload).bigEndian
        withUnsafeBytes(of: length) { header in
            for index in 0..<PoolWire.headerSize { result[index] = header[index] }
        }
        return result
    }
}

/// Reads the fields of one frame's payload.
struct WireReader {
    private let bytes: [UInt8]
    private var offset: Int

    /// Reads `payload`, which starts with its kind byte.
    init(_ payload: [UInt8]) {
        bytes = payload
        offset = 0
    }

    mutating func kind() throws -> PoolWire.Kind {
        let raw = try u8()
        guard let kind = PoolWire.Kind(rawValue: raw) else { throw Self.malformed("unknown message kind \(raw)") }
        return kind
    }

    mutating func u8() throws -> UInt8 {
        guard offset < bytes.count else { throw Self.malformed("truncated") }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func bool() throws -> Bool { try u8() != 0 }

    mutating func u32() throws -> UInt32 {
        UInt32(truncatingIfNeeded: try unsigned(4))
    }

    mutating func u64() throws -> UInt64 { try unsigned(8) }

    mutating func i64() throws -> Int64 { Int64(bitPattern: try u64()) }

    mutating func data() throws -> [UInt8] {
        let count = Int(try u32())
        guard bytes.count - offset >= count else { throw Self.malformed("a field of \(count) bytes runs past the end") }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    mutating func text() throws -> String {
        String(decoding: try data(), as: UTF8.self)
    }

    /// Throws unless every byte was read: trailing bytes mean the two sides disagree on the layout.
    func end() throws {
        guard offset == bytes.count else { throw Self.malformed("\(bytes.count - offset) unexpected trailing bytes") }
    }

    private mutating func unsigned(_ width: Int) throws -> UInt64 {
        guard bytes.count - offset >= width else { throw Self.malformed("truncated") }
        var value: UInt64 = 0
        for index in offset..<offset + width { value = value << 8 | UInt64(bytes[index]) }
        offset += width
        return value
    }

    static func malformed(_ problem: String) -> GantryError {
        GantryError(.protocolError, "malformed process-pool frame: \(problem)")
    }
}

/// Splits a byte stream into frame payloads.
struct FrameDecoder {
    private let maxPayload: Int
    private var buffer: [UInt8] = []
    private var start = 0

    init(maxPayload: Int) {
        self.maxPayload = maxPayload
    }

    mutating func append(_ chunk: UnsafeRawBufferPointer) {
        buffer.append(contentsOf: chunk)
    }

    /// The next complete payload, or `nil` until more bytes arrive.
    ///
    /// - Throws: `.protocolError` when a length is over the limit: the stream is not frames.
    mutating func next() throws -> [UInt8]? {
        guard buffer.count - start >= PoolWire.headerSize else { return nil }
        var length = 0
        for index in start..<start + PoolWire.headerSize { length = length << 8 | Int(buffer[index]) }
        guard length <= maxPayload else {
            throw GantryError(.protocolError, "a process-pool frame announces \(length) bytes, over the limit of \(maxPayload) (pool.max_frame_bytes); is the child writing something other than frames to its protocol stream?")
        }
        let end = start + PoolWire.headerSize + length
        guard buffer.count >= end else { return nil }
        let payload = Array(buffer[(start + PoolWire.headerSize)..<end])
        start = end
        // Drop consumed bytes once they are most of the buffer, so that appends stay amortised O(1).
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        } else if start >= 1 << 16, start * 2 >= buffer.count {
            buffer.removeFirst(start)
            start = 0
        }
        return payload
    }
}

/// One task for a child to run: the parent writes it, the child reads it.
struct ChildRequest: Sendable {
    var id: UInt64
    var task: String
    var context: TaskContext
    var input: [UInt8]
    /// The largest result frame the parent accepts; a larger result comes back as a
    /// `.payloadTooLarge` failure instead.
    var maxReplyBytes: Int

    /// The request as a frame.
    func frame(limit: Int) throws -> [UInt8] {
        let upstreamSize = context.upstream.reduce(0) { $0 + $1.key.rawValue.utf8.count + $1.value.count + 8 }
        var writer = WireWriter(.request, capacity: input.count + upstreamSize + 256)
        writer.u64(id)
        writer.u64(UInt64(maxReplyBytes))
        writer.text(task)
        writer.text(context.runID.rawValue)
        writer.text(context.node.stage.rawValue)
        writer.i64(context.node.index.map(Int64.init) ?? -1)
        writer.u32(context.attempt)
        writer.data(context.args.jsonBytes)
        writer.bool(context.deadlineMilliseconds != nil)
        writer.u64(context.deadlineMilliseconds ?? 0)
        writer.u32(UInt32(context.upstream.count))
        for (stage, result) in context.upstream.sorted(by: { $0.key < $1.key }) {
            writer.text(stage.rawValue)
            writer.data(result)
        }
        writer.data(input)
        return try writer.frame(limit: limit, what: "the request for task '\(task)'")
    }

    /// Reads a request payload.
    init(decoding payload: [UInt8]) throws {
        var reader = WireReader(payload)
        guard try reader.kind() == .request else { throw WireReader.malformed("expected a request") }
        id = try reader.u64()
        maxReplyBytes = Int(clamping: try reader.u64())
        task = try reader.text()
        let runText = try reader.text()
        guard let runID = RunID(rawValue: runText) else { throw WireReader.malformed("bad run id '\(runText)'") }
        let stageText = try reader.text()
        guard let stage = StageName(rawValue: stageText) else { throw WireReader.malformed("bad stage name '\(stageText)'") }
        let index = try reader.i64()
        let attempt = try reader.u32()
        let args = try JSONValue(parsing: try reader.data())
        let hasDeadline = try reader.bool()
        let deadline = try reader.u64()
        var upstream: [StageName: [UInt8]] = [:]
        for _ in 0..<(try reader.u32()) {
            let nameText = try reader.text()
            guard let name = StageName(rawValue: nameText) else { throw WireReader.malformed("bad upstream stage name '\(nameText)'") }
            upstream[name] = try reader.data()
        }
        input = try reader.data()
        try reader.end()
        context = TaskContext(
            runID: runID, node: NodeID(stage: stage, index: index < 0 ? nil : Int(index)), attempt: attempt,
            args: args, upstream: upstream, deadlineMilliseconds: hasDeadline ? deadline : nil
        )
    }

    init(id: UInt64, task: String, context: TaskContext, input: [UInt8], maxReplyBytes: Int) {
        self.id = id
        self.task = task
        self.context = context
        self.input = input
        self.maxReplyBytes = maxReplyBytes
    }
}

/// What a child sends: its hello, then one answer per request.
enum ChildReply: Sendable {
    /// The child is up and speaks `version`.
    case hello(pid: Int32, version: UInt32)
    /// The task of request `id` returned `output`.
    case result(id: UInt64, output: [UInt8])
    /// The task of request `id` threw `error`.
    case failure(id: UInt64, error: GantryError)

    /// The reply as a frame; a result over `limit` bytes becomes a failure saying so.
    func frame(limit: Int = Int(UInt32.max)) -> [UInt8] {
        var writer: WireWriter
        switch self {
        case .hello(let pid, let version):
            writer = WireWriter(.hello)
            writer.u32(version)
            writer.u32(UInt32(bitPattern: pid))
        case .result(let id, let output):
            writer = WireWriter(.result, capacity: output.count + 8)
            writer.u64(id)
            writer.data(output)
        case .failure(let id, let error):
            writer = WireWriter(.failure, capacity: error.message.utf8.count + 32)
            writer.u64(id)
            writer.text(error.code.description)
            writer.bool(error.isRetriable)
            writer.text(error.message)
        }
        do {
            return try writer.frame(limit: limit, what: "the task's result")
        } catch let error as GantryError {
            guard case .result(let id, _) = self else { preconditionFailure("only a result can be that large") }
            return ChildReply.failure(id: id, error: error).frame(limit: limit)
        } catch {
            preconditionFailure("WireWriter.frame throws only GantryError")
        }
    }

    /// Reads a reply payload.
    init(decoding payload: [UInt8]) throws {
        var reader = WireReader(payload)
        switch try reader.kind() {
        case .hello:
            let version = try reader.u32()
            self = .hello(pid: Int32(bitPattern: try reader.u32()), version: version)
        case .result:
            self = .result(id: try reader.u64(), output: try reader.data())
        case .failure:
            let id = try reader.u64()
            let code = PoolWire.codes[try reader.text()] ?? .taskFailed
            let retriable = try reader.bool()
            self = .failure(id: id, error: GantryError(code, try reader.text(), isRetriable: retriable))
        case .request:
            throw WireReader.malformed("a child sent a request")
        }
        try reader.end()
    }

    /// A task's error as it travels: a ``GantryError`` keeps its code, message and retriable flag;
    /// anything else becomes a non-retriable `.taskFailed` with its description.
    static func wireError(_ error: any Error) -> GantryError {
        if let error = error as? GantryError {
            // The underlying error cannot cross the process boundary; its description can.
            let message = error.underlying.map { "\(error.message) (caused by: \($0))" } ?? error.message
            return GantryError(error.code, clipped(message), isRetriable: error.isRetriable)
        }
        if error is CancellationError { return GantryError(.cancelled, "the task was cancelled") }
        return GantryError(.taskFailed, clipped("\(error)"))
    }

    /// An error message is for people and logs; a huge one is clipped so that a failure frame
    /// always fits the smallest frame limit.
    private static func clipped(_ message: String) -> String {
        let limit = 16 << 10
        guard message.utf8.count > limit else { return message }
        return String(decoding: message.utf8.prefix(limit), as: UTF8.self) + "… (clipped)"
    }
}
