// custos-bench-capture: CPU cost of Custos screen capture against ffmpeg x11grab → PNG,
// on the same X display in the same run.
//
// Usage: custos-bench-capture --display :N [--frames 30] [--level 1] [--ffmpeg ffmpeg]
// The display should be a 1920x1080x24 Xvfb (Benchmarks/capture.sh starts one). The bench
// paints a desktop-like root (wallpaper gradient with noise, a top bar, windows with text-like
// glyph rows) and keeps it up while measuring:
//   custos changed frame   thread CPU ms per captureAll() that grabs + hashes + PNG-encodes
//   custos unchanged frame thread CPU ms per captureAll() on an idle screen (DAMAGE: no grab)
//   identical repaint      the same after the root is repainted with the same pixels
//                          (DAMAGE reports it, so the pixels are grabbed and hashed)
//   ffmpeg frame           (CPU of `ffmpeg -f x11grab … -c:v png` with N+5 frames − with 5
//                          frames) / N, so start-up cost cancels out
// and prints medians, the ratio custos/ffmpeg (goal ≤ 0.5) and unchanged/changed (goal ≤ 0.02).
//
// With --exclusions it measures instead the cost of pixel exclusions (exclude-window-class/
// -title): 12 overlapping top-level windows over the desktop, 3 of them excluded (two by class,
// one by a title regular expression), and two capturers on the same display, one with the rules
// and one without, taking turns on the same screen states:
//   video, window moved   a window is moved before every frame (the mask is recomputed from the
//                         stacking order every frame), AV1 packet encoded
//   png, steady           change detection reset, the whole frame grabbed, masked and encoded
// and prints the medians and the ratio with/without (goal ≤ 1.1).
import CX11
import CaptureCore
import CaptureX11
import CustosBase
import Foundation
import Logging

struct Options {
    var display = ProcessInfo.processInfo.environment["DISPLAY"] ?? ":0"
    var frames = 30
    var level = 1
    var ffmpeg = "ffmpeg"
    var exclusions = false
}

func parseOptions() -> Options {
    var o = Options()
    var args = CommandLine.arguments.dropFirst().makeIterator()
    while let a = args.next() {
        switch a {
        case "--display": o.display = args.next() ?? o.display
        case "--frames": o.frames = Int(args.next() ?? "") ?? o.frames
        case "--level": o.level = Int(args.next() ?? "") ?? o.level
        case "--ffmpeg": o.ffmpeg = args.next() ?? o.ffmpeg
        case "--exclusions": o.exclusions = true
        default:
            FileHandle.standardError.write(Data("unknown argument \(a)\n".utf8))
            exit(2)
        }
    }
    return o
}

func threadCPUms() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) * 1000 + Double(ts.tv_nsec) / 1e6
}

func childrenCPUms() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_CHILDREN.rawValue, &usage)
    let user = Double(usage.ru_utime.tv_sec) * 1000 + Double(usage.ru_utime.tv_usec) / 1000
    let sys = Double(usage.ru_stime.tv_sec) * 1000 + Double(usage.ru_stime.tv_usec) / 1000
    return user + sys
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    guard !s.isEmpty else { return .nan }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Deterministic pseudo-random numbers (xorshift64*), so every run paints the same screen.
struct Rng {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    mutating func next() -> UInt64 {
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// Paints a desktop-like 24-bit picture as the root background; returns the open display,
/// which must stay open while measuring (the background pixmap belongs to it).
func paintDesktop(display name: String) -> OpaquePointer {
    guard let dpy = XOpenDisplay(name) else {
        FileHandle.standardError.write(Data("cannot open display \(name)\n".utf8))
        exit(1)
    }
    let screen = XDefaultScreen(dpy)
    let root = XDefaultRootWindow(dpy)
    let width = Int(XDisplayWidth(dpy, screen)), height = Int(XDisplayHeight(dpy, screen))
    var pixels = [UInt32](repeating: 0, count: width * height)
    var rng = Rng()
    func put(_ x: Int, _ y: Int, _ c: UInt32) { if x >= 0 && y >= 0 && x < width && y < height { pixels[y * width + x] = c } }
    func rect(_ x: Int, _ y: Int, _ w: Int, _ h: Int, _ c: UInt32) {
        for yy in max(0, y)..<min(height, y + h) { for xx in max(0, x)..<min(width, x + w) { pixels[yy * width + xx] = c } }
    }
    // Wallpaper: a diagonal gradient with a little noise, like a photo.
    for y in 0..<height {
        for x in 0..<width {
            let n = UInt32(rng.below(6))
            let r = UInt32(30 + (x * 60) / width) + n, g = UInt32(60 + (y * 90) / height) + n
            let b = UInt32(120 + ((x + y) * 80) / (width + height)) + n
            pixels[y * width + x] = r << 16 | g << 8 | b
        }
    }
    // Top bar with icons and clock-like glyphs.
    rect(0, 0, width, 28, 0x2b2b2b)
    for i in 0..<12 { rect(8 + i * 36, 4, 20, 20, UInt32(0x404040 + i * 0x0a0a0a)) }
    // Windows: title bar, white client area, rows of text-like glyphs.
    let windows = [(60, 80, 900, 620), (700, 200, 1000, 700), (1200, 90, 640, 420), (150, 560, 700, 460)]
    for (wx, wy, ww, wh) in windows {
        rect(wx + 6, wy + 6, ww, wh, 0x202020)  // shadow
        rect(wx, wy, ww, 30, 0x3c6eb4)
        rect(wx, wy + 30, ww, wh - 30, 0xfafafa)
        var ty = wy + 44
        while ty < wy + wh - 16 {
            var tx = wx + 12
            let lineEnd = wx + ww - 12 - rng.below(ww / 3)
            while tx < lineEnd {
                let word = 2 + rng.below(8)
                for _ in 0..<word {
                    // A 6x10 glyph: random strokes in dark grey, anti-aliased edges.
                    for _ in 0..<14 {
                        let gx = tx + rng.below(6), gy = ty + rng.below(10)
                        put(gx, gy, 0x222222)
                        put(gx + 1, gy, 0x9a9a9a)
                    }
                    tx += 8
                }
                tx += 8
            }
            ty += 18
        }
    }
    // A chart-like area with flat colour bars.
    for i in 0..<20 { rect(1250 + i * 28, 700 - i * 12, 20, 100 + i * 12, UInt32(0x30a050 + i * 0x050300)) }

    let visual = XDefaultVisual(dpy, screen)
    let depth = XDefaultDepth(dpy, screen)
    let pixmap = XCreatePixmap(dpy, root, UInt32(width), UInt32(height), UInt32(depth))
    let gc = XCreateGC(dpy, pixmap, 0, nil)
    pixels.withUnsafeMutableBytes { raw in
        let image = XCreateImage(dpy, visual, UInt32(depth), ZPixmap, 0, raw.baseAddress!.assumingMemoryBound(to: CChar.self),
                                 UInt32(width), UInt32(height), 32, Int32(width * 4))!
        XPutImage(dpy, pixmap, gc, image, 0, 0, 0, 0, UInt32(width), UInt32(height))
        image.pointee.data = nil  // the pixels belong to the Swift array
        XDestroyImage(image)
    }
    XSetWindowBackgroundPixmap(dpy, root, pixmap)
    XClearWindow(dpy, root)
    XFreeGC(dpy, gc)
    XSync(dpy, 0)
    return dpy
}

func runFFmpeg(_ o: Options, frames: Int, width: Int, height: Int) -> Double {
    let before = childrenCPUms()
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [o.ffmpeg, "-nostdin", "-loglevel", "error", "-f", "x11grab", "-video_size", "\(width)x\(height)",
                   "-framerate", "30", "-i", o.display, "-frames:v", "\(frames)", "-c:v", "png", "-f", "null", "-"]
    p.standardOutput = FileHandle.nullDevice
    do { try p.run() } catch {
        FileHandle.standardError.write(Data("cannot run \(o.ffmpeg): \(error)\n".utf8))
        exit(1)
    }
    p.waitUntilExit()
    if p.terminationStatus != 0 {
        FileHandle.standardError.write(Data("ffmpeg exited \(p.terminationStatus)\n".utf8))
        exit(1)
    }
    return childrenCPUms() - before
}

/// Opens 12 overlapping top-level windows (plain background colours, WM_CLASS and titles);
/// three match `rules`. Returns the window the moving scenario moves (not excluded).
func openWindows(_ dpy: OpaquePointer) -> Window {
    let root = XDefaultRootWindow(dpy)
    var moving: Window = 0
    for i in 0..<12 {
        let w = XCreateSimpleWindow(dpy, root, Int32(40 + (i % 4) * 420), Int32(60 + (i / 4) * 300), 640, 420, 1, 0,
                                    UInt(0x203040 + i * 0x0c0a08))
        var hint = XClassHint()
        let name = strdup("app\(i)"), cls = strdup(i == 2 || i == 7 ? "KeePassXC" : "Editor")
        hint.res_name = name
        hint.res_class = cls
        XSetClassHint(dpy, w, &hint)
        XStoreName(dpy, w, i == 10 ? "Online Banking - Browser" : "Document \(i)")
        free(name)
        free(cls)
        XMapRaised(dpy, w)
        if i == 11 { moving = w }  // the top one: every move changes the screen
    }
    XSync(dpy, 0)
    return moving
}

func exclusionBench(_ options: Options, keep: OpaquePointer, logger: Logger) throws {
    let moving = openWindows(keep)
    usleep(200_000)
    let rules = WindowRules(excludedClasses: [try WindowPattern("KeePassXC", field: "exclude-window-class")],
                            excludedTitles: [try WindowPattern("/^Online Banking/", field: "exclude-window-title")])
    let with = try ScreenCapturer(display: options.display, xauthority: nil, encoding: .video(keyframeIntervalMs: 0),
                                  logger: logger, policy: CapturePolicy(rules))
    let without = try ScreenCapturer(display: options.display, xauthority: nil, encoding: .video(keyframeIntervalMs: 0),
                                     logger: logger)
    _ = try with.captureAll()
    _ = try without.captureAll()
    var movedWith: [Double] = [], movedWithout: [Double] = []
    for i in 0..<options.frames {
        XMoveWindow(keep, moving, Int32(880 + (i % 2) * 24), Int32(360 + (i % 3) * 16))
        XSync(keep, 0)
        // Alternate which goes first, so neither always meets a warmer cache.
        for c in i % 2 == 0 ? [with, without] : [without, with] {
            let t0 = threadCPUms()
            let frames = try c.captureAll()
            let ms = threadCPUms() - t0
            guard case .packet = frames.first else {
                FileHandle.standardError.write(Data("frame \(i): a moved window gave no packet (\(c === with ? "with" : "without") exclusions): \(frames)\n".utf8))
                exit(1)
            }
            if c === with { movedWith.append(ms) } else { movedWithout.append(ms) }
        }
    }
    let pngWithout = try ScreenCapturer(display: options.display, xauthority: nil, pngLevel: options.level, logger: logger)
    let pngPolicy = CapturePolicy(rules)
    let pngMasked = try ScreenCapturer(display: options.display, xauthority: nil, encoding: .png(level: options.level),
                                       logger: logger, policy: pngPolicy)
    _ = try pngMasked.captureAll()
    _ = try pngWithout.captureAll()
    var steadyWith: [Double] = [], steadyWithout: [Double] = []
    for i in 0..<options.frames {
        for c in i % 2 == 0 ? [pngMasked, pngWithout] : [pngWithout, pngMasked] {
            c.resetChangeDetection()
            let t0 = threadCPUms()
            _ = try c.captureAll()
            let ms = threadCPUms() - t0
            if c === pngMasked { steadyWith.append(ms) } else { steadyWithout.append(ms) }
        }
    }
    func f(_ x: Double, _ digits: Int = 2) -> String { String(format: "%.\(digits)f", x) }
    let movedRatio = median(movedWith) / median(movedWithout), steadyRatio = median(steadyWith) / median(steadyWithout)
    print("screen \(XDisplayWidth(keep, XDefaultScreen(keep)))x\(XDisplayHeight(keep, XDefaultScreen(keep))), 12 windows, 3 excluded, \(options.frames) frames each")
    print("video, window moved: with exclusions \(f(median(movedWith))) ms, without \(f(median(movedWithout))) ms CPU (medians); ratio \(f(movedRatio, 3)) (goal <= 1.1) \(movedRatio <= 1.1 ? "OK" : "MISSED")")
    print("png, steady:         with exclusions \(f(median(steadyWith))) ms, without \(f(median(steadyWithout))) ms CPU (medians); ratio \(f(steadyRatio, 3)) (goal <= 1.1) \(steadyRatio <= 1.1 ? "OK" : "MISSED")")
}

let options = parseOptions()
let keep = paintDesktop(display: options.display)
let screen = XDefaultScreen(keep)
let width = Int(XDisplayWidth(keep, screen)), height = Int(XDisplayHeight(keep, screen))
let logger = Logger(label: "custos.bench") { _ in SwiftLogNoOpLogHandler() }
if options.exclusions {
    do { try exclusionBench(options, keep: keep, logger: logger) } catch {
        FileHandle.standardError.write(Data("\(error)\n".utf8))
        exit(1)
    }
    exit(0)
}
let capturer: ScreenCapturer
do {
    capturer = try ScreenCapturer(display: options.display, xauthority: nil, pngLevel: options.level, logger: logger)
} catch {
    FileHandle.standardError.write(Data("\(error)\n".utf8))
    exit(1)
}

var changed: [Double] = [], unchanged: [Double] = [], repainted: [Double] = [], pngBytes = 0
do {
    _ = try capturer.captureAll()  // warm-up: connection, SHM segment
    for _ in 0..<options.frames {
        capturer.resetChangeDetection()
        let t0 = threadCPUms()
        let frames = try capturer.captureAll()
        changed.append(threadCPUms() - t0)
        if case .changed(_, let png) = frames.first { pngBytes = png.count }
    }
    for _ in 0..<options.frames {
        let t0 = threadCPUms()
        let frames = try capturer.captureAll()
        unchanged.append(threadCPUms() - t0)
        guard case .unchanged = frames.first else {
            FileHandle.standardError.write(Data("screen changed during the unchanged-frame run\n".utf8))
            exit(1)
        }
    }
    // Repaint with identical pixels: DAMAGE reports the root, the hash finds it unchanged.
    for _ in 0..<options.frames {
        XClearWindow(keep, XDefaultRootWindow(keep))
        XSync(keep, 0)
        let t0 = threadCPUms()
        let frames = try capturer.captureAll()
        repainted.append(threadCPUms() - t0)
        guard case .unchanged = frames.first else {
            FileHandle.standardError.write(Data("identical repaint was reported as changed\n".utf8))
            exit(1)
        }
    }
} catch {
    FileHandle.standardError.write(Data("\(error)\n".utf8))
    exit(1)
}

// ffmpeg: three paired runs; per-frame CPU = (long − short) / frames.
var ffmpegPerFrame: [Double] = []
for _ in 0..<3 {
    let short = runFFmpeg(options, frames: 5, width: width, height: height)
    let long = runFFmpeg(options, frames: 5 + options.frames, width: width, height: height)
    ffmpegPerFrame.append((long - short) / Double(options.frames))
}

let custosMs = median(changed), idleMs = median(unchanged), ffmpegMs = median(ffmpegPerFrame)
func f(_ x: Double, _ digits: Int = 2) -> String { String(format: "%.\(digits)f", x) }
print("screen \(width)x\(height), \(options.frames) frames, png level \(options.level), shm \(capturer.isUsingSharedMemory), png \(pngBytes) bytes")
print("custos changed frame:   \(f(custosMs)) ms CPU (median)")
print("custos unchanged frame: \(f(idleMs, 3)) ms CPU (median)")
print("custos identical repaint (damaged, hashed): \(f(median(repainted), 3)) ms CPU (median)")
print("ffmpeg x11grab png:     \(f(ffmpegMs)) ms CPU per frame (median of 3)")
print("ratio custos/ffmpeg:    \(f(custosMs / ffmpegMs, 3)) (goal <= 0.5) \(custosMs / ffmpegMs <= 0.5 ? "OK" : "MISSED")")
print("unchanged/changed:      \(f(idleMs / custosMs, 4)) (goal <= 0.02) \(idleMs / custosMs <= 0.02 ? "OK" : "MISSED")")
XCloseDisplay(keep)
