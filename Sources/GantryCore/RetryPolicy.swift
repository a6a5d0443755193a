/// How often and how soon a failed task is tried again.
///
/// The wait before attempt `n + 1` is `initialBackoff × multiplier^(n-1)`, capped at
/// `maxBackoff`, then spread by ± `jitter` (a fraction) so that many tasks failing together do
/// not all come back at the same instant.
public struct RetryPolicy: Hashable, Sendable, Codable {
    /// Total attempts including the first; `1` means never retry. Default 3.
    public var maxAttempts: Int
    /// The wait after the first failure. Default 200 ms.
    public var initialBackoff: Duration
    /// The longest wait between attempts. Default 1 minute.
    public var maxBackoff: Duration
    /// How much longer each wait is than the one before. Default 2.
    public var multiplier: Double
    /// The fraction (0...1) by which each wait is randomly lengthened or shortened. Default 0.2.
    public var jitter: Double

    /// The default policy: 3 attempts, 200 ms doubling up to 1 minute, ±20 % jitter.
    public static let `default` = RetryPolicy()
    /// Run once, never retry.
    public static let never = RetryPolicy(maxAttempts: 1)

    /// Creates a policy, checking that every value is in range.
    public init(
        maxAttempts: Int = 3,
        initialBackoff: Duration = .milliseconds(200),
        maxBackoff: Duration = .seconds(60),
        multiplier: Double = 2,
        jitter: Double = 0.2
    ) {
        self.maxAttempts = maxAttempts
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.multiplier = multiplier
        self.jitter = jitter
    }

    /// Problems with the values, each naming the field and its allowed range; empty when valid.
    public var problems: [String] {
        var result: [String] = []
        if maxAttempts < 1 || maxAttempts > 1000 { result.append("max_attempts must be 1...1000, got \(maxAttempts)") }
        if initialBackoff < .zero { result.append("initial_backoff must not be negative") }
        if maxBackoff < initialBackoff { result.append("max_backoff (\(maxBackoff.shortDescription)) must be at least initial_backoff (\(initialBackoff.shortDescription))") }
        if !(multiplier >= 1 && multiplier <= 100) { result.append("multiplier must be 1...100, got \(multiplier)") }
        if !(jitter >= 0 && jitter <= 1) { result.append("jitter must be 0...1, got \(jitter)") }
        return result
    }

    /// Whether a task that has failed `attempt` times (1-based) may run again.
    public func allowsRetry(afterAttempt attempt: Int) -> Bool {
        attempt < maxAttempts
    }

    /// The wait before the next attempt, without jitter.
    public func baseBackoff(afterAttempt attempt: Int) -> Duration {
        let exponent = Double(max(0, attempt - 1))
        let base = initialBackoff.seconds * pow(multiplier, exponent)
        let capped = min(base, maxBackoff.seconds)
        return .nanoseconds(Int64(capped * 1e9))
    }

    /// The wait before the next attempt, with jitter drawn from `generator`.
    public func backoff(afterAttempt attempt: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        let base = baseBackoff(afterAttempt: attempt).seconds
        let spread = jitter > 0 ? Double.random(in: -jitter...jitter, using: &generator) : 0
        let value = min(max(0, base * (1 + spread)), maxBackoff.seconds)
        return .nanoseconds(Int64(value * 1e9))
    }

    /// The wait before the next attempt, with jitter from the system generator.
    public func backoff(afterAttempt attempt: Int) -> Duration {
        var generator = SystemRandomNumberGenerator()
        return backoff(afterAttempt: attempt, using: &generator)
    }

    private enum CodingKeys: String, CodingKey {
        case maxAttempts = "max_attempts", initialBackoffMs = "initial_backoff_ms", maxBackoffMs = "max_backoff_ms", multiplier, jitter
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            maxAttempts: try container.decode(Int.self, forKey: .maxAttempts),
            initialBackoff: .milliseconds(try container.decode(Int64.self, forKey: .initialBackoffMs)),
            maxBackoff: .milliseconds(try container.decode(Int64.self, forKey: .maxBackoffMs)),
            multiplier: try container.decode(Double.self, forKey: .multiplier),
            jitter: try container.decode(Double.self, forKey: .jitter)
        )
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(maxAttempts, forKey: .maxAttempts)
        try container.encode(initialBackoff.milliseconds, forKey: .initialBackoffMs)
        try container.encode(maxBackoff.milliseconds, forKey: .maxBackoffMs)
        try container.encode(multiplier, forKey: .multiplier)
        try container.encode(jitter, forKey: .jitter)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
