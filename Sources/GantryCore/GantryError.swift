/// The one error type Gantry throws.
///
/// The ``code`` says what class of problem it is and is stable for programs to match on;
/// ``message`` says, for a person, which thing is wrong and how to fix it.
public struct GantryError: Error, Sendable, CustomStringConvertible {
    /// A stable, extensible classification of a ``GantryError``.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidPipeline
            case invalidEnvelope
            case invalidArgument
            case unknownTask
            case payloadTooLarge
            case connectionFailed
            case commandFailed
            case timeout
            case staleEpoch
            case notFound
            case taskFailed
            case configuration
            case protocolError
            case cancelled
            case closed
            case signatureInvalid
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A pipeline spec that cannot be run: bad YAML, unknown field, cycle, unknown dependency.
        public static let invalidPipeline = Code(.invalidPipeline)
        /// A message on the broker that is not a valid task envelope.
        public static let invalidEnvelope = Code(.invalidEnvelope)
        /// A value passed to an API that it does not accept.
        public static let invalidArgument = Code(.invalidArgument)
        /// A task name the worker has no function for.
        public static let unknownTask = Code(.unknownTask)
        /// A payload or result over the configured size limit.
        public static let payloadTooLarge = Code(.payloadTooLarge)
        /// A server (Redis, RabbitMQ, Kafka) could not be reached or dropped the connection.
        public static let connectionFailed = Code(.connectionFailed)
        /// A server answered a command with an error.
        public static let commandFailed = Code(.commandFailed)
        /// An operation did not finish within its deadline.
        public static let timeout = Code(.timeout)
        /// A write was refused because the caller no longer holds the current epoch.
        public static let staleEpoch = Code(.staleEpoch)
        /// A run, stage or key that does not exist.
        public static let notFound = Code(.notFound)
        /// A task function reported a failure.
        public static let taskFailed = Code(.taskFailed)
        /// Configuration that is missing or inconsistent.
        public static let configuration = Code(.configuration)
        /// A peer spoke something other than the expected protocol.
        public static let protocolError = Code(.protocolError)
        /// The work was cancelled.
        public static let cancelled = Code(.cancelled)
        /// The connection, consumer or pool was already closed.
        public static let closed = Code(.closed)
        /// A message signature is missing, unknown or does not match.
        public static let signatureInvalid = Code(.signatureInvalid)

        public var description: String { base.rawValue }
    }

    /// What class of problem this is.
    public var code: Code
    /// Which thing is wrong and how to fix it.
    public var message: String
    /// The error that caused this one, if any.
    public var underlying: (any Error)?
    /// Whether trying the same operation again may succeed (a dropped connection, a timeout).
    public var isRetriable: Bool

    /// Creates an error.
    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil, isRetriable: Bool? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
        self.isRetriable = isRetriable ?? Self.defaultRetriable(code)
    }

    private static func defaultRetriable(_ code: Code) -> Bool {
        code == .connectionFailed || code == .timeout
    }

    public var description: String {
        if let underlying {
            return "\(code): \(message) (caused by: \(underlying))"
        }
        return "\(code): \(message)"
    }
}
