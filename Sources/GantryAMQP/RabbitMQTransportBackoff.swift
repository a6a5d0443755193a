import GantryCore

/// The waits between connection attempts of one reconnect: doubling from the configured start
/// to the configured maximum, with jitter, and a give-up deadline.
struct RabbitMQTransportBackoff {
    private var delay: Duration
    private let maximum: Duration
    private let deadline: ContinuousClock.Instant?

    init(_ configuration: RabbitMQTransportConfiguration, startedAt start: ContinuousClock.Instant = .now) {
        delay = configuration.reconnectBackoffInitial
        maximum = configuration.reconnectBackoffMax
        deadline = configuration.reconnectTimeout.map { start + $0 }
    }

    /// The wait before the next attempt, or nil when that attempt would start past the deadline.
    mutating func next() -> Duration? {
        // Half fixed, half random: workers that lost the same broker do not all come back at
        // the same instant.
        let wait = delay / 2 + delay / 2 * Double.random(in: 0...1)
        delay = min(delay * 2, maximum)
        if let deadline, ContinuousClock.now + wait > deadline { return nil }
        return wait
    }

    /// Whether the give-up deadline has passed.
    var expired: Bool {
        deadline.map { ContinuousClock.now >= $0 } ?? false
    }
}
