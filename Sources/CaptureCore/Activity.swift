import CaptureFormat
import Foundation

/// What an activity source sees at one moment.
public struct ActivityObservation: Sendable, Equatable {
    /// The focused top-level window (`WindowIdentity.none` for none, e.g. the root).
    public var focus: WindowIdentity
    /// A number that changes when the focus moves to another window, even one with the same
    /// class and title (X11: the window id).
    public var focusID: UInt
    /// Time since the last user input, ms; nil when the display cannot tell (no screen saver
    /// extension): no active/idle periods then.
    public var idleMs: Int64?

    public init(focus: WindowIdentity, focusID: UInt, idleMs: Int64?) {
        self.focus = focus
        self.focusID = focusID
        self.idleMs = idleMs
    }
}

/// Focus and idle time of one session, read on demand (pull, like `FrameSource`: the pipeline
/// asks every `ActivityTimeline.pollInterval` on its own thread). Not thread-safe.
public protocol ActivitySource: AnyObject {
    /// The focus and idle time now.
    /// - Throws: `CaptureError.displayUnavailable` while the display is down (reported to the
    ///   source's `DisplayHealth`; it reconnects with backoff on a later call).
    func observe(now: Date) throws -> ActivityObservation
}

/// Turns observations into closed periods (`ActivityPeriod`): one focus period per window
/// that had the focus, and active/idle periods by the idle threshold. Backend-neutral.
///
/// Idle time is measured from the last input: once an observation shows `idleMs` of at least
/// the threshold, the active period ends and the idle one begins at the last input
/// (`now − idleMs`), so both ends are exact to the input, not to the poll; input after that
/// (a smaller `idleMs`) ends the idle period at its time.
public struct ActivityTimeline: Sendable {
    /// How often the pipeline observes (ms): the precision of focus period ends.
    public static let pollIntervalMs = 500

    public let idleThresholdMs: Int64
    private struct Open: Sendable {
        var period: ActivityPeriod
        var focusID: UInt = 0
    }
    private var focus: Open?
    private var presence: Open?

    public init(idleThresholdMs: Int64) {
        self.idleThresholdMs = idleThresholdMs
    }

    /// Feeds one observation at `timeMs`; returns the periods it closed that lasted (a period
    /// of 0 ms, e.g. the active one when the user is already idle at the first observation, is
    /// dropped). `excluded`: whether the rules exclude the focused window (its title is then not kept).
    public mutating func observe(_ o: ActivityObservation, timeMs: Int64, excluded: Bool) -> [ActivityPeriod] {
        observeAll(o, timeMs: timeMs, excluded: excluded).filter { $0.endMs > $0.startMs }
    }

    private mutating func observeAll(_ o: ActivityObservation, timeMs: Int64, excluded: Bool) -> [ActivityPeriod] {
        var closed: [ActivityPeriod] = []
        let title = excluded ? "" : o.focus.title
        if let open = focus, open.focusID == o.focusID, open.period.wmClass == o.focus.wmClass,
           open.period.windowTitle == title, (open.period.excluded ?? false) == excluded {
            // Same window, same title: goes on.
        } else {
            if var open = focus {
                open.period.endMs = max(open.period.startMs, timeMs)
                closed.append(open.period)
            }
            focus = Open(period: ActivityPeriod(type: .focus, startMs: timeMs, endMs: timeMs, wmClass: o.focus.wmClass,
                                                windowTitle: title, excluded: excluded ? true : nil),
                         focusID: o.focusID)
        }
        guard let idleMs = o.idleMs else { return closed }
        let lastInput = max(timeMs - idleMs, presence?.period.startMs ?? Int64.min)
        let idle = idleMs >= idleThresholdMs
        let kind: ActivityPeriod.Kind = idle ? .idle : .active
        if var open = presence {
            if open.period.type != kind {
                // Active → idle begins at the last input; idle → active at the new input.
                let cut = max(open.period.startMs, min(lastInput, timeMs))
                open.period.endMs = cut
                closed.append(open.period)
                presence = Open(period: ActivityPeriod(type: kind, startMs: cut, endMs: cut))
            }
        } else {
            // The first observation: an idle user has been idle since the last input, but no
            // period starts before recording does.
            presence = Open(period: ActivityPeriod(type: kind, startMs: timeMs, endMs: timeMs))
        }
        return closed
    }

    /// Closes the open periods at `timeMs` as going on (`continues`) and reopens them there:
    /// for sealing a chunk while the focus and presence stay.
    public mutating func cut(timeMs: Int64) -> [ActivityPeriod] {
        var closed: [ActivityPeriod] = []
        for keyPath in [\ActivityTimeline.focus, \ActivityTimeline.presence] {
            guard var open = self[keyPath: keyPath], timeMs > open.period.startMs else { continue }
            var done = open.period
            done.endMs = timeMs
            done.continues = true
            closed.append(done)
            open.period.startMs = timeMs
            open.period.endMs = timeMs
            self[keyPath: keyPath] = open
        }
        return closed
    }

    /// Closes every open period at `timeMs` (recording stops, the display went away).
    public mutating func finish(timeMs: Int64) -> [ActivityPeriod] {
        var closed: [ActivityPeriod] = []
        for open in [focus, presence].compactMap({ $0 }) where timeMs > open.period.startMs {
            var done = open.period
            done.endMs = timeMs
            closed.append(done)
        }
        focus = nil
        presence = nil
        return closed
    }
}
