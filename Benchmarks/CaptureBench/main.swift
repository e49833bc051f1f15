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
import CX11
import CaptureCore
import CaptureX11
import Foundation
import Logging

struct Options {
    var display = ProcessInfo.processInfo.environment["DISPLAY"] ?? ":0"
    var frames = 30
    var level = 1
    var ffmpeg = "ffmpeg"
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

let options = parseOptions()
let keep = paintDesktop(display: options.display)
let screen = XDefaultScreen(keep)
let width = Int(XDisplayWidth(keep, screen)), height = Int(XDisplayHeight(keep, screen))
let logger = Logger(label: "custos.bench") { _ in SwiftLogNoOpLogHandler() }
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
