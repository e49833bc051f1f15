import CX11
import CaptureCore
import CaptureFormat
import CaptureX11
import CustosBase
import Foundation
import Synchronization
import TestSupport
import Testing
import Video

/// Plain X windows made by a client connection of their own (XCreateSimpleWindow: the server
/// paints the background and border pixels itself), with WM_CLASS and a title, for the
/// exclusion tests. Keeps a model of the stacking order (bottom to top) to compute what each
/// pixel of the screen must be.
final class TestWindows: @unchecked Sendable {
    // @unchecked Sendable: used by one thread at a time (the test, or its mover thread).
    struct Spec {
        var id: Window
        var x: Int, y: Int, width: Int, height: Int, border: Int
        var color: RGB, borderColor: RGB
        var instance: String, className: String, title: String
        var mapped = true
        var outer: (x: Int, y: Int, w: Int, h: Int) { (x, y, width + 2 * border, height + 2 * border) }
    }

    let dpy: OpaquePointer
    /// Bottom to top.
    private(set) var stack: [Spec] = []

    init(_ xvfb: Xvfb) throws {
        _ = XInitThreads()  // this connection may be used on a thread of its own beside the capturer's
        guard let d = XOpenDisplay(xvfb.name) else { throw TestSupportError("cannot open \(xvfb.name)") }
        dpy = d
    }
    deinit { XCloseDisplay(dpy) }

    /// The pixel value of `c` on this display (XAllocColor: exact on TrueColor).
    func pixel(_ c: RGB) -> UInt {
        var color = XColor()
        color.red = UInt16(c.r) * 257
        color.green = UInt16(c.g) * 257
        color.blue = UInt16(c.b) * 257
        XAllocColor(dpy, XDefaultColormap(dpy, XDefaultScreen(dpy)), &color)
        return color.pixel
    }

    @discardableResult
    func create(x: Int, y: Int, width: Int, height: Int, border: Int = 0, color: String, borderColor: String = "#000000",
                instance: String, className: String, title: String) -> Window {
        let bg = RGB(hex: color), bc = RGB(hex: borderColor)
        let w = XCreateSimpleWindow(dpy, XDefaultRootWindow(dpy), Int32(x), Int32(y), UInt32(width), UInt32(height),
                                    UInt32(border), pixel(bc), pixel(bg))
        var hint = XClassHint()
        let n = strdup(instance), c = strdup(className)
        defer { free(n); free(c) }
        hint.res_name = n
        hint.res_class = c
        XSetClassHint(dpy, w, &hint)
        XStoreName(dpy, w, title)
        XMapRaised(dpy, w)
        XSync(dpy, 0)
        stack.append(Spec(id: w, x: x, y: y, width: width, height: height, border: border, color: bg, borderColor: bc,
                          instance: instance, className: className, title: title))
        return w
    }

    private func index(_ w: Window) -> Int { stack.firstIndex { $0.id == w }! }

    func raise(_ w: Window) {
        XRaiseWindow(dpy, w)
        XSync(dpy, 0)
        stack.append(stack.remove(at: index(w)))
    }

    func move(_ w: Window, x: Int, y: Int, sync: Bool = true) {
        XMoveWindow(dpy, w, Int32(x), Int32(y))
        if sync { XSync(dpy, 0) } else { XFlush(dpy) }
        stack[index(w)].x = x
        stack[index(w)].y = y
    }

    func unmap(_ w: Window) {
        XUnmapWindow(dpy, w)
        XSync(dpy, 0)
        stack[index(w)].mapped = false
    }

    func setTitle(_ w: Window, _ title: String) {
        XStoreName(dpy, w, title)
        XSync(dpy, 0)
        stack[index(w)].title = title
    }

    /// What pixel (x, y) of the screen must be: the mask colour where the topmost window there
    /// is excluded, else that window's colour (border or background), else the root's.
    func expected(_ x: Int, _ y: Int, rules: WindowRules, root: (Int, Int) -> RGB) -> RGB {
        for s in stack.reversed() where s.mapped {
            let o = s.outer
            guard x >= o.x, x < o.x + o.w, y >= o.y, y < o.y + o.h else { continue }
            if rules.isExcluded(WindowIdentity(instance: s.instance, windowClass: s.className, title: s.title)) {
                return RGB(WindowRules.maskColor.red, WindowRules.maskColor.green, WindowRules.maskColor.blue)
            }
            let inside = x >= o.x + s.border && x < o.x + s.border + s.width && y >= o.y + s.border && y < o.y + s.border + s.height
            return inside ? s.color : s.borderColor
        }
        return root(x, y)
    }
}

/// `exclude-window-class` / `exclude-window-title`: the visible part of every matching
/// top-level window is painted with the mask colour before encoding, exactly where it is
/// visible (stacking order, windows above, borders), and only there; keys typed into it are
/// dropped and counted (docs/CAPTURE.md "Pixel exclusions").
@Suite("Pixel exclusions on a real Xvfb")
struct ExclusionTests {
    static let magenta = RGB(0xFF, 0x00, 0xFF)

    /// Compares every pixel of `frame` with the windows' model; returns the first mismatch.
    func mismatch(_ frame: DecodedPNG, _ windows: TestWindows, rules: WindowRules, root: (Int, Int) -> RGB) -> String? {
        for y in 0..<frame.height {
            for x in 0..<frame.width {
                let want = windows.expected(x, y, rules: rules, root: root)
                let got = frame.pixel(x, y)
                if got != want { return "pixel (\(x),\(y)) is \(got), expected \(want)" }
            }
        }
        return nil
    }

    func png(_ capturer: ScreenCapturer) throws -> DecodedPNG {
        let frames = try capturer.captureAll()
        let (_, data) = try #require(frames.first?.changedFrame, "expected a changed frame, got \(frames)")
        return try decodePNG(data)
    }

    @Test("under and over other windows, after a raise, a move, an unmap, a title change and a rule change: mask exactly where visible",
          arguments: [24, 16])
    func maskFollowsTheStack(depth: Int) throws {
        try requireXTools()
        let dir = try TempDir("exclusion-\(depth)")
        defer { dir.remove() }
        // Depth 16 without MIT-SHM: RGB565 pixels through XGetImage.
        let xvfb = try Xvfb(width: 320, height: 200, depth: depth, extraArgs: depth == 16 ? ["-extension", "MIT-SHM"] : [])
        let fg = RGB(hex: "#000000"), bg = RGB(hex: "#ffffff")
        try TilePattern.paint(xvfb, fg: fg.hex, bg: bg.hex, dir: dir)
        let root = { (x: Int, y: Int) in TilePattern.expected(x, y, fg: fg, bg: bg) }
        let windows = try TestWindows(xvfb)
        // Bottom to top: A (excluded class, with a border), D, B over part of A, C (excluded by title).
        let a = windows.create(x: 20, y: 20, width: 120, height: 90, border: 3, color: "#00ff00", borderColor: "#0000ff",
                               instance: "secret", className: "Secret", title: "Payroll")
        let d = windows.create(x: 190, y: 20, width: 50, height: 50, color: "#ffff00", instance: "d", className: "Plain",
                               title: "Notes")
        let b = windows.create(x: 80, y: 60, width: 120, height: 90, color: "#ff0000", instance: "b", className: "Plain",
                               title: "Editor")
        let c = windows.create(x: 220, y: 40, width: 60, height: 60, color: "#00ffff", instance: "c", className: "Browser",
                               title: "Bank of Test - Browser")
        var rules = WindowRules(excludedClasses: [try WindowPattern("Secret", field: "exclude-window-class")],
                                excludedTitles: [try WindowPattern("/^Bank/", field: "exclude-window-title")])
        let policy = CapturePolicy(rules)
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, encoding: .png(level: 1),
                                          logger: testLogger("t"), policy: policy)
        #expect(mismatch(try png(capturer), windows, rules: rules, root: root) == nil, "initial stack")
        // The masked windows' own colours appear nowhere.
        let first = try png(capturer.resetting())
        #expect(!first.rgb.indices.lazy.filter { $0 % 3 == 0 }.contains { RGB(first.rgb[$0], first.rgb[$0 + 1], first.rgb[$0 + 2]) == RGB(hex: "#00ff00") })

        windows.raise(a)  // A over B now: wholly masked, border included
        #expect(mismatch(try png(capturer), windows, rules: rules, root: root) == nil, "after raising A")
        windows.move(c, x: 170, y: 10)  // C over D
        #expect(mismatch(try png(capturer), windows, rules: rules, root: root) == nil, "after moving C over D")
        windows.unmap(b)
        #expect(mismatch(try png(capturer), windows, rules: rules, root: root) == nil, "after unmapping B")
        // D's title now matches: no pixel of it changes, yet the next frame masks it.
        windows.setTitle(d, "Bank statement")
        #expect(mismatch(try png(capturer), windows, rules: rules, root: root) == nil, "after D's title change")
        // A rule change (SIGHUP) applies from the next frame: the title rule gone, C and D show.
        rules = WindowRules(excludedClasses: rules.excludedClasses)
        policy.update(rules)
        #expect(mismatch(try png(capturer), windows, rules: rules, root: root) == nil, "after dropping the title rule")
        policy.update(WindowRules())
        #expect(mismatch(try png(capturer), windows, rules: WindowRules(), root: root) == nil, "without rules")
    }

    @Test("video: the decoded picture is the mask colour inside the excluded window, the true colour elsewhere")
    func videoIsMasked() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 256, height: 128, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#336699"])
        let windows = try TestWindows(xvfb)
        windows.create(x: 16, y: 16, width: 96, height: 96, color: "#00ff00", instance: "vault", className: "KeePassXC",
                       title: "Passwords")
        windows.create(x: 144, y: 16, width: 96, height: 96, color: "#ff0000", instance: "term", className: "XTerm",
                       title: "shell")
        let policy = CapturePolicy(WindowRules(excludedClasses: [try WindowPattern("/(?i)keepass/", field: "exclude-window-class")]))
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, encoding: .video(keyframeIntervalMs: 0),
                                          logger: testLogger("t"), policy: policy)
        let frames = try capturer.captureAll()
        guard case .packet(_, let packet) = try #require(frames.first) else { Issue.record("no packet: \(frames)"); return }
        let picture = try #require(try AV1Decoder().decode(packet).first)
        let bgrx = picture.bgrx()
        func pixel(_ x: Int, _ y: Int) -> RGB {
            let i = (y * picture.width + x) * 4
            return RGB(bgrx[i + 2], bgrx[i + 1], bgrx[i])
        }
        func near(_ a: RGB, _ b: RGB) -> Bool { abs(Int(a.r) - Int(b.r)) <= 12 && abs(Int(a.g) - Int(b.g)) <= 12 && abs(Int(a.b) - Int(b.b)) <= 12 }
        // Away from edges (4:2:0 chroma and the codec blur them by a few pixels).
        for (x, y) in [(24, 24), (64, 64), (100, 100)] { #expect(near(pixel(x, y), Self.magenta), "(\(x),\(y)) \(pixel(x, y))") }
        for (x, y) in [(152, 24), (192, 64)] { #expect(near(pixel(x, y), RGB(hex: "#ff0000")), "(\(x),\(y)) \(pixel(x, y))") }
        #expect(near(pixel(128, 120), RGB(hex: "#336699")))
    }

    @Test("an excluded window dragged across the screen while frames are taken never shows in any frame")
    func movingWindowNeverLeaks() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 320, height: 160, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#336699"])
        let windows = try TestWindows(xvfb)
        let w = windows.create(x: 0, y: 40, width: 60, height: 60, color: "#00ff00", instance: "s", className: "Secret",
                               title: "moving")
        let policy = CapturePolicy(WindowRules(excludedClasses: [try WindowPattern("Secret", field: "exclude-window-class")]))
        let capturer = try ScreenCapturer(display: xvfb.name, xauthority: nil, encoding: .png(level: 1),
                                          logger: testLogger("t"), policy: policy)
        let stop = Atomic<Bool>(false)
        let mover = Thread {
            var x = 0
            while !stop.load(ordering: .relaxed) {
                x = (x + 7) % 260
                windows.move(w, x: x, y: 40 + x % 40, sync: true)
            }
        }
        mover.start()
        defer { stop.store(true, ordering: .relaxed); usleep(100_000) }
        var changed = 0
        for _ in 0..<25 {
            for frame in try capturer.captureAll() {
                guard let (_, data) = frame.changedFrame else { continue }
                changed += 1
                let image = try decodePNG(data)
                let leaked = stride(from: 0, to: image.rgb.count, by: 3).contains {
                    image.rgb[$0] == 0x00 && image.rgb[$0 + 1] == 0xff && image.rgb[$0 + 2] == 0x00
                }
                #expect(!leaked, "a frame shows the excluded window's green")
            }
            usleep(20_000)
        }
        #expect(changed >= 10, "the window moved, so frames changed: \(changed)")
    }

    @Test("keys typed while an excluded window has the focus are dropped: one [excluded] marker with the count")
    func keysIntoExcludedWindowAreDropped() async throws {
        let xvfb = try keyboardXvfb()
        let windows = try TestWindows(xvfb)
        let secret = windows.create(x: 10, y: 10, width: 80, height: 60, color: "#00ff00", instance: "s", className: "Secret",
                                    title: "Vault")
        let plain = windows.create(x: 100, y: 10, width: 80, height: 60, color: "#ff0000", instance: "p", className: "Plain",
                                   title: "Notes")
        let policy = CapturePolicy(WindowRules(excludedClasses: [try WindowPattern("Secret", field: "exclude-window-class")]))
        let recorder = try KeystrokeRecorder(display: xvfb.name, xauthority: nil, idleMs: 10_000, maxKeysPerChunk: 1000,
                                             logger: testLogger("keys"), policy: policy)
        try recorder.start()
        try xvfb.run(["xdotool", "windowfocus", "--sync", String(secret)])
        try xvfb.run(["xdotool", "type", "--delay", "5", "abc12"])
        try xvfb.run(["xdotool", "windowfocus", "--sync", String(plain)])
        try xvfb.run(["xdotool", "type", "--delay", "5", "ok"])
        recorder.stop()
        var chunks: [KeystrokeChunk] = []
        for await chunk in recorder.chunks { chunks.append(chunk) }
        try #require(chunks.count == 2, "\(chunks)")
        #expect(chunks[0].wmClass == "s.Secret" && chunks[0].text == "[excluded]")
        let marker = try #require(chunks[0].keys.first)
        #expect(marker.count == 5 && marker.isMarker && marker.untilMs! >= marker.timeMs, "\(marker)")
        #expect(chunks[1].wmClass == "p.Plain" && chunks[1].text == "ok")
    }
}

extension ScreenCapturer {
    /// Itself after `resetChangeDetection()` (the next capture encodes every monitor).
    func resetting() -> ScreenCapturer {
        resetChangeDetection()
        return self
    }
}
