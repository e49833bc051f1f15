import CaptureCore
import CaptureFormat
import CaptureX11
import Foundation
import TestSupport
import Testing

/// Activity (kind `activity`): the timeline logic on given observations, the X11 source on a
/// real Xvfb (focus through xdotool, idle time through MIT-SCREEN-SAVER), and the payload.
@Suite("Activity")
struct ActivityTests {
    static let alpha = WindowIdentity(instance: "alpha", windowClass: "Xmessage", title: "Alpha")
    static let beta = WindowIdentity(instance: "beta", windowClass: "Xmessage", title: "Beta")

    @Test("timeline: one focus period per window, active/idle split at the last input, cut and finish")
    func timeline() {
        var t = ActivityTimeline(idleThresholdMs: 1000)
        var periods: [ActivityPeriod] = []
        periods += t.observe(ActivityObservation(focus: Self.alpha, focusID: 1, idleMs: 0), timeMs: 10_000, excluded: false)
        periods += t.observe(ActivityObservation(focus: Self.alpha, focusID: 1, idleMs: 200), timeMs: 10_500, excluded: false)
        #expect(periods.isEmpty)
        // Another window (same class, other id and title).
        periods += t.observe(ActivityObservation(focus: Self.beta, focusID: 2, idleMs: 100), timeMs: 11_000, excluded: false)
        #expect(periods == [ActivityPeriod(type: .focus, startMs: 10_000, endMs: 11_000, wmClass: "alpha.Xmessage",
                                           windowTitle: "Alpha")])
        periods = []
        // Idle: the last input was at 11_000 - 100 = 10_900; seen idle at 12_400 (1500 ms): idle from 10_900.
        periods += t.observe(ActivityObservation(focus: Self.beta, focusID: 2, idleMs: 1500), timeMs: 12_400, excluded: false)
        #expect(periods == [ActivityPeriod(type: .active, startMs: 10_000, endMs: 10_900)])
        periods = []
        // Input at 14_000 (seen at 14_300 with idle 300): active again from 14_000.
        periods += t.observe(ActivityObservation(focus: Self.beta, focusID: 2, idleMs: 300), timeMs: 14_300, excluded: false)
        #expect(periods == [ActivityPeriod(type: .idle, startMs: 10_900, endMs: 14_000)])
        // A chunk is sealed at 15_000: the open periods are cut there and go on.
        let cut = t.cut(timeMs: 15_000)
        #expect(cut.count == 2 && cut.allSatisfy { $0.continues == true && $0.endMs == 15_000 })
        #expect(Set(cut.map(\.startMs)) == [11_000, 14_000])
        // An excluded window: its title is not kept.
        let excluded = t.observe(ActivityObservation(focus: Self.alpha, focusID: 1, idleMs: 0), timeMs: 16_000, excluded: true)
        #expect(excluded == [ActivityPeriod(type: .focus, startMs: 15_000, endMs: 16_000, wmClass: "beta.Xmessage",
                                            windowTitle: "Beta")])
        let end = t.finish(timeMs: 17_000)
        #expect(end.contains(ActivityPeriod(type: .focus, startMs: 16_000, endMs: 17_000, wmClass: "alpha.Xmessage",
                                            windowTitle: "", excluded: true)))
        #expect(end.contains(ActivityPeriod(type: .active, startMs: 15_000, endMs: 17_000)))
        #expect(t.finish(timeMs: 18_000).isEmpty)
        #expect(cut[0].isContinued(by: ActivityPeriod(type: cut[0].type, startMs: 15_000, endMs: 16_000,
                                                       wmClass: cut[0].wmClass, windowTitle: cut[0].windowTitle)))
    }

    @Test("timeline: no 0 ms periods: a user whose last input was before recording starts idle, a focus change in the same ms leaves none")
    func noZeroLengthPeriods() {
        var t = ActivityTimeline(idleThresholdMs: 1000)
        var periods: [ActivityPeriod] = []
        // The last input was before recording began (9_500): active at 10_000, idle at 10_500
        // since 9_500, so the active period would end where it started.
        periods += t.observe(ActivityObservation(focus: Self.alpha, focusID: 1, idleMs: 500), timeMs: 10_000, excluded: false)
        periods += t.observe(ActivityObservation(focus: Self.alpha, focusID: 1, idleMs: 1000), timeMs: 10_500, excluded: false)
        #expect(periods.isEmpty, "\(periods)")
        // Input at 10_800: the idle period ends there; a focus change at the same instant twice.
        periods += t.observe(ActivityObservation(focus: Self.beta, focusID: 2, idleMs: 200), timeMs: 11_000, excluded: false)
        periods += t.observe(ActivityObservation(focus: Self.alpha, focusID: 1, idleMs: 200), timeMs: 11_000, excluded: false)
        #expect(periods == [ActivityPeriod(type: .focus, startMs: 10_000, endMs: 11_000, wmClass: "alpha.Xmessage", windowTitle: "Alpha"),
                            ActivityPeriod(type: .idle, startMs: 10_000, endMs: 10_800)], "\(periods)")
        #expect(!periods.contains { $0.endMs == $0.startMs })
    }

    @Test("payload: sorted-key JSON round trip; a period ending before it starts is refused")
    func payload() throws {
        let chunk = ActivityChunk(startMs: 1, endMs: 9, idleThresholdMs: 300_000, periods: [
            ActivityPeriod(type: .focus, startMs: 1, endMs: 5, wmClass: "a.B", windowTitle: "T — ü", continues: true),
            ActivityPeriod(type: .idle, startMs: 2, endMs: 9),
        ])
        let data = chunk.encoded()
        #expect(String(decoding: data, as: UTF8.self).hasPrefix("{\"endMs\":9,\"idleThresholdMs\":300000,\"periods\":[{\"continues\":true,"))
        #expect(try ActivityChunk.decode(data) == chunk)
        #expect(throws: CaptureFormatError.self) { try ActivityChunk.decode(Data("{\"x\":1}".utf8)) }
        var bad = chunk
        bad.periods[1].endMs = 0
        #expect(throws: CaptureFormatError.self) { try ActivityChunk.decode(bad.encoded()) }
    }

    @Test("X11: focus changes give the windows' classes and titles; idle time grows without input and drops with a key")
    func x11FocusAndIdle() throws {
        let xvfb = try keyboardXvfb()
        try requireTool("xmessage")
        let windows = try xvfb.openMessageWindows([("alpha", "Alpha Window"), ("beta", "Beta — Window")])
        defer { windows.close() }
        let (alpha, beta) = (windows.ids[0], windows.ids[1])
        let monitor = X11ActivityMonitor(display: xvfb.name, xauthority: nil, logger: testLogger("activity"),
                                         health: DisplayHealth(logger: testLogger("activity")))
        var timeline = ActivityTimeline(idleThresholdMs: 1000)
        var periods: [ActivityPeriod] = []
        func look() throws -> ActivityObservation {
            let now = Date()
            let o = try monitor.observe(now: now)
            periods += timeline.observe(o, timeMs: Int64(now.timeIntervalSince1970 * 1000), excluded: false)
            return o
        }
        try xvfb.run(["xdotool", "windowfocus", "--sync", alpha])
        let a = try look()
        #expect(a.focus.wmClass == "alpha.Xmessage" && a.focus.title == "Alpha Window" && a.focusID == UInt(alpha)!)
        #expect(a.idleMs != nil)
        try xvfb.run(["xdotool", "key", "a"])
        #expect(try look().idleMs! < 1000)
        // No input for 1.5 s: idle.
        usleep(1_500_000)
        #expect(try look().idleMs! >= 1400)
        try xvfb.run(["xdotool", "key", "b"])
        try xvfb.run(["xdotool", "windowfocus", "--sync", beta])
        let b = try look()
        #expect(b.focus.wmClass == "beta.Xmessage" && b.focus.title == "Beta — Window" && b.idleMs! < 1000)
        usleep(50_000)  // a period that would end where it starts is not kept
        periods += timeline.finish(timeMs: Int64(Date().timeIntervalSince1970 * 1000))
        let focus = periods.filter { $0.type == .focus }
        #expect(focus.map(\.windowTitle) == ["Alpha Window", "Beta — Window"], "\(periods)")
        #expect(periods.filter { $0.type != .focus }.map(\.type) == [.active, .idle, .active], "\(periods)")
        let idle = try #require(periods.first { $0.type == .idle })
        #expect(idle.endMs - idle.startMs >= 1400, "\(idle)")
    }
}
