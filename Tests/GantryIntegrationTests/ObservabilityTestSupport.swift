import Foundation
import GantryCore
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// One sample of a Prometheus text exposition.
struct PrometheusSample: Hashable {
    var name: String
    var labels: [String: String]
    var value: Double
}

/// A strict reader of the Prometheus text format (version 0.0.4): every sample must belong to a
/// family declared by `# TYPE`, label values must be quoted with valid escapes, values must be
/// numbers. Throws on the first malformed line.
enum PrometheusText {
    static func parse(_ text: String) throws -> [PrometheusSample] {
        var types: [String: String] = [:]
        var samples: [PrometheusSample] = []
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = String(raw)
            func bad(_ why: String) -> GantryError { GantryError(.protocolError, "metrics line \(number + 1) '\(line)': \(why)") }
            if line.isEmpty { continue }
            if line.hasPrefix("#") {
                let parts = line.split(separator: " ", maxSplits: 3).map(String.init)
                if parts.count >= 2, parts[1] == "TYPE" {
                    guard parts.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(parts[3]) else { throw bad("malformed TYPE") }
                    guard types[parts[2]] == nil else { throw bad("family \(parts[2]) declared twice") }
                    types[parts[2]] = parts[3]
                }
                continue
            }
            var index = line.startIndex
            while index < line.endIndex, line[index].isLetter || line[index].isNumber || line[index] == "_" || line[index] == ":" { index = line.index(after: index) }
            let name = String(line[..<index])
            guard !name.isEmpty, !(name.first!.isNumber) else { throw bad("no metric name") }
            var labels: [String: String] = [:]
            if index < line.endIndex, line[index] == "{" {
                index = line.index(after: index)
                while true {
                    guard index < line.endIndex else { throw bad("unterminated labels") }
                    if line[index] == "}" { index = line.index(after: index); break }
                    let keyStart = index
                    while index < line.endIndex, line[index] != "=" { index = line.index(after: index) }
                    let key = String(line[keyStart..<index])
                    guard index < line.endIndex, !key.isEmpty else { throw bad("label without '='") }
                    index = line.index(after: index)
                    guard index < line.endIndex, line[index] == "\"" else { throw bad("label value not quoted") }
                    index = line.index(after: index)
                    var value = ""
                    while true {
                        guard index < line.endIndex else { throw bad("unterminated label value") }
                        let character = line[index]
                        index = line.index(after: index)
                        if character == "\"" { break }
                        if character == "\\" {
                            guard index < line.endIndex else { throw bad("dangling escape") }
                            switch line[index] {
                            case "\\": value.append("\\")
                            case "\"": value.append("\"")
                            case "n": value.append("\n")
                            default: throw bad("invalid escape")
                            }
                            index = line.index(after: index)
                        } else {
                            value.append(character)
                        }
                    }
                    labels[key] = value
                    if index < line.endIndex, line[index] == "," { index = line.index(after: index) }
                }
            }
            let rest = line[index...].split(separator: " ")
            guard let valueText = rest.first, rest.count <= 2 else { throw bad("expected one value (and an optional timestamp)") }
            let value: Double
            switch valueText {
            case "+Inf": value = .infinity
            case "-Inf": value = -.infinity
            case "NaN": value = .nan
            default:
                guard let parsed = Double(valueText) else { throw bad("value '\(valueText)' is not a number") }
                value = parsed
            }
            var family = name
            for suffix in ["_bucket", "_sum", "_count"] where types[family] == nil && name.hasSuffix(suffix) {
                family = String(name.dropLast(suffix.count))
            }
            guard types[family] != nil else { throw bad("no # TYPE for family \(family)") }
            samples.append(PrometheusSample(name: name, labels: labels, value: value))
        }
        return samples
    }
}

extension [PrometheusSample] {
    /// The sum of `name`'s samples whose labels include `matching`.
    func total(_ name: String, _ matching: [String: String] = [:]) -> Double {
        filter { sample in sample.name == name && matching.allSatisfy { key, value in sample.labels[key] == value } }.map(\.value).reduce(0, +)
    }
}

/// HTTP GET of `url`: status and body.
func httpGet(_ url: String) async throws -> (status: Int, body: String) {
    var request = URLRequest(url: URL(string: url)!)
    request.timeoutInterval = 10
    let (data, response) = try await URLSession.shared.data(for: request)
    return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
}

/// A child process started with posix_spawn and reaped with waitpid, so that waiting never
/// depends on Foundation's process monitoring; standard output and error go to a file.
struct ChildProcess: Sendable {
    let pid: pid_t
    let output: String

    /// Starts `executable` with `arguments` in `directory`, with exactly `environment`.
    static func spawn(_ executable: String, _ arguments: [String], environment: [String: String], directory: String? = nil, output: String) throws -> ChildProcess {
        var program = executable
        var argv = [executable] + arguments
        if let directory {
            // `env -C` changes directory before it execs the program.
            program = "/usr/bin/env"
            argv = ["env", "-C", directory, executable] + arguments
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let cArguments = argv.map { strdup($0) } + [nil]
        let cEnvironment = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            cArguments.forEach { free($0) }
            cEnvironment.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, program, &actions, nil, cArguments, cEnvironment)
        guard result == 0 else { throw GantryError(.configuration, "cannot start \(executable): errno \(result)") }
        return ChildProcess(pid: pid, output: output)
    }

    /// Waits for the process to exit (killing it after `timeout`) and returns its exit status
    /// (128 + signal when a signal ended it) and what it wrote.
    func wait(timeout: Duration) async throws -> (status: Int32, output: String) {
        let deadline = ContinuousClock.now + timeout
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            if ContinuousClock.now >= deadline {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                throw GantryError(.timeout, "process \(pid) did not finish within \(timeout); its output:\n\(text)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        let exit = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        return (exit, text)
    }

    private var text: String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }
}

/// Debian's chromium, headless.
enum Chromium {
    static let path = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Starts chromium on `url` with `arguments` (e.g. `--dump-dom`).
    static func start(_ url: String, _ arguments: [String]) throws -> Run {
        guard let path else {
            throw GantryError(.configuration, "chromium is not installed; ops/bootstrap installs it (apt-get install chromium)")
        }
        let profile = FileManager.default.temporaryDirectory.appendingPathComponent("gantry-chromium-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: profile, withIntermediateDirectories: true)
        let dom = profile.appendingPathComponent("dom.html").path
        // The DOM goes to its own file (through a shell redirect); chromium's chatter to another.
        let script = "exec \"$0\" \"$@\" >\(dom) 2>/dev/null"
        let process = try ChildProcess.spawn(
            "/bin/sh", ["-c", script, path, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--user-data-dir=\(profile.path)"] + arguments + [url],
            environment: ProcessInfo.processInfo.environment, output: profile.appendingPathComponent("chromium.log").path
        )
        return Run(process: process, dom: dom, profile: profile)
    }

    /// A running chromium.
    struct Run: Sendable {
        let process: ChildProcess
        let dom: String
        let profile: URL

        /// Waits for chromium to exit (killing it after `timeout`) and returns the DOM it printed.
        func finish(timeout: Duration = .seconds(60)) async throws -> String {
            defer { try? FileManager.default.removeItem(at: profile) }
            let (status, _) = try await process.wait(timeout: timeout)
            guard status == 0 else { throw GantryError(.taskFailed, "chromium exited with status \(status)") }
            return try String(contentsOfFile: dom, encoding: .utf8)
        }
    }

    /// The DOM of `url` after it loaded.
    static func dumpDOM(_ url: String, _ extra: [String] = []) async throws -> String {
        try await start(url, extra + ["--dump-dom"]).finish()
    }
}

/// What a dumped DOM says about its elements.
enum DOM {
    /// The attributes of every start tag named `tag` that has attribute `having`.
    static func elements(_ html: String, tag: String, having: String) -> [[String: String]] {
        let pattern = try! NSRegularExpression(pattern: "<\(tag)\\b([^>]*)>", options: [])
        let attribute = try! NSRegularExpression(pattern: "([a-zA-Z_:][-a-zA-Z0-9_:.]*)=\"([^\"]*)\"", options: [])
        var found: [[String: String]] = []
        let range = NSRange(html.startIndex..., in: html)
        for match in pattern.matches(in: html, range: range) {
            let body = String(html[Range(match.range(at: 1), in: html)!])
            var attributes: [String: String] = [:]
            for pair in attribute.matches(in: body, range: NSRange(body.startIndex..., in: body)) {
                attributes[String(body[Range(pair.range(at: 1), in: body)!])] = String(body[Range(pair.range(at: 2), in: body)!])
            }
            if attributes[having] != nil { found.append(attributes) }
        }
        return found
    }

    /// `data-state` by `data-stage` of the `tag` elements.
    static func stageStates(_ html: String, tag: String) -> [String: String] {
        Dictionary(elements(html, tag: tag, having: "data-stage").map { ($0["data-stage"]!, $0["data-state"] ?? "") }, uniquingKeysWith: { first, _ in first })
    }

    /// The text inside the element with `id`, if it has no child elements.
    static func text(_ html: String, id: String) -> String? {
        let pattern = try! NSRegularExpression(pattern: "id=\"\(id)\"[^>]*>([^<]*)<", options: [])
        guard let match = pattern.firstMatch(in: html, range: NSRange(html.startIndex..., in: html)) else { return nil }
        return String(html[Range(match.range(at: 1), in: html)!])
    }
}
