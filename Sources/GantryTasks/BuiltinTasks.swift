import GantryCore

/// The tasks every Gantry worker has.
///
/// | task | kind | does |
/// |---|---|---|
/// | `noop` | io | returns nothing; for benchmarks |
/// | `echo` | io | returns its input |
/// | `sleep` | io | waits `args.duration` (e.g. `250ms`), then returns its input |
/// | `sha256` | cpu | hex SHA-256 of its input, as a JSON string; `args.rounds` re-hashes N times |
/// | `wordcount` | cpu | `{"words","lines","bytes","top":[[word,count]…]}` of its input text |
/// | `split` | cpu | a JSON list of its input's lines, in chunks of `args.lines` (default 1) |
/// | `report` | io | a JSON object summarising its input, for the last stage of a pipeline |
/// | `http` | io | one HTTP request; `{"status","headers","body","base64"}` (see ``HTTPTask``) |
/// | `exec` | io | runs an allowed command with the input on stdin, returns stdout (see ``ExecTask``) |
public enum BuiltinTasks {
    /// Every built-in task with the default ``BuiltinTaskConfiguration`` (so `exec` refuses every
    /// command) and `http` on the process-wide ``HTTPTaskClient/shared`` client. For tools that
    /// list or validate tasks, and for in-process runs; a worker uses
    /// ``registry(configuration:http:)``.
    public static var registry: TaskRegistry {
        registry(configuration: BuiltinTaskConfiguration(), http: .shared)
    }

    /// Every built-in task, with `http` and `exec` set up by `configuration` and `http` sending
    /// its requests through `http` (which the caller runs and shuts down).
    public static func registry(configuration: BuiltinTaskConfiguration, http: HTTPTaskClient) -> TaskRegistry {
        var registry = TaskRegistry()
        registry.register("noop", kind: .io, summary: "does nothing and returns nothing") { _, _ in [] }
        registry.register("echo", kind: .io, summary: "returns its input") { input, _ in input }
        registry.register("sleep", kind: .io, summary: "waits args.duration, then returns its input") { input, context in
            let duration = try durationArgument(context.args["duration"], name: "duration", default: .milliseconds(100))
            try await Task.sleep(for: duration)
            return input
        }
        registry.register("sha256", kind: .cpu, summary: "hex SHA-256 of the input (args.rounds: repeat N times)") { input, context in
            let rounds = Int(context.args["rounds"]?.intValue ?? 1)
            guard (1...10_000_000).contains(rounds) else {
                throw GantryError(.invalidArgument, "sha256: args.rounds must be 1...10000000, got \(rounds)")
            }
            return JSONValue.string(sha256(input, rounds: rounds)).jsonBytes
        }
        registry.register("wordcount", kind: .cpu, summary: "counts words and lines and lists the most common words") { input, context in
            let top = Int(context.args["top"]?.intValue ?? 10)
            return wordCount(input, top: max(0, top)).jsonBytes
        }
        registry.register("split", kind: .cpu, summary: "splits the input into a JSON list of line chunks (args.lines per chunk)") { input, context in
            let size = Int(context.args["lines"]?.intValue ?? 1)
            guard size >= 1 else { throw GantryError(.invalidArgument, "split: args.lines must be at least 1, got \(size)") }
            return split(input, linesPerChunk: size).jsonBytes
        }
        registry.register("report", kind: .io, summary: "summarises its input as a JSON object") { input, context in
            var summary: [String: JSONValue] = [
                "run": .string(context.runID.rawValue),
                "inputs": StageInput.jsonOrString(input),
            ]
            if let title = context.args["title"] { summary["title"] = title }
            return JSONValue.object(summary).jsonBytes
        }
        registry.register("http", kind: .io, summary: "one HTTP request (args.url or the input; method, headers, timeout); returns status, headers, body") { input, context in
            try await HTTPTask.run(input: input, args: context.args, client: http, configuration: configuration)
        }
        registry.register("exec", kind: .io, summary: "runs an allowed command (args.command, tasks.exec_allow) with the input on stdin; returns stdout") { input, context in
            try await ExecTask.run(input: input, context: context, configuration: configuration)
        }
        return registry
    }

    /// `rounds` chained SHA-256 digests of `input`, as hex.
    public static func sha256(_ input: [UInt8], rounds: Int = 1) -> String {
        var digest = SHA256.hash(input)
        for _ in 1..<max(1, rounds) { digest = SHA256.hash(digest) }
        return digest.hexString
    }

    /// Word, line and byte counts and the `top` most common words (ties by word).
    public static func wordCount(_ input: [UInt8], top: Int) -> JSONValue {
        var counts: [String: Int] = [:]
        var words = 0
        var lines = 0
        var current: [UInt8] = []
        func flush() {
            guard !current.isEmpty else { return }
            words += 1
            counts[String(decoding: current, as: UTF8.self), default: 0] += 1
            current.removeAll(keepingCapacity: true)
        }
        for byte in input {
            if byte == UInt8(ascii: "\n") { lines += 1 }
            let isWordByte = (byte >= 0x80) || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "'")
            if byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") {
                current.append(byte + 32)
            } else if isWordByte {
                current.append(byte)
            } else {
                flush()
            }
        }
        flush()
        if let last = input.last, last != UInt8(ascii: "\n") { lines += 1 }
        let ranked = counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.prefix(top)
        return .object([
            "words": .int(Int64(words)),
            "lines": .int(Int64(lines)),
            "bytes": .int(Int64(input.count)),
            "top": .array(ranked.map { .array([.string($0.key), .int(Int64($0.value))]) }),
        ])
    }

    /// The input's non-empty lines grouped `linesPerChunk` at a time, as a JSON list of strings.
    public static func split(_ input: [UInt8], linesPerChunk: Int) -> JSONValue {
        let lines = input.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true).map { String(decoding: $0, as: UTF8.self) }
        var chunks: [JSONValue] = []
        var index = 0
        while index < lines.count {
            let end = min(index + linesPerChunk, lines.count)
            chunks.append(.string(lines[index..<end].joined(separator: "\n")))
            index = end
        }
        return .array(chunks)
    }

    static func durationArgument(_ value: JSONValue?, name: String, default fallback: Duration) throws -> Duration {
        guard let value else { return fallback }
        if let number = value.doubleValue, number >= 0 { return .nanoseconds(Int64(number * 1e9)) }
        if let text = value.stringValue, let duration = Duration(parsing: text) { return duration }
        throw GantryError(.invalidArgument, "args.\(name) must be a duration like 250ms or 2s, got \(value)")
    }
}
