import Logging
import Synchronization

/// Collects log records in memory, one capture per test (swift-log's advice: never bootstrap the
/// global logging system in tests). Each record is kept with its level as
/// `"LEVEL MESSAGE key=value …"` (metadata sorted by key). Thread-safe.
public final class LogCapture: Sendable {
    private let records = Mutex<[(level: Logger.Level, line: String)]>([])

    public init() {}

    /// A logger writing into this capture, at `level` and above.
    public func logger(_ label: String, level: Logger.Level = .debug) -> Logger {
        var l = Logger(label: label) { _ in Handler(capture: self) }
        l.logLevel = level
        return l
    }

    /// Every line, oldest first.
    public var all: [String] { records.withLock { $0.map(\.line) } }
    /// The lines joined by newlines.
    public var text: String { all.joined(separator: "\n") }
    /// The lines at `level` or above.
    public func lines(atLeast level: Logger.Level) -> [String] {
        records.withLock { $0.filter { $0.level >= level }.map(\.line) }
    }
    /// The lines at exactly `level`.
    public func lines(at level: Logger.Level) -> [String] {
        records.withLock { $0.filter { $0.level == level }.map(\.line) }
    }
    public func contains(_ s: String) -> Bool { records.withLock { $0.contains { $0.line.contains(s) } } }
    public func count(_ s: String) -> Int { records.withLock { $0.filter { $0.line.contains(s) }.count } }

    fileprivate func append(_ level: Logger.Level, _ line: String) { records.withLock { $0.append((level, line)) } }

    private struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { _, new in new }
            let meta = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            capture.append(event.level, "\(event.level) \(event.message) \(meta)")
        }
    }
}
