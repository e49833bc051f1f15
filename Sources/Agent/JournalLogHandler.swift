import Foundation
import Logging

/// A swift-log handler writing one line per record to standard error in a form journald
/// reads well: a `<N>` syslog priority prefix (sd-daemon(3)), the level, the message, then
/// the metadata as sorted `dotted.key=value` pairs. Callers never log captured content or
/// key material; this handler adds nothing but what it is given.
public struct JournalLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let label: String

    public init(label: String, level: Logger.Level = .info) {
        self.label = label
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let explicit = event.metadata { all.merge(explicit) { _, new in new } }
        if let error = event.error, all["error"] == nil { all["error"] = "\(error)" }
        let level = event.level, message = event.message
        let pairs = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let text = "<\(Self.priority(level))>\(level): \(message)\(pairs.isEmpty ? "" : " " + pairs)\n"
        FileHandle.standardError.write(Data(text.utf8))
    }

    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }
}
