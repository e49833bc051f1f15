/// Exponential backoff with jitter: the one schedule used by every retry loop (upload,
/// spool release, X display reconnect, keystroke reconnect).
///
/// The delay after `n` consecutive failures (n ≥ 1) is `min(cap, initial × 2^(n−1))` times a
/// random factor in `jitter` (default ½…1, "equal jitter" as in the AWS Architecture Blog's
/// "Exponential Backoff and Jitter"), so a fleet that failed together does not retry together.
public struct Backoff: Sendable, Equatable {
    /// Delay after the first failure.
    public var initial: Duration
    /// Longest delay.
    public var cap: Duration
    /// Random factor applied to each delay; `1...1` turns jitter off (tests).
    public var jitter: ClosedRange<Double>

    public init(initial: Duration, cap: Duration, jitter: ClosedRange<Double> = 0.5...1.0) {
        precondition(initial > .zero && cap >= initial && jitter.lowerBound > 0 && jitter.upperBound <= 1)
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
    }

    /// The delay before the next attempt after `failures` consecutive failures (values < 1 count as 1).
    public func delay(afterFailures failures: Int) -> Duration {
        let exponent = min(max(failures - 1, 0), 40)
        var base = initial
        for _ in 0..<exponent where base < cap { base = base * 2 }
        let capped = min(base, cap)
        return jitter.lowerBound == jitter.upperBound ? capped * jitter.lowerBound : capped * Double.random(in: jitter)
    }

    /// The delay in whole milliseconds (for clocks kept in ms).
    public func delayMs(afterFailures failures: Int) -> Int64 {
        let d = delay(afterFailures: failures)
        return d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
    }
}

/// A retry loop's failure count and next delay, over ``Backoff``. Not thread-safe: one owner.
public struct RetrySchedule: Sendable {
    public let backoff: Backoff
    /// Consecutive failures since the last success.
    public private(set) var failures = 0

    public init(_ backoff: Backoff) { self.backoff = backoff }

    /// Counts a failure; returns the delay before the next attempt.
    public mutating func failed() -> Duration {
        failures += 1
        return backoff.delay(afterFailures: failures)
    }

    /// Counts a success (the next failure starts from ``Backoff/initial`` again).
    public mutating func succeeded() { failures = 0 }
}
