import GantryCore

extension GantryError {
    /// `error` as a `GantryError`: itself, `.cancelled` for a `CancellationError`, otherwise a
    /// `.connectionFailed` naming `operation`.
    static func wrapping(_ error: any Error, during operation: String) -> GantryError {
        if let error = error as? GantryError { return error }
        if error is CancellationError { return GantryError(.cancelled, "\(operation) was cancelled", underlying: error) }
        return GantryError(.connectionFailed, "\(operation) failed: \(error)", underlying: error)
    }

    /// A lost connection, or one closed under the caller: the same operation may work on a new
    /// connection. `AMQPClient` reports both as retriable.
    var isConnectionLoss: Bool {
        (code == .connectionFailed || code == .closed) && isRetriable
    }
}
