import CX11
import CaptureCore
import CaptureFormat
import CaptureX11
import Foundation
import TestSupport
import Testing

/// Presses raw keycodes and locks XKB groups through XTest, for the cases xdotool cannot
/// express (xdotool picks keycodes by keysym; "the key labelled Y" is keycode 29).
final class RawKeyboard {
    private let dpy: OpaquePointer
    init(_ xvfb: Xvfb) throws {
        guard let d = XOpenDisplay(xvfb.name) else { throw TestSupportError("cannot open \(xvfb.name)") }
        dpy = d
    }
    deinit { XCloseDisplay(dpy) }
    /// Presses and releases `keycode` while holding `modifiers` (keycodes), in order.
    func tap(_ keycode: UInt32, holding modifiers: [UInt32] = []) {
        for m in modifiers { XTestFakeKeyEvent(dpy, m, 1, 0) }
        XTestFakeKeyEvent(dpy, keycode, 1, 0)
        XTestFakeKeyEvent(dpy, keycode, 0, 0)
        for m in modifiers.reversed() { XTestFakeKeyEvent(dpy, m, 0, 0) }
        XSync(dpy, 0)
    }
    func lockGroup(_ group: UInt32) {
        XkbLockGroup(dpy, UInt32(XkbUseCoreKbd), group)
        XSync(dpy, 0)
    }
}

/// Evdev keycodes (xkeyboard-config "evdev" rules, which Xvfb uses).
enum Key {
    static let q: UInt32 = 24, y: UInt32 = 29, a: UInt32 = 38, one: UInt32 = 10
    static let leftShift: UInt32 = 50, capsLock: UInt32 = 66, rightAlt: UInt32 = 108
}

/// Starts a recorder on `xvfb`, runs `drive`, stops, and returns every chunk.
func record(_ xvfb: Xvfb, idleMs: Int = 10_000, maxKeys: Int = 1000, includeReleases: Bool = false,
            _ drive: (KeystrokeRecorder) throws -> Void) async throws -> [KeystrokeChunk] {
    let recorder = try KeystrokeRecorder(display: xvfb.name, xauthority: nil, idleMs: idleMs, maxKeysPerChunk: maxKeys,
                                         logger: testLogger("keys"), includeReleases: includeReleases)
    try recorder.start()
    do {
        try drive(recorder)
    } catch {
        recorder.stop()
        throw error
    }
    recorder.stop()
    var chunks: [KeystrokeChunk] = []
    for await chunk in recorder.chunks { chunks.append(chunk) }
    return chunks
}

func keyboardXvfb() throws -> Xvfb {
    try requireXTools(["Xvfb", "xdotool", "setxkbmap"])
    return try Xvfb(width: 320, height: 200, depth: 24)
}

@Suite("Keystrokes on a real Xvfb")
struct KeystrokeTests {
    @Test("US layout: text, shifted characters, non-text keys as tokens, BackSpace kept")
    func usLayout() async throws {
        let xvfb = try keyboardXvfb()
        try xvfb.run(["setxkbmap", "us"])
        let chunks = try await record(xvfb) { _ in
            try xvfb.run(["xdotool", "type", "--delay", "5", "Hello, World! [x]"])
            try xvfb.run(["xdotool", "key", "--delay", "5", "Return", "BackSpace", "Tab", "ctrl+c", "alt+Tab", "F5",
                          "shift+Tab", "Escape", "KP_Enter", "space"])
        }
        let text = chunks.map(\.text).joined()
        #expect(text == "Hello, World! [[x][Enter][BackSpace][Tab][Ctrl+c][Alt+Tab][F5][Shift+Tab][Escape][Enter] ")
        #expect(chunks.count == 1)
        let keys = chunks.flatMap(\.keys)
        #expect(keys.allSatisfy { $0.pressed == nil })
        #expect(keys.map(\.timeMs) == keys.map(\.timeMs).sorted())
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        #expect(keys.allSatisfy { abs($0.timeMs - nowMs) < 60_000 })
    }

    @Test("German: AltGr+q gives @, the Y key (keycode 29) gives z")
    func germanLayout() async throws {
        let xvfb = try keyboardXvfb()
        try xvfb.run(["setxkbmap", "de"])
        let raw = try RawKeyboard(xvfb)
        let chunks = try await record(xvfb) { _ in
            try xvfb.run(["xdotool", "key", "ISO_Level3_Shift+q"])
            raw.tap(Key.y)
            raw.tap(Key.q, holding: [Key.rightAlt])
            raw.tap(Key.y, holding: [Key.leftShift])
        }
        #expect(chunks.map(\.text).joined() == "@z@Z")
    }

    @Test("us,de: the group comes from each event, switched mid-typing")
    func groupSwitch() async throws {
        let xvfb = try keyboardXvfb()
        try xvfb.run(["setxkbmap", "-layout", "us,de"])
        let raw = try RawKeyboard(xvfb)
        let chunks = try await record(xvfb) { _ in
            raw.tap(Key.y)                                // us: y
            raw.lockGroup(1)
            raw.tap(Key.y)                                // de: z
            raw.tap(Key.q, holding: [Key.rightAlt])       // de AltGr+q: @
            raw.lockGroup(0)
            raw.tap(Key.y)                                // us: y
            raw.lockGroup(1)
            try xvfb.run(["xdotool", "type", "--delay", "5", "z"])  // de: whatever key gives z
        }
        #expect(chunks.map(\.text).joined() == "yz@yz")
    }

    @Test("Caps Lock upper-cases letters only; Shift+letter under Caps Lock is lower case")
    func capsLock() async throws {
        let xvfb = try keyboardXvfb()
        try xvfb.run(["setxkbmap", "us"])
        let raw = try RawKeyboard(xvfb)
        let chunks = try await record(xvfb) { _ in
            raw.tap(Key.capsLock)
            raw.tap(Key.a)
            raw.tap(Key.one)
            raw.tap(Key.a, holding: [Key.leftShift])
            raw.tap(Key.capsLock)
            raw.tap(Key.a)
        }
        #expect(chunks.map(\.text).joined() == "A1aa")
    }

    @Test("us altgr-intl: AltGr+y gives ü")
    func altgrIntl() async throws {
        let xvfb = try keyboardXvfb()
        try xvfb.run(["setxkbmap", "us", "-variant", "altgr-intl"])
        let raw = try RawKeyboard(xvfb)
        let chunks = try await record(xvfb) { _ in
            try xvfb.run(["xdotool", "key", "ISO_Level3_Shift+y"])
            raw.tap(Key.y, holding: [Key.rightAlt])
            raw.tap(Key.y, holding: [Key.rightAlt, Key.leftShift])
        }
        #expect(chunks.map(\.text).joined() == "üüÜ")
    }

    @Test("characters xdotool types through a temporarily remapped keycode")
    func remappedKeycode() async throws {
        let xvfb = try keyboardXvfb()
        try xvfb.run(["setxkbmap", "us"])
        let chunks = try await record(xvfb) { _ in
            try xvfb.run(["xdotool", "type", "--delay", "20", "añ€b→ж"])
        }
        #expect(chunks.map(\.text).joined() == "añ€b→ж")
    }

    @Test("a keymap change while recording is picked up (setxkbmap de after us)")
    func keymapChangeWhileRecording() async throws {
        let xvfb = try keyboardXvfb()
        try xvfb.run(["setxkbmap", "us"])
        let raw = try RawKeyboard(xvfb)
        let chunks = try await record(xvfb) { _ in
            raw.tap(Key.y)
            try xvfb.run(["setxkbmap", "de"])
            raw.tap(Key.y)
        }
        #expect(chunks.map(\.text).joined() == "yz")
    }

    @Test("one chunk per focused window, with its title and WM_CLASS")
    func windowContext() async throws {
        let xvfb = try keyboardXvfb()
        try requireTool("xmessage")
        let windows = try xvfb.openMessageWindows([("alpha", "Alpha Window"), ("beta", "Beta — Window")])
        defer { windows.close() }
        let (alpha, beta) = (windows.ids[0], windows.ids[1])
        let chunks = try await record(xvfb) { _ in
            try xvfb.run(["xdotool", "windowfocus", "--sync", alpha])
            try xvfb.run(["xdotool", "type", "--delay", "5", "ab"])
            try xvfb.run(["xdotool", "windowfocus", "--sync", beta])
            try xvfb.run(["xdotool", "type", "--delay", "5", "cd"])
        }
        try #require(chunks.count == 2)
        #expect(chunks[0].text == "ab" && chunks[0].windowTitle == "Alpha Window" && chunks[0].wmClass == "alpha.Xmessage")
        #expect(chunks[1].text == "cd" && chunks[1].windowTitle == "Beta — Window" && chunks[1].wmClass == "beta.Xmessage")
        #expect(chunks[0].startMs <= chunks[0].endMs && chunks[0].endMs <= chunks[1].startMs)
    }

    @Test("chunks close at the size limit and after the idle time")
    func chunking() async throws {
        let xvfb = try keyboardXvfb()
        try xvfb.run(["setxkbmap", "us"])
        // Waits are synchronous on purpose: the test checks how keys split into chunks, not
        // when the (cooperatively scheduled) consumer sees them.
        let chunks = try await record(xvfb, idleMs: 300, maxKeys: 3) { _ in
            try xvfb.run(["xdotool", "type", "--delay", "5", "abcde"])
            usleep(900_000)  // > idleMs: "de" closes on idle
            try xvfb.run(["xdotool", "type", "--delay", "5", "f"])
        }
        #expect(chunks.map(\.text) == ["abc", "de", "f"])
    }

    @Test("flush closes the open chunk at once")
    func flush() async throws {
        let xvfb = try keyboardXvfb()
        try xvfb.run(["setxkbmap", "us"])
        let chunks = try await record(xvfb, idleMs: 60_000) { recorder in
            try xvfb.run(["xdotool", "type", "--delay", "5", "gh"])
            usleep(300_000)
            recorder.flush()
            try xvfb.run(["xdotool", "type", "--delay", "5", "i"])
        }
        #expect(chunks.map(\.text) == ["gh", "i"])
    }

    @Test("releases are recorded on request")
    func releases() async throws {
        let xvfb = try keyboardXvfb()
        try xvfb.run(["setxkbmap", "us"])
        let chunks = try await record(xvfb, includeReleases: true) { _ in
            try xvfb.run(["xdotool", "key", "a", "Return"])
        }
        let keys = chunks.flatMap(\.keys)
        #expect(keys.map(\.text) == ["a", "a", "[Enter]", "[Enter]"])
        #expect(keys.map(\.pressed) == [nil, false, nil, false])
        #expect(chunks.map(\.text).joined() == "a[Enter]")
    }

    @Test("stop returns within 2 s with no input and finishes the stream")
    func stopWithoutInput() async throws {
        let xvfb = try keyboardXvfb()
        let recorder = try KeystrokeRecorder(display: xvfb.name, xauthority: nil, idleMs: 1000, maxKeysPerChunk: 10,
                                             logger: testLogger("keys"))
        try recorder.start()
        usleep(300_000)
        #expect(recorder.isRecording)
        let t0 = Date()
        recorder.stop()
        #expect(Date().timeIntervalSince(t0) < 2)
        var count = 0
        for await _ in recorder.chunks { count += 1 }
        #expect(count == 0)
        #expect(throws: CaptureError.self) { try recorder.start() }
    }

    @Test("a display without RECORD: keystroke capture reports it is unavailable")
    func noRecordExtension() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 320, height: 200, depth: 24, extraArgs: ["-extension", "RECORD"])
        let recorder = try KeystrokeRecorder(display: xvfb.name, xauthority: nil, idleMs: 1000, maxKeysPerChunk: 10,
                                             logger: testLogger("keys"))
        do {
            try recorder.start()
            Issue.record("start() succeeded without RECORD")
        } catch let error as CaptureError {
            #expect(error.code == .extensionUnavailable)
            #expect(error.description.contains("RECORD"))
        }
        // Screen capture still works on that display.
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        #expect(try capturer.captureAll().count == 1)
    }

    @Test("the X server killed and restarted mid-recording: chunk closed, recording resumes")
    func serverRestart() async throws {
        let xvfb = try keyboardXvfb()
        let chunks = try await record(xvfb) { recorder in
            try xvfb.run(["xdotool", "type", "--delay", "5", "ab"])
            usleep(200_000)
            xvfb.stop()
            try xvfb.restart()
            let deadline = Date().addingTimeInterval(10)
            while !recorder.isRecording && Date() < deadline { usleep(50_000) }
            try #require(recorder.isRecording)
            try xvfb.run(["xdotool", "type", "--delay", "5", "cd"])
        }
        #expect(chunks.map(\.text) == ["ab", "cd"])
    }
}
