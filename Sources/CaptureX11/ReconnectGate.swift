import CaptureCore
import CustosBase
import Foundation

/// When a polled capture source (frames, activity) may try its X connection again, over the
/// one retry mechanism (``RetrySchedule``): until the delay for the failures in a row has
/// passed, every call answers the last error instead of connecting. A connection lost after
/// working waits the first delay again. Not thread-safe: one owner (a capture thread).
struct ReconnectGate {
    private var retry: RetrySchedule
    private var nextAttempt = Date.distantPast
    /// The error of the last failed or lost connection; nil after a connection is made.
    private(set) var lastError: CaptureError?

    init(_ backoff: Backoff) { retry = RetrySchedule(backoff) }

    /// - Throws: ``lastError`` while the next attempt is not due at `now`.
    func checkDue(now: Date) throws {
        if now < nextAttempt, let lastError { throw lastError }
    }

    /// A connection was made.
    mutating func connected() {
        retry.succeeded()
        lastError = nil
    }

    /// An attempt to connect failed with `error`: the next one waits longer.
    mutating func failed(_ error: CaptureError, now: Date) {
        lastError = error
        let delay = retry.failed()
        nextAttempt = now.addingTimeInterval(Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18)
    }

    /// One connection attempt when it is due. `connect` opens the connection and returns it
    /// with its display's name; success is reported to `health`, and so is a display that
    /// cannot be used (`.displayUnavailable`; other errors are the caller's to report).
    /// - Throws: ``lastError`` while the next attempt is not due; `connect`'s error otherwise.
    mutating func attempt<Connection>(now: Date, health: DisplayHealth,
                                      _ connect: () throws -> (Connection, displayName: String)) throws -> Connection {
        try checkDue(now: now)
        do {
            let (connection, name) = try connect()
            connected()
            health.connected(name)
            return connection
        } catch let error as CaptureError {
            failed(error, now: now)
            if error.code == .displayUnavailable { health.failed(error) }
            throw error
        }
    }

    /// A working connection was lost with `error`: the next attempt after the first delay.
    mutating func lost(_ error: CaptureError, now: Date) {
        retry.succeeded()
        failed(error, now: now)
    }
}
