import CaptureCore
import CaptureFormat
import CaptureX11
import CustosBase
import Foundation
import TestSupport
import Testing

@Suite("Screen frames on a real Xvfb")
struct FrameTests {
    @Test("depth 24 with MIT-SHM: every pixel of the tiled pattern, RGB PNG without alpha")
    func depth24Pattern() throws {
        try requireXTools()
        let dir = try TempDir("capture-frame")
        defer { dir.remove() }
        let xvfb = try Xvfb(width: 640, height: 480, depth: 24)
        let fg = RGB(hex: "#12c5a7"), bg = RGB(hex: "#f0300b")
        try TilePattern.paint(xvfb, fg: fg.hex, bg: bg.hex, dir: dir)
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        let now = Date(timeIntervalSince1970: 1_800_000_000.123)
        let frames = try capturer.captureAll(now: now)
        #expect(capturer.isUsingSharedMemory)
        try #require(frames.count == 1)
        let (meta, png) = try #require(frames[0].changedFrame)
        #expect(meta == FrameMetadata(monitor: 0, monitorName: "screen", x: 0, y: 0, width: 640, height: 480,
                                      captureTimeMs: 1_800_000_000_123))
        let decoded = try decodePNG(png)
        #expect(decoded.colorType == 2, "colour type must be RGB (2), no alpha")
        #expect(decoded.bitDepth == 8)
        #expect(decoded.width == 640 && decoded.height == 480)
        #expect(firstMismatch(decoded, x0: 0, y0: 0, fg: fg, bg: bg) == nil)

        // The payload carries the same metadata and PNG.
        let payload = FramePayload.encode(meta, png: png)
        let (meta2, png2) = try FramePayload.decode(payload)
        #expect(meta2 == meta && png2 == png)
    }

    @Test("1920x1080 is grabbed in 64-row strips: no shared-memory segment above one strip, exact pixels")
    func fullHDInStrips() throws {
        try requireXTools()
        let dir = try TempDir("capture-strips")
        defer { dir.remove() }
        let xvfb = try Xvfb(width: 1920, height: 1080, depth: 24)
        let fg = RGB(hex: "#0a64c8"), bg = RGB(hex: "#fafa32")
        try TilePattern.paint(xvfb, fg: fg.hex, bg: bg.hex, dir: dir)
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        let frames = try capturer.captureAll()
        #expect(capturer.isUsingSharedMemory)
        let (meta, png) = try #require(frames.first?.changedFrame)
        #expect(meta.width == 1920 && meta.height == 1080)
        let decoded = try decodePNG(png)
        #expect(decoded.width == 1920 && decoded.height == 1080)
        #expect(firstMismatch(decoded, x0: 0, y0: 0, fg: fg, bg: bg) == nil)
        // Every System V shared-memory mapping of this process (other tests' capturers too)
        // is at most one strip: 1920 pixels × 4 bytes × 64 rows. A whole frame would be 8 MiB.
        let strip = 1920 * 4 * 64
        // procfs files report size 0: read to end of file (a one-shot read can stop short).
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/maps"))
        let maps = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n")
        try handle.close()
        let segments = maps.filter { $0.contains("SYSV") }.map { line -> Int in
            let range = line.split(separator: " ")[0].split(separator: "-").map { Int($0, radix: 16)! }
            return range[1] - range[0]
        }
        #expect(!segments.isEmpty, "no SYSV mapping seen while the capturer holds its segment")
        #expect(segments.allSatisfy { $0 <= strip }, "shared-memory mappings of \(segments) bytes; one strip is \(strip)")
        #expect(try capturer.captureAll().first?.isUnchanged == true)
    }

    @Test("a screen lower than one strip (37 rows): exact pixels with and without MIT-SHM")
    func shorterThanAStrip() throws {
        try requireXTools()
        let dir = try TempDir("capture-short")
        defer { dir.remove() }
        for extra in [[], ["-extension", "MIT-SHM"]] {
            let xvfb = try Xvfb(width: 250, height: 37, depth: 24, extraArgs: extra)
            let fg = RGB(hex: "#c80a64"), bg = RGB(hex: "#32fafa")
            try TilePattern.paint(xvfb, fg: fg.hex, bg: bg.hex, dir: dir)
            let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
            let (meta, png) = try #require(try capturer.captureAll().first?.changedFrame)
            #expect(capturer.isUsingSharedMemory == extra.isEmpty)
            #expect(meta.height == 37)
            let decoded = try decodePNG(png)
            #expect(decoded.width == 250 && decoded.height == 37)
            #expect(firstMismatch(decoded, x0: 0, y0: 0, fg: fg, bg: bg) == nil)
        }
    }

    @Test("an unchanged screen is not encoded again; a change is")
    func unchangedThenChanged() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 320, height: 200, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#203040"])
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        let first = try capturer.captureAll()
        #expect(first.count == 1 && first[0].changedFrame != nil)
        let second = try capturer.captureAll()
        #expect(second.count == 1 && second[0].isUnchanged)
        try xvfb.run(["xsetroot", "-solid", "#405060"])
        let third = try capturer.captureAll()
        let (_, png) = try #require(third.first?.changedFrame)
        let decoded = try decodePNG(png)
        #expect(decoded.pixel(0, 0) == RGB(hex: "#405060") && decoded.pixel(319, 199) == RGB(hex: "#405060"))
        #expect(try capturer.captureAll().first?.isUnchanged == true)
    }

    @Test("depth 16, width 1023, no MIT-SHM: RGB565 expanded exactly, padded rows walked by stride")
    func depth16OddWidthWithoutShm() throws {
        try requireXTools()
        let dir = try TempDir("capture-frame16")
        defer { dir.remove() }
        let xvfb = try Xvfb(width: 1023, height: 301, depth: 16, extraArgs: ["-extension", "MIT-SHM"])
        // Colours with 0/max channels are exact in RGB565.
        let fg = RGB(hex: "#ff00ff"), bg = RGB(hex: "#00ff00")
        try TilePattern.paint(xvfb, fg: fg.hex, bg: bg.hex, dir: dir)
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 6, logger: testLogger("t"))
        let frames = try capturer.captureAll()
        #expect(!capturer.isUsingSharedMemory)
        let (meta, png) = try #require(frames.first?.changedFrame)
        #expect(meta.width == 1023 && meta.height == 301)
        let decoded = try decodePNG(png)
        #expect(decoded.colorType == 2)
        #expect(decoded.width == 1023 && decoded.height == 301)
        #expect(firstMismatch(decoded, x0: 0, y0: 0, fg: fg, bg: bg) == nil)
    }

    @Test("MIT-SHM and XGetImage give identical pixels")
    func shmAndGetImageAgree() throws {
        try requireXTools()
        let dir = try TempDir("capture-shm")
        defer { dir.remove() }
        let withShm = try Xvfb(width: 333, height: 111, depth: 24)
        let withoutShm = try Xvfb(width: 333, height: 111, depth: 24, extraArgs: ["-extension", "MIT-SHM"])
        var images: [DecodedPNG] = []
        for (xvfb, shm) in [(withShm, true), (withoutShm, false)] {
            try TilePattern.paint(xvfb, fg: "#0a0b0c", bg: "#fefdfc", dir: dir)
            let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
            let (_, png) = try #require(try capturer.captureAll().first?.changedFrame)
            #expect(capturer.isUsingSharedMemory == shm)
            images.append(try decodePNG(png))
        }
        #expect(images[0].rgb == images[1].rgb)
        #expect(firstMismatch(images[0], x0: 0, y0: 0, fg: RGB(hex: "#0a0b0c"), bg: RGB(hex: "#fefdfc")) == nil)
    }

    @Test("two RandR monitors: one frame each with its geometry and pixels")
    func twoMonitors() throws {
        try requireXTools()
        let dir = try TempDir("capture-mon")
        defer { dir.remove() }
        let xvfb = try Xvfb(width: 800, height: 300, depth: 24)
        try xvfb.run(["xrandr", "--setmonitor", "LEFT", "500/132x300/79+0+0", "screen"])
        try xvfb.run(["xrandr", "--setmonitor", "RIGHT", "300/79x250/66+500+50", "none"])
        let fg = RGB(hex: "#102030"), bg = RGB(hex: "#c0d0e0")
        try TilePattern.paint(xvfb, fg: fg.hex, bg: bg.hex, dir: dir)
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        let frames = try capturer.captureAll()
        try #require(frames.count == 2)
        let (left, leftPNG) = try #require(frames[0].changedFrame)
        let (right, rightPNG) = try #require(frames[1].changedFrame)
        #expect(left == FrameMetadata(monitor: 0, monitorName: "LEFT", x: 0, y: 0, width: 500, height: 300,
                                      captureTimeMs: left.captureTimeMs))
        #expect(right == FrameMetadata(monitor: 1, monitorName: "RIGHT", x: 500, y: 50, width: 300, height: 250,
                                       captureTimeMs: left.captureTimeMs))
        #expect(firstMismatch(try decodePNG(leftPNG), x0: 0, y0: 0, fg: fg, bg: bg) == nil)
        #expect(firstMismatch(try decodePNG(rightPNG), x0: 500, y0: 50, fg: fg, bg: bg) == nil)
        let again = try capturer.captureAll()
        #expect(again.count == 2 && again.allSatisfy(\.isUnchanged))

        // A window mapped inside RIGHT only: RIGHT changes, LEFT stays unchanged.
        try requireTool("xmessage")
        let window = Process()
        window.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        window.arguments = ["xmessage", "-geometry", "+620+120", "changed"]
        window.environment = ProcessInfo.processInfo.environment.merging(xvfb.environment) { _, n in n }
        window.standardError = FileHandle.nullDevice
        try window.run()
        defer { kill(window.processIdentifier, SIGKILL); window.waitUntilExit() }
        let deadline = Date().addingTimeInterval(10)
        var frames3: [FrameCapture] = []
        while Date() < deadline {
            frames3 = try capturer.captureAll()
            if frames3.count == 2 && frames3[1].changedFrame != nil { break }
            usleep(50_000)
        }
        try #require(frames3.count == 2)
        #expect(frames3[0].isUnchanged)
        let (_, changedPNG) = try #require(frames3[1].changedFrame)
        #expect(firstMismatch(try decodePNG(changedPNG), x0: 500, y0: 50, fg: fg, bg: bg) != nil)
    }

    @Test("a repaint with identical pixels is unchanged (damage, then hash compare)")
    func identicalRepaint() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 300, height: 200, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#445566"])
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        #expect(try capturer.captureAll().first?.changedFrame != nil)
        try xvfb.run(["xsetroot", "-solid", "#445566"])  // repaints the root: damaged, same pixels
        #expect(try capturer.captureAll().first?.isUnchanged == true)
        try xvfb.run(["xsetroot", "-solid", "#445567"])  // one bit in blue
        let (_, png) = try #require(try capturer.captureAll().first?.changedFrame)
        #expect(try decodePNG(png).pixel(150, 100) == RGB(hex: "#445567"))
        capturer.resetChangeDetection()
        #expect(try capturer.captureAll().first?.changedFrame != nil)
    }

    @Test("a RandR resize during capture: new geometry, exact pixels, never a stale frame")
    func resizeDuringCapture() throws {
        try requireXTools()
        let dir = try TempDir("capture-resize")
        defer { dir.remove() }
        let xvfb = try Xvfb(width: 640, height: 480, depth: 24)
        let fg = RGB(hex: "#aa5500"), bg = RGB(hex: "#0055aa")
        try TilePattern.paint(xvfb, fg: fg.hex, bg: bg.hex, dir: dir)
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        let (m1, _) = try #require(try capturer.captureAll().first?.changedFrame)
        #expect(m1.width == 640 && m1.height == 480)
        // Xvfb accepts a smaller screen size (the CRTC keeps its mode, so xrandr exits
        // non-zero after resizing); check the root really shrank.
        _ = try runCommand(["xrandr", "--fb", "500x300"], environment: xvfb.environment)
        let size = try xvfb.run(["xwininfo", "-root"])
        try #require(size.contains("Width: 500") && size.contains("Height: 300"))
        let (m2, png2) = try #require(try capturer.captureAll().first?.changedFrame)
        #expect(m2.width == 500 && m2.height == 300)
        let d2 = try decodePNG(png2)
        #expect(d2.width == 500 && d2.height == 300)
        #expect(firstMismatch(d2, x0: 0, y0: 0, fg: fg, bg: bg) == nil)
        _ = try runCommand(["xrandr", "--fb", "640x480"], environment: xvfb.environment)
        let (m3, png3) = try #require(try capturer.captureAll().first?.changedFrame)
        #expect(m3.width == 640 && m3.height == 480)
        #expect(firstMismatch(try decodePNG(png3), x0: 0, y0: 0, fg: fg, bg: bg) == nil)
    }

    @Test("resizes racing a capture loop never fail or give a frame of the wrong size")
    func resizeRace() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 640, height: 480, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#336699"])
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        let sizes = ["640x480", "400x300", "600x200", "320x470"]
        let env = xvfb.environment
        let resizer = Thread {
            for i in 0..<24 { _ = try? runCommand(["xrandr", "--fb", sizes[i % sizes.count]], environment: env) }
        }
        resizer.start()
        let end = Date().addingTimeInterval(3)
        var frames = 0
        while Date() < end && !resizer.isFinished {
            for frame in try capturer.captureAll() {
                guard let (meta, png) = frame.changedFrame else { continue }
                let decoded = try decodePNG(png)
                #expect(decoded.width == meta.width && decoded.height == meta.height)
                #expect(sizes.contains("\(meta.width)x\(meta.height)"))
                #expect(decoded.pixel(meta.width - 1, meta.height - 1) == RGB(hex: "#336699"))
                frames += 1
            }
        }
        #expect(frames > 0)
    }

    @Test("the X server killed and restarted mid-capture: unavailable while down, then resumes")
    func serverRestart() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 320, height: 240, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#111111"])
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        capturer.reconnectBackoff = Backoff(initial: .milliseconds(50), cap: .milliseconds(200))
        #expect(try capturer.captureAll().first?.changedFrame != nil)
        xvfb.stop()
        var sawUnavailable = false
        for _ in 0..<3 {
            do {
                _ = try capturer.captureAll()
                Issue.record("captured a frame while the X server was down")
            } catch let error as CaptureError {
                #expect(error.code == .displayUnavailable)
                sawUnavailable = true
            }
        }
        #expect(sawUnavailable && !capturer.isConnected)
        try xvfb.restart()
        try xvfb.run(["xsetroot", "-solid", "#22aa33"])
        let deadline = Date().addingTimeInterval(10)
        var resumed: DecodedPNG?
        while Date() < deadline && resumed == nil {
            do {
                if let (_, png) = try capturer.captureAll().first?.changedFrame { resumed = try decodePNG(png) }
            } catch let error as CaptureError where error.code == .displayUnavailable {
                usleep(50_000)
            }
        }
        let frame = try #require(resumed)
        #expect(frame.pixel(0, 0) == RGB(hex: "#22aa33"))
    }

    @Test("xauthority: the configured cookie file is used; a wrong cookie is 'unavailable'")
    func xauthority() throws {
        try requireXTools(["Xvfb", "xsetroot", "xauth", "mcookie"])
        let dir = try TempDir("capture-auth")
        defer { dir.remove() }
        let cookie = try runChecked(["mcookie"]).trimmingCharacters(in: .whitespacesAndNewlines)
        let serverAuth = dir.file("server.auth")
        try runChecked(["xauth", "-f", serverAuth, "add", ":0", "MIT-MAGIC-COOKIE-1", cookie])
        let xvfb = try Xvfb(width: 200, height: 100, depth: 24, extraArgs: ["-auth", serverAuth])
        let good = dir.file("client.auth"), wrong = dir.file("wrong.auth")
        try runChecked(["xauth", "-f", good, "add", xvfb.name, "MIT-MAGIC-COOKIE-1", cookie])
        try runChecked(["xauth", "-f", wrong, "add", xvfb.name, "MIT-MAGIC-COOKIE-1", String(cookie.reversed())])
        try runChecked(["xsetroot", "-solid", "#0000ff"], environment: ["DISPLAY": xvfb.name, "XAUTHORITY": good])

        let refused = try ScreenCapturer(display: xvfb.name, xauthority: wrong, pngLevel: 1, logger: testLogger("t"))
        #expect(!refused.isConnected)
        do {
            _ = try refused.captureAll()
            Issue.record("captured with a wrong cookie")
        } catch let error as CaptureError {
            #expect(error.code == .displayUnavailable)
        }
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: good, pngLevel: 1, logger: testLogger("t"))
        let (_, png) = try #require(try capturer.captureAll().first?.changedFrame)
        #expect(try decodePNG(png).pixel(10, 10) == RGB(hex: "#0000ff"))

        let recorder = try KeystrokeRecorder(display: xvfb.name, xauthority: good, idleMs: 1000, maxKeysPerChunk: 10,
                                             logger: testLogger("keys"))
        try recorder.start()
        recorder.stop()
        let badRecorder = try KeystrokeRecorder(display: xvfb.name, xauthority: wrong, idleMs: 1000,
                                                maxKeysPerChunk: 10, logger: testLogger("keys"))
        #expect(throws: CaptureError.self) { try badRecorder.start() }
    }

    @Test("a display that is not up yet: init succeeds, capture reports unavailable")
    func displayNotUp() throws {
        let capturer = try ScreenCapturer(display: ":59999", xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        #expect(!capturer.isConnected)
        #expect(throws: CaptureError.self) { try capturer.captureAll() }
        #expect(throws: CaptureError.self) {
            try ScreenCapturer(display: ":59999", xauthority: nil, pngLevel: 10, logger: testLogger("t"))
        }
    }
}
