/// A batch of commands sent to Redis in one round trip by ``RedisClient/pipeline(_:)-(RedisPipeline)``.
///
/// Commands are encoded into one contiguous RESP buffer as they are appended, so a batch of
/// thousands of commands costs a handful of allocations, not several per command. Keep a
/// pipeline and call ``removeAll(keepingCapacity:)`` to reuse its buffers for the next batch.
///
/// ```swift
/// var batch = RedisPipeline()
/// for task in tasks {
///     batch.evalsha(claimTask, keys: task.key, args: workerID, now)
/// }
/// let replies = try await client.pipeline(batch)   // one reply per command, in order
/// ```
///
/// Replies come back in order, one per command; an error reply is a ``RedisValue/error(_:)``
/// in its slot rather than a thrown error. An `EVALSHA` answered with `NOSCRIPT` is retried
/// after `SCRIPT LOAD` in one more round trip: it then runs after the batch's other
/// commands, which matters only if they touch the same keys.
public struct RedisPipeline: Sendable {
    /// Where one `EVALSHA` of the batch is, and which script it runs.
    @usableFromInline
    struct ScriptCall: Sendable {
        @usableFromInline var command: Int
        @usableFromInline var script: Int

        @inlinable
        init(command: Int, script: Int) {
            self.command = command
            self.script = script
        }
    }

    /// Every command, RESP-encoded back to back (in the encoder's buffer).
    @usableFromInline var encoder: RedisArgumentEncoder
    /// The end offset of each command in ``encoded``; command `i` starts where `i - 1` ends.
    @usableFromInline var commandEnds: [Int] = []
    /// The `EVALSHA` commands, so a `NOSCRIPT` reply can be retried.
    @usableFromInline var scriptCalls: [ScriptCall] = []
    /// The distinct scripts of ``scriptCalls``.
    @usableFromInline var scripts: [RedisScript] = []
    /// Whether a command may block the connection (`BLPOP`, `XREAD … BLOCK`, `WAIT`…): such
    /// a batch is never sent in one round trip with other callers' batches, which would
    /// otherwise wait behind it.
    @usableFromInline var mayBlock = false

    /// Creates an empty pipeline.
    /// - Parameters:
    ///   - commands: how many commands to reserve room for.
    ///   - bytesPerCommand: the expected encoded size of one command.
    public init(reservingCapacity commands: Int = 0, bytesPerCommand: Int = 96) {
        encoder = RedisArgumentEncoder(capacity: commands * bytesPerCommand)
        if commands > 0 {
            commandEnds.reserveCapacity(commands)
        }
    }

    /// The number of commands in the batch.
    public var count: Int { commandEnds.count }

    /// The size of the encoded commands in bytes: what goes on the wire.
    public var byteCount: Int { encoder.buffer.count }

    /// The encoded commands.
    var encoded: RESPBuffer { encoder.buffer }

    /// Whether the batch has no commands.
    public var isEmpty: Bool { commandEnds.isEmpty }

    /// Removes every command, keeping the buffers for the next batch by default.
    public mutating func removeAll(keepingCapacity: Bool = true) {
        encoder.buffer.removeAll(keepingCapacity: keepingCapacity)
        commandEnds.removeAll(keepingCapacity: keepingCapacity)
        scriptCalls.removeAll(keepingCapacity: keepingCapacity)
        scripts.removeAll(keepingCapacity: keepingCapacity)
        mayBlock = false
    }

    /// Appends a command given as an array, e.g. `["SET", .string(key), .bytes(value)]`.
    /// - Precondition: `command` is not empty.
    public mutating func append(_ command: [RedisArgument]) {
        precondition(!command.isEmpty, "a Redis command needs at least its name")
        let start = encoder.buffer.count
        encoder.buffer.appendCommandHeader(argumentCount: command.count)
        for argument in command {
            encoder.append(argument)
        }
        noteCommand(from: start)
    }

    /// Appends a command given as separate arguments, e.g. `append("SET", key, value)`.
    ///
    /// This form builds no intermediate array: each argument is encoded in place.
    /// - Precondition: at least one argument (the command name).
    @inlinable
    public mutating func append<each Argument: RedisArgumentConvertible>(_ arguments: repeat each Argument) {
        var argumentCount = 0
        for _ in repeat each arguments { argumentCount += 1 }
        precondition(argumentCount > 0, "a Redis command needs at least its name")
        let start = encoder.buffer.count
        encoder.buffer.appendCommandHeader(argumentCount: argumentCount)
        for argument in repeat each arguments {
            encoder.append(argument)
        }
        noteCommand(from: start)
    }

    /// Appends `EVALSHA <script> <numkeys> keys… args…` with keys and arguments as arrays.
    public mutating func evalsha(_ script: RedisScript, keys: [RedisArgument], args: [RedisArgument]) {
        noteScriptCall(script)
        encoder.buffer.appendCommandHeader(argumentCount: 3 + keys.count + args.count)
        encoder.write("EVALSHA")
        encoder.write(script.sha1)
        encoder.write(keys.count)
        for key in keys { encoder.append(key) }
        for argument in args { encoder.append(argument) }
        commandEnds.append(encoder.buffer.count)
    }

    /// Appends `EVALSHA <script> <numkeys> keys… args…`, encoding each key and argument in
    /// place: `batch.evalsha(script, keys: runKey, nodeKey, args: epoch, workerID)`.
    @inlinable
    public mutating func evalsha<each Key: RedisArgumentConvertible, each Argument: RedisArgumentConvertible>(
        _ script: RedisScript,
        keys: repeat each Key,
        args: repeat each Argument
    ) {
        var keyCount = 0
        for _ in repeat each keys { keyCount += 1 }
        var argumentCount = 0
        for _ in repeat each args { argumentCount += 1 }
        noteScriptCall(script)
        encoder.buffer.appendCommandHeader(argumentCount: 3 + keyCount + argumentCount)
        encoder.write("EVALSHA")
        encoder.write(script.sha1)
        encoder.write(keyCount)
        for key in repeat each keys { encoder.append(key) }
        for argument in repeat each args { encoder.append(argument) }
        commandEnds.append(encoder.buffer.count)
    }

    /// Records the end of the command that starts at `start`, and whether it may block.
    @usableFromInline
    mutating func noteCommand(from start: Int) {
        if !mayBlock && encoder.buffer.commandMayBlock(startingAt: start) { mayBlock = true }
        commandEnds.append(encoder.buffer.count)
    }

    /// Records that the next command is an `EVALSHA` of `script`.
    @inlinable
    mutating func noteScriptCall(_ script: RedisScript) {
        // Batches use one or a few scripts: a linear scan beats hashing a 40-byte string.
        var index = scripts.count - 1
        while index >= 0 && scripts[index].sha1 != script.sha1 { index -= 1 }
        if index < 0 {
            index = scripts.count
            scripts.append(script)
        }
        scriptCalls.append(ScriptCall(command: commandEnds.count, script: index))
    }

    /// Where command `index` is in ``encoded``.
    func commandRange(_ index: Int) -> Range<Int> {
        (index == 0 ? 0 : commandEnds[index - 1])..<commandEnds[index]
    }

    /// What to call this batch in error messages: `SET`, `EVALSHA claim_task` or
    /// `pipeline of 1000 commands`.
    var label: String {
        guard count == 1 else { return "pipeline of \(count) commands" }
        if let call = scriptCalls.first { return "EVALSHA \(scripts[call.script].name)" }
        return encoded.commandName(in: commandRange(0)) ?? "command"
    }
}
