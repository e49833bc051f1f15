import Logging
import Synchronization

/// The one "log a repeated error once, and its recovery once" mechanism.
///
/// A failure is identified by its message with every run of digits replaced by `#` (so sizes, counts,
/// delays and errnos do not make a new failure) or by an explicit key. The first failure of a
/// kind is logged at `level`; repeats of the same kind are logged at debug and counted; the
/// first success after a failure logs the recovery once at notice with the number of repeats.
/// Thread-safe.
public final class RepeatedErrorLog: Sendable {
    private let state = Mutex<(key: String?, repeats: Int, message: String?)>((nil, 0, nil))

    public init() {}

    /// The key of `message`: every run of digits replaced by one `#` (so `0 ms` and `250 ms` match).
    public static func key(of message: String) -> String {
        var key = ""
        for c in message {
            if c.isNumber {
                if key.last != "#" { key.append("#") }
            } else {
                key.append(c)
            }
        }
        return key
    }

    /// Records a failure; whether it starts a new kind of failure (then it should be logged loudly).
    public func isNew(_ message: String, key: String? = nil) -> Bool {
        let k = key ?? Self.key(of: message)
        return state.withLock { s in
            s.message = message
            if s.key == k { s.repeats += 1; return false }
            s = (k, 0, message)
            return true
        }
    }

    /// Whether the last attempt failed (no success since).
    public var isFailing: Bool { state.withLock { $0.key != nil } }

    /// The last failure's message while failing, else nil.
    public var lastMessage: String? { state.withLock { $0.key == nil ? nil : $0.message } }

    /// Records a success: the number of repeats not logged loudly when a failure was in
    /// progress (then the recovery should be logged), else nil.
    public func recovered() -> Int? {
        state.withLock { s in
            guard s.key != nil else { return nil }
            defer { s = (nil, 0, nil) }
            return s.repeats
        }
    }

    /// Records a failure and logs it: at `level` when new, at debug when a repeat.
    /// `message` must already be safe for a log line (escape outside text with ``SafeText``).
    public func failure(_ message: String, key: String? = nil, level: Logger.Level = .error,
                        metadata: Logger.Metadata = [:], logger: Logger) {
        if isNew(message, key: key) {
            logger.log(level: level, "\(message)", metadata: metadata)
        } else {
            logger.debug("\(message) (again)", metadata: metadata)
        }
    }

    /// Records a success and, when a failure was in progress, logs `message` once at notice
    /// with `repeats` in the metadata. Returns whether it logged.
    @discardableResult
    public func success(_ message: @autoclosure () -> String, metadata: Logger.Metadata = [:], logger: Logger) -> Bool {
        guard let repeats = recovered() else { return false }
        var m = metadata
        m["repeats"] = "\(repeats)"
        logger.notice("\(message())", metadata: m)
        return true
    }
}
