import AsyncHTTPClient
import Foundation
import GantryCore

/// The `http` built-in task: one HTTP request, its response as a JSON object.
///
/// Arguments (the stage's `args`):
///
/// | arg | meaning | default |
/// |---|---|---|
/// | `url` | the URL to request | the task's input, as text |
/// | `method` | `GET`, `POST`, `PUT`, … | `POST` when a body is sent, else `GET` |
/// | `headers` | a mapping of header names to values | none |
/// | `timeout` | for the whole request, head and body (`5s`) | `tasks.http_timeout` |
///
/// When `args.url` is given the input is the request body (none when the input is empty or the
/// method is `GET` or `HEAD`). The result is `{"status", "headers", "body", "base64"}`:
/// `headers` maps lower-case names to values (repeated headers joined with `, `); `body` is
/// the response body as text when it is UTF-8, else base64 with `base64: true`.
///
/// Failures: a 5xx or 429 answer, a refused or dropped connection and a timeout are retriable
/// (the stage's retry policy applies); any other 4xx answer, a malformed URL and a response
/// over `tasks.http_max_response_bytes` are not.
public enum HTTPTask {
    /// Runs the request `input` and `args` describe with `client`.
    public static func run(input: [UInt8], args: JSONValue, client: HTTPTaskClient, configuration: BuiltinTaskConfiguration) async throws -> [UInt8] {
        let request = try Request(input: input, args: args, defaultTimeout: configuration.httpTimeout)
        let limit = configuration.httpMaxResponseBytes
        let http = try client.client()
        // The client's deadline comes first and says why (a refused connection, a slow head);
        // this one, a little later, also bounds reading the body.
        return try await withDeadline(request.timeout + .milliseconds(250), request) {
            do {
                // The client's own deadline ends a wait for a connection with the last connect
                // error (refused, unreachable) rather than a bare timeout.
                let response = try await http.execute(request.client, timeout: .nanoseconds(Int64(request.timeout.seconds * 1e9)))
                let status = Int(response.status.code)
                var headers: [String: String] = [:]
                for (name, value) in response.headers {
                    let key = name.lowercased()
                    headers[key] = headers[key].map { "\($0), \(value)" } ?? value
                }
                if let declared = headers["content-length"].flatMap(Int.init), declared > limit {
                    throw tooLarge(request, limit: limit, detail: "it declares \(declared) bytes")
                }
                var body: [UInt8] = []
                for try await chunk in response.body {
                    guard body.count + chunk.readableBytes <= limit else {
                        throw tooLarge(request, limit: limit, detail: "it sent more")
                    }
                    body.append(contentsOf: chunk.readableBytesView)
                }
                if status == 429 || status >= 500 {
                    throw GantryError(.taskFailed, "http: \(request.summary) answered \(status)\(excerpt(body)); will retry per the stage's retry policy", isRetriable: true)
                }
                if (400..<500).contains(status) {
                    throw GantryError(.taskFailed, "http: \(request.summary) answered \(status)\(excerpt(body)); fix the request (not retried)", isRetriable: false)
                }
                var object: [String: JSONValue] = ["status": .int(Int64(status)), "headers": .object(headers.mapValues(JSONValue.string))]
                if let text = String(validating: body, as: UTF8.self) {
                    object["body"] = .string(text)
                    object["base64"] = .bool(false)
                } else {
                    object["body"] = .string(Data(body).base64EncodedString())
                    object["base64"] = .bool(true)
                }
                return JSONValue.object(object).jsonBytes
            } catch let error as GantryError {
                throw error
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                throw classify(error, request)
            }
        }
    }

    /// A request as the task's input and arguments describe it.
    struct Request {
        var client: HTTPClientRequest
        var summary: String
        var timeout: Duration

        init(input: [UInt8], args: JSONValue, defaultTimeout: Duration) throws {
            let url: String
            var body: [UInt8] = []
            if let given = args["url"] {
                guard let text = given.stringValue, !text.isEmpty else {
                    throw GantryError(.invalidArgument, "http: args.url must be a URL text like https://example.com/path, got \(given)")
                }
                url = text
                body = input
            } else {
                url = String(decoding: input, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                guard !url.isEmpty else {
                    throw GantryError(.invalidArgument, "http: no URL: set args.url in the stage or pass the URL as the task's input")
                }
            }
            guard let parsed = URL(string: url), let scheme = parsed.scheme?.lowercased(), ["http", "https"].contains(scheme), parsed.host?.isEmpty == false else {
                throw GantryError(.invalidArgument, "http: '\(url.prefix(200))' is not an http:// or https:// URL with a host")
            }
            let method: String
            if let given = args["method"] {
                guard let text = given.stringValue?.uppercased(), !text.isEmpty, text.allSatisfy({ $0.isLetter }) else {
                    throw GantryError(.invalidArgument, "http: args.method must be a method name like GET or POST, got \(given)")
                }
                method = text
            } else {
                method = body.isEmpty ? "GET" : "POST"
            }
            if method == "GET" || method == "HEAD" { body = [] }
            var request = HTTPClientRequest(url: url)
            request.method = .init(rawValue: method)
            if let headers = args["headers"] {
                guard let object = headers.objectValue else {
                    throw GantryError(.invalidArgument, "http: args.headers must be a mapping of header names to values, got \(headers)")
                }
                for (name, value) in object.sorted(by: { $0.key < $1.key }) {
                    let text: String
                    switch value {
                    case .string(let string): text = string
                    case .int, .double, .bool: text = value.jsonString
                    default: throw GantryError(.invalidArgument, "http: header '\(name)' must be text or a number, got \(value)")
                    }
                    request.headers.add(name: name, value: text)
                }
            }
            if !body.isEmpty { request.body = .bytes(body) }
            client = request
            summary = "\(method) \(url.prefix(200))"
            if let given = args["timeout"] {
                timeout = try BuiltinTasks.durationArgument(given, name: "timeout", default: defaultTimeout)
                guard timeout > .zero else { throw GantryError(.invalidArgument, "http: args.timeout must be positive, got \(given)") }
            } else {
                timeout = defaultTimeout
            }
        }
    }

    private static func tooLarge(_ request: Request, limit: Int, detail: String) -> GantryError {
        GantryError(.payloadTooLarge, "http: the response to \(request.summary) is over the limit of \(limit) bytes (\(detail)); raise tasks.http_max_response_bytes or fetch less", isRetriable: false)
    }

    /// A short, printable start of a response body for error messages.
    private static func excerpt(_ body: [UInt8]) -> String {
        guard !body.isEmpty else { return "" }
        let text = String(decoding: body.prefix(300), as: UTF8.self)
            .map { $0.isNewline ? " " : $0 }
        return ": " + String(text) + (body.count > 300 ? "…" : "")
    }

    /// Errors from the client: a malformed request is permanent; anything on the way (connect,
    /// reset, TLS, timeouts) may pass, so it is retriable.
    private static func classify(_ error: any Error, _ request: Request) -> GantryError {
        if let client = error as? HTTPClientError {
            switch client {
            case .invalidURL, .emptyHost, .emptyScheme, .traceRequestWithBody, .redirectLimitReached, .redirectCycleDetected:
                return GantryError(.invalidArgument, "http: \(request.summary) cannot be sent: \(client)", underlying: error, isRetriable: false)
            case .deadlineExceeded, .readTimeout, .writeTimeout, .connectTimeout, .tlsHandshakeTimeout, .getConnectionFromPoolTimeout:
                return timedOut(request, underlying: error)
            case .alreadyShutdown:
                return GantryError(.closed, "http: this worker is stopping and its HTTP client is closed; the task goes back to the queue", underlying: error, isRetriable: true)
            default:
                break
            }
        }
        return GantryError(.connectionFailed, "http: \(request.summary) failed: \(error)", underlying: error, isRetriable: true)
    }

    private static func timedOut(_ request: Request, underlying: (any Error)? = nil) -> GantryError {
        GantryError(.timeout, "http: \(request.summary) did not finish within \(request.timeout.shortDescription) (args.timeout or tasks.http_timeout)", underlying: underlying, isRetriable: true)
    }

    /// Runs `body`, failing with a retriable `.timeout` after `limit`.
    private static func withDeadline<T: Sendable>(_ limit: Duration, _ request: Request, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else {
                throw timedOut(request)
            }
            return value
        }
    }
}
