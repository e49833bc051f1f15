import Foundation

/// One period of the activity timeline: a window had the focus, or the user was active or
/// idle (docs/CAPTURE.md "Activity"). Times are ms since the Unix epoch (UTC).
public struct ActivityPeriod: Codable, Sendable, Equatable {
    /// What the period is.
    public enum Kind: String, Codable, Sendable, CaseIterable {
        /// A top-level window had the keyboard focus.
        case focus
        /// Input came at most `idleThresholdMs` apart.
        case active
        /// No input for at least `idleThresholdMs` (from the last input on).
        case idle
    }

    public var type: Kind
    public var startMs: Int64
    public var endMs: Int64
    /// For `focus`: the window's `WM_CLASS` as "instance.class" ("" when it has none).
    public var wmClass: String?
    /// For `focus`: the window's title; "" for an excluded window (exclude-window-*), whose
    /// title is not recorded.
    public var windowTitle: String?
    /// For `focus`: true when the window is excluded (exclude-window-*).
    public var excluded: Bool?
    /// True when the period went on after `endMs`: it was cut where its chunk was sealed and the
    /// next chunk continues it with `startMs` equal to this `endMs`.
    public var continues: Bool?

    public init(type: Kind, startMs: Int64, endMs: Int64, wmClass: String? = nil, windowTitle: String? = nil,
                excluded: Bool? = nil, continues: Bool? = nil) {
        self.type = type
        self.startMs = startMs
        self.endMs = endMs
        self.wmClass = wmClass
        self.windowTitle = windowTitle
        self.excluded = excluded
        self.continues = continues
    }

    /// Whether `next` is this period going on (same type and window, starting where this one was cut).
    public func isContinued(by next: ActivityPeriod) -> Bool {
        continues == true && next.type == type && next.startMs == endMs && next.wmClass == wmClass
            && next.windowTitle == windowTitle && next.excluded == excluded
    }
}

/// The activity timeline of one stretch of time, sealed as kind `activity`: focus periods and
/// active/idle periods, each in time order. UTF-8 JSON with sorted keys (docs/CAPTURE.md).
public struct ActivityChunk: Codable, Sendable, Equatable {
    /// The stretch of time the chunk covers, ms since the epoch.
    public var startMs: Int64
    public var endMs: Int64
    /// The `idle-threshold-seconds` in force, in ms.
    public var idleThresholdMs: Int64
    public var periods: [ActivityPeriod]

    public init(startMs: Int64, endMs: Int64, idleThresholdMs: Int64, periods: [ActivityPeriod]) {
        self.startMs = startMs
        self.endMs = endMs
        self.idleThresholdMs = idleThresholdMs
        self.periods = periods
    }

    /// The chunk as UTF-8 JSON with sorted keys.
    public func encoded() -> Data { canonicalJSON(self) }

    /// Decodes a chunk made by `encoded()`.
    /// - Throws: `CaptureFormatError` when the bytes are not an activity chunk's JSON or a
    ///   period ends before it starts.
    public static func decode(_ data: Data) throws -> ActivityChunk {
        let chunk: ActivityChunk
        do {
            chunk = try JSONDecoder().decode(ActivityChunk.self, from: data)
        } catch {
            throw CaptureFormatError("activity chunk: not ActivityChunk JSON (\(error))")
        }
        if let bad = chunk.periods.firstIndex(where: { $0.endMs < $0.startMs }) {
            throw CaptureFormatError("activity chunk: period \(bad) ends before it starts")
        }
        return chunk
    }
}
