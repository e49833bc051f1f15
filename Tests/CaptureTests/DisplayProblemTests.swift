import CaptureCore
import CaptureX11
import CustosBase
import Foundation
import Logging
import Synchronization
import TestSupport
import Testing

/// A display number with no server: no socket file and no lock file.
func unusedDisplay() -> String {
    for n in 190..<400 where !FileManager.default.fileExists(atPath: "/tmp/.X11-unix/X\(n)")
        && !FileManager.default.fileExists(atPath: "/tmp/.X\(n)-lock") {
        return ":\(n)"
    }
    return ":399"
}

@Suite("X display problems: which one, said once")
struct DisplayProblemTests {
    @Test("no server at the display: 'no X server' naming the socket; logged once over many attempts of both paths")
    func noServerLoggedOnce() throws {
        let display = unusedDisplay()
        let log = LogCapture()
        let logger = log.logger("display-test", level: .trace)
        let health = DisplayHealth(logger: logger)
        let capturer = try ScreenCapturer(display: display, xauthority: nil, pngLevel: 1, logger: logger, health: health)
        capturer.reconnectBackoff = Backoff(initial: .milliseconds(1), cap: .milliseconds(1), jitter: 1...1)
        let error = try #require(capturer.connectError)
        #expect(error.problem == .noServer)
        #expect(error.message.contains("no X server at display \(display)"), "\(error.message)")
        #expect(error.message.contains("/tmp/.X11-unix/X"), "\(error.message)")
        for _ in 0..<20 {
            usleep(2_000)
            #expect(throws: CaptureError.self) { try capturer.captureAll() }
            let recorder = try KeystrokeRecorder(display: display, xauthority: nil, idleMs: 100, maxKeysPerChunk: 10,
                                                 logger: logger, health: health)
            #expect(throws: CaptureError.self) { try recorder.start() }
        }
        let loud = log.lines(atLeast: .warning)
        #expect(loud.count == 1, "\(loud)")
        #expect(loud.first?.contains("no X server") == true)
        #expect(health.problem?.problem == .noServer)
    }

    @Test("an Xvfb with -auth: a wrong cookie is 'authorization refused' naming the cookie file; a missing file is named too")
    func authorizationRefusedNamesCookieFile() throws {
        try requireXTools(["Xvfb", "xauth", "mcookie"])
        let dir = try TempDir("display-auth")
        defer { dir.remove() }
        let cookie = try runChecked(["mcookie"]).trimmingCharacters(in: .whitespacesAndNewlines)
        let serverAuth = dir.file("server.auth")
        try runChecked(["xauth", "-f", serverAuth, "add", ":0", "MIT-MAGIC-COOKIE-1", cookie])
        let xvfb = try Xvfb(width: 200, height: 100, depth: 24, extraArgs: ["-auth", serverAuth])
        let wrong = dir.file("wrong.auth"), good = dir.file("good.auth"), missing = dir.file("missing.auth")
        try runChecked(["xauth", "-f", wrong, "add", xvfb.name, "MIT-MAGIC-COOKIE-1", String(cookie.reversed())])
        try runChecked(["xauth", "-f", good, "add", xvfb.name, "MIT-MAGIC-COOKIE-1", cookie])

        let log = LogCapture()
        let logger = log.logger("display-test", level: .trace)
        let health = DisplayHealth(logger: logger)
        let refused = try ScreenCapturer(display: xvfb.name, xauthority: wrong, pngLevel: 1, logger: logger, health: health)
        let error = try #require(refused.connectError)
        #expect(error.problem == .authorizationRefused)
        #expect(error.message.contains("authorization refused"), "\(error.message)")
        #expect(error.message.contains(wrong) && error.message.contains("xauthority="), "\(error.message)")
        #expect(!error.message.contains("no X server"))

        let noFile = try ScreenCapturer(display: xvfb.name, xauthority: missing, pngLevel: 1, logger: testLogger("t"))
        let noFileError = try #require(noFile.connectError)
        #expect(noFileError.problem == .authorizationRefused)
        #expect(noFileError.message.contains(missing) && noFileError.message.contains("cannot be read"), "\(noFileError.message)")

        // The right cookie connects, and the recovery is logged once.
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: good, pngLevel: 1, logger: logger, health: health)
        #expect(capturer.isConnected)
        #expect(try capturer.captureAll().count == 1)
        let loud = log.lines(atLeast: .notice)
        #expect(loud.count == 2, "\(loud)")
        #expect(loud.last?.contains("is available") == true)
    }

    @Test("recovery is logged once when the display becomes usable, for screen and keystrokes together")
    func recoveryLoggedOnce() throws {
        // The display becomes usable when its cookie file appears (no server restart, whose
        // display number another test's Xvfb could take in between).
        try requireXTools(["Xvfb", "xauth", "mcookie"])
        let dir = try TempDir("display-recovery")
        defer { dir.remove() }
        let cookie = try runChecked(["mcookie"]).trimmingCharacters(in: .whitespacesAndNewlines)
        let serverAuth = dir.file("server.auth")
        try runChecked(["xauth", "-f", serverAuth, "add", ":0", "MIT-MAGIC-COOKIE-1", cookie])
        let xvfb = try Xvfb(width: 200, height: 100, depth: 24, extraArgs: ["-auth", serverAuth])
        let later = dir.file("later.auth")
        let log = LogCapture()
        let logger = log.logger("display-test", level: .trace)
        let health = DisplayHealth(logger: logger)
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: later, pngLevel: 1, logger: logger, health: health)
        capturer.reconnectBackoff = Backoff(initial: .milliseconds(10), cap: .milliseconds(10), jitter: 1...1)
        for _ in 0..<10 {
            usleep(15_000)
            #expect(throws: CaptureError.self) { try capturer.captureAll() }
            let recorder = try KeystrokeRecorder(display: xvfb.name, xauthority: later, idleMs: 100, maxKeysPerChunk: 10,
                                                 logger: logger, health: health)
            #expect(throws: CaptureError.self) { try recorder.start() }
        }
        #expect(log.lines(atLeast: .warning).count == 1, "\(log.lines(atLeast: .notice))")
        try runChecked(["xauth", "-f", later, "add", xvfb.name, "MIT-MAGIC-COOKIE-1", cookie])
        // The next reconnect attempt (10 ms backoff) succeeds; under a busy test pool it may
        // take a few tries before one falls after the file is written.
        var frames: [FrameCapture] = []
        let deadline = Date().addingTimeInterval(10)
        while frames.isEmpty && Date() < deadline {
            usleep(15_000)
            frames = (try? capturer.captureAll()) ?? []
        }
        #expect(frames.count == 1)
        let recorder = try KeystrokeRecorder(display: xvfb.name, xauthority: later, idleMs: 100, maxKeysPerChunk: 10,
                                             logger: logger, health: health)
        try recorder.start()
        recorder.stop()
        #expect(health.problem == nil)
        let notices = log.lines(atLeast: .notice)
        #expect(notices.filter { $0.contains("is available") }.count == 1, "\(notices)")
        #expect(notices.count == 2, "\(notices)")
    }
}
