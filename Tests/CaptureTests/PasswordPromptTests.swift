import CaptureCore
import CaptureFormat
import CaptureX11
import CustosBase
import Foundation
import TestSupport
import Testing

/// `x11-grab-keyboard` (Tests/Tools): a separate X client process that grabs the keyboard the
/// way a password prompt does, driven by signals; each step waits for the line that says the
/// server has done it.
final class KeyboardGrabber {
    let process: BackgroundProcess

    init(_ xvfb: Xvfb, mode: String, dir: TempDir) throws {
        process = try BackgroundProcess(try builtProduct("x11-grab-keyboard"), [xvfb.name, mode],
                                        logPath: dir.file("grabber-\(mode)-\(UUID().uuidString).log"))
        try wait(for: "grabbed", count: 1)
        #expect(process.log.contains("grabbed 0"), "the grab failed: \(process.log)")
    }

    /// Waits until the output has `count` lines starting with `prefix`.
    func wait(for prefix: String, count: Int) throws {
        let ok = waitUntil(timeout: 10) {
            process.log.split(separator: "\n").filter { $0.hasPrefix(prefix) }.count >= count
        }
        if !ok { throw TestSupportError("x11-grab-keyboard did not print \(prefix) (\(count)): \(process.log)") }
    }

    func ungrab() throws { process.send(SIGUSR1); try wait(for: "ungrabbed", count: 1) }
    func unmap() throws { process.send(SIGUSR2); try wait(for: "unmapped", count: 1) }
    func exit() { process.send(SIGTERM); _ = process.waitExit(timeout: 10) }
}

/// Keystrokes are not recorded while another client holds an active keyboard grab, nor while a
/// `sensitive-window-class` window has the focus: a `[suppressed]` marker with the time span
/// stands for them (docs/CAPTURE.md "Password prompts"). Real Xvfb, real grabbing client,
/// xdotool typing through XTest.
@Suite("Password prompts on a real Xvfb", .serialized)
struct PasswordPromptTests {
    /// The markers of `chunks`, checked for their shape: a span inside the recording, no count.
    func markers(_ chunks: [KeystrokeChunk], from: Int64, to: Int64) -> [Keystroke] {
        let marks = chunks.flatMap(\.keys).filter(\.isMarker)
        for m in marks {
            #expect(m.text == KeyToken.suppressed && m.count == nil, "\(m)")
            #expect(m.timeMs <= m.untilMs! && m.timeMs >= from - 1000 && m.untilMs! <= to + 1000, "\(m) outside \(from)…\(to)")
        }
        return marks
    }

    static func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    @Test("core GrabKeyboard mid-typing: keys before and after are kept, the grabbed ones are one [suppressed]",
          arguments: ["core", "xi2"])
    func grabMidTyping(mode: String) async throws {
        let xvfb = try keyboardXvfb()
        let dir = try TempDir("grab-\(mode)")
        defer { dir.remove() }
        try xvfb.run(["setxkbmap", "us"])
        let start = Self.nowMs()
        var suppressedFrom: Int64 = 0, suppressedTo: Int64 = 0
        let chunks = try await record(xvfb) { _ in
            try xvfb.run(["xdotool", "type", "--delay", "5", "ab"])
            let grabber = try KeyboardGrabber(xvfb, mode: mode, dir: dir)
            suppressedFrom = Self.nowMs()
            try xvfb.run(["xdotool", "type", "--delay", "5", "secret"])
            suppressedTo = Self.nowMs()
            try grabber.ungrab()
            try xvfb.run(["xdotool", "type", "--delay", "5", "cd"])
            // The prompt closes by exiting while it holds the grab again (client death ends it).
            grabber.process.send(SIGHUP)
            try grabber.wait(for: "grabbed", count: 2)
            try xvfb.run(["xdotool", "type", "--delay", "5", "pin"])
            grabber.exit()
            try xvfb.run(["xdotool", "type", "--delay", "5", "ef"])
        }
        #expect(chunks.map(\.text).joined() == "ab[suppressed]cd[suppressed]ef", "\(chunks)")
        let marks = markers(chunks, from: start, to: Self.nowMs())
        try #require(marks.count == 2)
        #expect(marks[0].timeMs >= suppressedFrom - 50 && marks[0].untilMs! <= suppressedTo + 500, "\(marks[0])")
    }

    @Test("a grab held before recording starts is found by the probe; one the server ends unseen (window unmapped) too")
    func grabBeforeStartAndImplicitEnd() async throws {
        let xvfb = try keyboardXvfb()
        let dir = try TempDir("grab-before")
        defer { dir.remove() }
        let grabber = try KeyboardGrabber(xvfb, mode: "core", dir: dir)
        defer { grabber.exit() }
        let chunks = try await record(xvfb) { _ in
            try xvfb.run(["xdotool", "type", "--delay", "5", "hidden"])
            // Unmapping the grab window ends the grab without an UngrabKeyboard request: only
            // the next probe (every 0.5 s while a grab is believed held) shows it ended.
            try grabber.unmap()
            usleep(1_500_000)
            try xvfb.run(["xdotool", "type", "--delay", "5", "shown"])
        }
        #expect(chunks.map(\.text).joined() == "[suppressed]shown", "\(chunks)")
    }

    @Test("sensitive-window-class: keys into a matching window are [suppressed], its neighbours' kept; a rule change applies at once")
    func sensitiveWindowClass() async throws {
        let xvfb = try keyboardXvfb()
        try requireTool("xmessage")
        let windows = try xvfb.openMessageWindows([("vault", "Password Vault"), ("notes", "Notes")])
        defer { windows.close() }
        let (vault, notes) = (windows.ids[0], windows.ids[1])
        // The instance "vault" matches exactly; the class Xmessage of both would match /^Xmess/.
        let policy = CapturePolicy(WindowRules(sensitiveClasses: [try WindowPattern("vault", field: "sensitive-window-class")]))
        let recorder = try KeystrokeRecorder(display: xvfb.name, xauthority: nil, idleMs: 10_000, maxKeysPerChunk: 1000,
                                             logger: testLogger("keys"), policy: policy)
        try recorder.start()
        try xvfb.run(["xdotool", "windowfocus", "--sync", vault])
        try xvfb.run(["xdotool", "type", "--delay", "5", "hunter2"])
        try xvfb.run(["xdotool", "windowfocus", "--sync", notes])
        try xvfb.run(["xdotool", "type", "--delay", "5", "ok"])
        policy.update(WindowRules(sensitiveClasses: [try WindowPattern("/^Xmess/", field: "sensitive-window-class")]))
        try xvfb.run(["xdotool", "type", "--delay", "5", "no"])
        policy.update(WindowRules())
        try xvfb.run(["xdotool", "windowfocus", "--sync", vault])
        try xvfb.run(["xdotool", "type", "--delay", "5", "z"])
        recorder.stop()
        var chunks: [KeystrokeChunk] = []
        for await chunk in recorder.chunks { chunks.append(chunk) }
        try #require(chunks.count == 3, "\(chunks)")
        #expect(chunks[0].text == "[suppressed]" && chunks[0].wmClass == "vault.Xmessage")
        #expect(chunks[1].text == "ok[suppressed]" && chunks[1].wmClass == "notes.Xmessage")
        #expect(chunks[2].text == "z" && chunks[2].wmClass == "vault.Xmessage")
        #expect(chunks.flatMap(\.keys).filter(\.isMarker).allSatisfy { $0.count == nil && $0.untilMs! >= $0.timeMs })
    }

    @Test("window patterns: exact text matches the whole string, /…/ a regular expression found in it; a bad one is named")
    func windowPatterns() throws {
        let exact = try WindowPattern("KeePassXC", field: "k")
        #expect(!exact.isRegularExpression && exact.matches("KeePassXC") && !exact.matches("keepassxc") && !exact.matches("KeePassXC2"))
        let regex = try WindowPattern("/(?i)^keepass/", field: "k")
        #expect(regex.isRegularExpression && regex.matches("KeePassXC") && regex.matches("keepass2") && !regex.matches("MyKeePass"))
        #expect(try WindowPattern("/", field: "k").matches("/"))  // one slash is plain text
        #expect(throws: ValueError.self) { try WindowPattern("//", field: "k") }
        #expect(throws: ValueError.self) { try WindowPattern("", field: "k") }
        do {
            _ = try WindowPattern("/[unclosed/", field: "sensitive-window-class")
            Issue.record("an unclosed bracket compiled")
        } catch {
            #expect(error.description.hasPrefix("sensitive-window-class: '/[unclosed/' is not a valid regular expression"), "\(error)")
        }
    }
}
