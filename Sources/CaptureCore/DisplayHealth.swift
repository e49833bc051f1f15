import CustosBase
import Logging
import Synchronization

/// The X display's availability as every capture path of the process sees it (screen and
/// keystrokes), logged through `RepeatedErrorLog`s, one per kind of problem: a missing server,
/// a refused cookie or a lost connection is logged once however many paths and retries hit it
/// (two paths failing with different kinds in turn do not alternate into a flood), and the
/// recovery once, by whichever path connects first. Another kind of problem (say the server
/// comes up but refuses the cookie) is logged once too.
///
/// Thread-safe (the screen capture thread and the keystroke record thread share one).
public final class DisplayHealth: Sendable {
    private let logs: [DisplayProblem: RepeatedErrorLog] = [
        .noServer: RepeatedErrorLog(), .authorizationRefused: RepeatedErrorLog(), .lost: RepeatedErrorLog(),
        .badName: RepeatedErrorLog(),
    ]
    private let logger: Logger
    private let current = Mutex<CaptureError?>(nil)

    public init(logger: Logger) {
        self.logger = logger
    }

    /// The display problem in force, or nil when the last attempt connected.
    public var problem: CaptureError? { current.withLock { $0 } }

    /// Records a failure to open or keep the display (`CaptureError.displayUnavailable`): logged
    /// once per kind of problem (`DisplayProblem`), at warning for a lost connection, else error.
    public func failed(_ error: CaptureError) {
        current.withLock { $0 = error }
        let kind = error.problem ?? .noServer
        logs[kind]!.failure("X display unavailable; capture paused, retrying with backoff: \(error.message)",
                            key: "display.\(kind.rawValue)", level: kind == .lost ? .warning : .error,
                            metadata: ["capture.problem": "\(kind.rawValue)"], logger: logger)
    }

    /// Records a successful connection to `display`; logs the recovery once after failures.
    public func connected(_ display: String) {
        current.withLock { $0 = nil }
        let repeats = logs.values.compactMap { $0.recovered() }
        guard !repeats.isEmpty else { return }
        logger.notice("X display \(display) is available; capture resumed",
                      metadata: ["capture.display": "\(display)", "repeats": "\(repeats.reduce(0, +))"])
    }
}
