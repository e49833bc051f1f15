import CX11
import CX11Damage
import CaptureCore
import CaptureFormat
import CustosBase
import Foundation
import Logging
import Video

/// Captures every monitor of an X display as PNG frames or as packets of one AV1 video stream
/// per monitor (``ScreenEncoding``).
///
/// Monitors are the RandR 1.5 monitors (`XRRGetMonitors`, active only), clipped to the root
/// window; the whole root is one monitor named `root` when RandR is absent. Pixels come from
/// MIT-SHM (`XShmGetImage`) when the server offers it and `XShmAttach` works, else from
/// `XGetImage`; both give the same bytes. Depth 24/32 (any byte order and channel masks) and
/// depth 16/15 are read by the visual's masks and each row's `bytes_per_line`.
///
/// Change detection: with the DAMAGE and XFIXES extensions, a monitor the server reports as
/// undamaged since the previous capture is `.unchanged` without reading its pixels; a damaged
/// monitor is grabbed and its raw pixels hashed, so a repaint with identical pixels is still
/// `.unchanged`. Without DAMAGE every monitor is grabbed and hashed.
///
/// Video: each monitor's stream (``MonitorStream``: its encoder, picture and keyframe policy)
/// lives as long as the connection, the monitor's size and its name; a reconnect, a resize or
/// a different monitor at that index starts a new stream (a keyframe), as does
/// ``restartStreams(monitor:)``, which the owner calls when a packet was not kept (so no stream
/// has a hole) or a new DEK starts. Rows go from the X strips straight into the stream's I420
/// picture (libyuv), which the encoder reads in place: no full-frame copy.
///
/// Not thread-safe: call `captureAll` from one thread at a time (it owns the X connection).
/// When the display is missing or lost, `captureAll` throws `CaptureError.displayUnavailable`
/// saying which (no server, authorization refused naming the cookie file, lost), reports it to
/// `health` (logged once for all capture paths of the process, and the recovery once), and
/// reconnects on a later call after `reconnectBackoff`'s delay; until then it throws the same
/// error again without touching the X server.
public final class ScreenCapturer {
    /// Delays between reconnection attempts (250 ms doubling to 30 s, jittered); read at the
    /// first capture (``ReconnectGate``), so set it before.
    public var reconnectBackoff = Backoff(initial: .milliseconds(250), cap: .seconds(30))

    private let displayName: String?
    private let xauthority: String?
    /// Where `xauthority` came from, for error messages (e.g. "~/.Xauthority of user bob"); nil: `xauthority=`.
    private let xauthoritySource: String?
    /// What a changed monitor becomes: a PNG (with this encoder) or the next packet of its stream.
    private enum Output {
        case png(PNGEncoder)
        case video(keyframeIntervalMs: Int64)
    }
    private let output: Output
    /// Per monitor index: its video stream (video encoding only).
    private var streams: [Int: MonitorStream] = [:]
    private let logger: Logger
    private let health: DisplayHealth
    /// The window rules (`exclude-window-class`, `exclude-window-title`), read at every capture.
    private let policy: CapturePolicy
    /// The exclusion mask the previous frames were painted with: a different one grabs every
    /// monitor again (the change may come without DAMAGE, e.g. a title now matching).
    private var lastMask: [MaskRect] = []

    private var connection: Connection?
    private lazy var gate = ReconnectGate(reconnectBackoff)
    private var convertBuffer: [UInt8] = []
    /// Per monitor index: the geometry and raw-pixel hash of the last frame handed out.
    private var previous: [Int: (geometry: Geometry, hash: UInt64)] = [:]

    struct Geometry: Equatable {
        var name: String, x: Int, y: Int, width: Int, height: Int
        /// For a RandR monitor that lies wholly outside the root window (width and height 0
        /// here): its own rectangle and the root's, for the message. It keeps its index, so the
        /// monitors after it are not renumbered.
        var outside: String? = nil

        func intersects(_ other: Geometry) -> Bool {
            x < other.x + other.width && other.x < x + width && y < other.y + other.height && other.y < y + height
        }
    }

    /// The per-connection state: the display, its extensions, SHM buffers per monitor.
    private final class Connection {
        let display: X11Display
        let hasRandR: Bool
        var useShm: Bool
        var shmBuffers: [Int: XImageBuffer] = [:]
        var atomNames: [Atom: String] = [:]
        let format: PixelFormat
        /// DAMAGE on the root window and an XFixes region to fetch it into; nil when the
        /// server lacks DAMAGE or XFIXES (then every capture grabs and hashes).
        let damage: (major: Int32, id: UInt, parts: XserverRegion)?
        /// The visible parts of excluded windows, while the rules exclude any.
        var exclusion: ExclusionTracker?
        /// The mask colour in this display's pixel format.
        lazy var maskPixel: [UInt8] = format.pixelBytes(red: WindowRules.maskColor.red, green: WindowRules.maskColor.green,
                                                        blue: WindowRules.maskColor.blue)

        deinit {
            if let damage, !display.isDead {
                cx11_damage_destroy(display.dpy, damage.major, damage.id)
                XFixesDestroyRegion(display.dpy, damage.parts)
                XSync(display.dpy, 0)
                _ = display.takeError()
            }
        }

        init(display: X11Display, logger: Logger) throws {
            self.display = display
            let dpy = display.dpy
            var major: Int32 = 0, event: Int32 = 0, error: Int32 = 0
            if XQueryExtension(dpy, "RANDR", &major, &event, &error) != 0 {
                display.registerExtension("RANDR", majorOpcode: major)
            }
            var rrEvent: Int32 = 0, rrError: Int32 = 0, rrMajor: Int32 = 0, rrMinor: Int32 = 0
            hasRandR = XRRQueryExtension(dpy, &rrEvent, &rrError) != 0
                && XRRQueryVersion(dpy, &rrMajor, &rrMinor) != 0 && (rrMajor > 1 || rrMinor >= 5)
            if XQueryExtension(dpy, "MIT-SHM", &major, &event, &error) != 0 {
                display.registerExtension("MIT-SHM", majorOpcode: major)
                useShm = XShmQueryExtension(dpy) != 0
            } else {
                useShm = false
            }
            let screen = XDefaultScreen(dpy)
            guard let visual = XDefaultVisual(dpy, screen) else {
                throw CaptureError(.unsupportedFormat, "display \(display.name) has no default visual")
            }
            // The root's pixmap format for the default depth gives bits per pixel.
            var count: Int32 = 0
            var bpp = 32
            let depth = XDefaultDepth(dpy, screen)
            if let formats = XListPixmapFormats(dpy, &count) {
                for i in 0..<Int(count) where formats[i].depth == depth { bpp = Int(formats[i].bits_per_pixel) }
                XFree(formats)
            }
            format = PixelFormat(bitsPerPixel: bpp, msbFirst: XImageByteOrder(dpy) == MSBFirst,
                                 redMask: visual.pointee.red_mask, greenMask: visual.pointee.green_mask,
                                 blueMask: visual.pointee.blue_mask)
            guard format.isSupported else {
                throw CaptureError(.unsupportedFormat,
                                   "display \(display.name): depth \(depth) at \(bpp) bits per pixel with masks r=0x\(String(visual.pointee.red_mask, radix: 16)) is not a TrueColor layout this module reads")
            }
            try display.sync("querying extensions")
            // DAMAGE tells which parts of the root changed since the last capture, so an idle
            // monitor is reported unchanged without reading its pixels.
            var fixesEvent: Int32 = 0, fixesError: Int32 = 0, fixesMajor: Int32 = 5, fixesMinor: Int32 = 0
            let damageMajor = cx11_damage_query(dpy)
            if damageMajor != 0, XFixesQueryExtension(dpy, &fixesEvent, &fixesError) != 0,
               XFixesQueryVersion(dpy, &fixesMajor, &fixesMinor) != 0, fixesMajor >= 2 {
                display.registerExtension("DAMAGE", majorOpcode: damageMajor)
                let parts = XFixesCreateRegion(dpy, nil, 0)
                let id = cx11_damage_create(dpy, damageMajor, display.root, 3 /* XDamageReportNonEmpty */)
                try display.sync("creating a DAMAGE object on the root window")
                damage = (damageMajor, id, parts)
            } else {
                damage = nil
            }
            logger.debug("X display connected", metadata: [
                "capture.damage": "\(damage != nil)",
                "capture.display": "\(display.name)", "capture.shm": "\(useShm)", "capture.randr": "\(hasRandR)",
                "capture.depth": "\(depth)", "capture.bpp": "\(bpp)",
            ])
        }
    }

    /// Creates a capturer for `display` (nil: `$DISPLAY`) authorised by the `xauthority` file
    /// (nil: `$XAUTHORITY`, else `~/.Xauthority`), encoding PNG at zlib level `pngLevel` (0…9;
    /// 1 is fast). Display problems go to `health` (nil: a private one logging to `logger`);
    /// pass the same `DisplayHealth` to every capture path so a missing display is logged once.
    ///
    /// Connects at once when it can; when the display is not up yet (at boot), reports that
    /// once and connects on a later `captureAll`.
    /// - Throws: `CaptureError.invalidArgument` when `pngLevel` is outside 0…9.
    public convenience init(display: String?, xauthority: String?, pngLevel: Int, logger: Logger,
                            health: DisplayHealth? = nil) throws {
        try self.init(display: display, xauthority: xauthority, encoding: .png(level: pngLevel), logger: logger,
                      health: health)
    }

    /// Creates a capturer encoding changed monitors as `encoding` says; otherwise as
    /// ``init(display:xauthority:pngLevel:logger:health:)``.
    /// - Throws: `CaptureError.invalidArgument` for a PNG level outside 0…9 or a negative
    ///   keyframe interval.
    /// Windows the rules of `policy` exclude are painted over before encoding (docs/CAPTURE.md
    /// "Pixel exclusions").
    public init(display: String?, xauthority: String?, xauthoritySource: String? = nil, encoding: ScreenEncoding, logger: Logger,
                health: DisplayHealth? = nil, policy: CapturePolicy = CapturePolicy()) throws {
        switch encoding {
        case .png(let level):
            guard (0...9).contains(level) else {
                throw CaptureError(.invalidArgument, "pngLevel \(level) is outside the zlib range 0…9")
            }
            output = .png(PNGEncoder(level: Int32(level)))
        case .video(let interval):
            guard interval >= 0 else {
                throw CaptureError(.invalidArgument, "keyframe interval \(interval) ms is negative")
            }
            output = .video(keyframeIntervalMs: interval)
        }
        displayName = display
        self.xauthority = xauthority
        self.xauthoritySource = xauthoritySource
        self.logger = logger
        self.health = health ?? DisplayHealth(logger: logger)
        self.policy = policy
        _ = try? ensureConnection(now: Date())
    }

    /// Whether frames currently come from MIT-SHM (`XShmGetImage`) rather than `XGetImage`;
    /// false while disconnected. For diagnostics and tests.
    public var isUsingSharedMemory: Bool { connection?.useShm ?? false }

    /// Whether the capturer currently holds a live connection to the display.
    public var isConnected: Bool { connection != nil }

    /// Why the last connection attempt failed, while disconnected; nil when connected.
    public var connectError: CaptureError? { connection == nil ? gate.lastError : nil }

    /// The monitors of the connected display (name, width, height in pixels), for sizing
    /// checks; empty while disconnected. A monitor outside the screen is not listed.
    public func monitorSizes() -> [(name: String, width: Int, height: Int)] {
        guard let connection, let monitors = try? readMonitors(connection) else { return [] }
        return monitors.filter { $0.outside == nil }.map { ($0.name, $0.width, $0.height) }
    }

    /// Why each monitor that cannot be recorded is not (outside the screen, or a size this
    /// capturer's encoding does not take), in words naming it; empty when all can be. For
    /// `--check-config`.
    public func unrecordableMonitors() -> [String] {
        guard let connection, let monitors = try? readMonitors(connection) else { return [] }
        return monitors.compactMap { unrecordable($0)?.message }
    }

    /// The reason monitor `g` cannot be recorded, or nil.
    private func unrecordable(_ g: Geometry) -> CaptureError? {
        if let outside = g.outside {
            return CaptureError(.monitorUnsupported, "monitor \(SafeText.escaped(g.name)) (\(outside)): nothing of it can be recorded")
        }
        guard case .video = output, !Self.canRecord(width: g.width, height: g.height, encoding: .video(keyframeIntervalMs: 0)) else {
            return nil
        }
        return CaptureError(.monitorUnsupported, Self.unsupportedMessage(g.name, g.width, g.height))
    }

    /// Forgets the previous frames, so the next `captureAll` encodes every monitor (for a
    /// periodic full frame, e.g. when a new DEK session starts, and for benchmarks).
    public func resetChangeDetection() {
        previous.removeAll()
    }

    /// Ends the video stream of `monitor` (nil: of every monitor), so its next frame is
    /// grabbed and encoded as the keyframe of a new stream. Call it when a packet of the stream
    /// was not kept (dropped, refused, evicted) or a new DEK starts.
    public func restartStreams(monitor: Int? = nil) {
        if let monitor {
            streams[monitor] = nil
            previous[monitor] = nil
        } else {
            streams.removeAll()
            previous.removeAll()
        }
    }

    /// The monitors that currently have a video stream, with its id and packets so far (tests, logs).
    public var streamSummary: [Int: (streamID: String, packets: Int)] {
        streams.mapValues { ($0.streamID, $0.packetCount) }
    }

    deinit {
        connection?.shmBuffers.removeAll()
        connection = nil
    }

    /// Captures every monitor once: a `.changed` frame with PNG for each monitor whose raw
    /// pixels differ from its previous frame, `.unchanged` for the others. Frames are stamped
    /// with `now` (ms since the epoch, UTC), plus any wait for a resize burst to pass
    /// (`resizeRetryDelaysMs`, at most 1,270 ms in all).
    /// A monitor that cannot be recorded (a size the video encoder does not take, an encoder
    /// failure) is `.skipped` with the reason; the other monitors are captured as usual.
    /// - Throws: `CaptureError.displayUnavailable` while the display is down (no frame is
    ///   produced for that time), `.xProtocolError` naming the failed request.
    public func captureAll(now: Date = Date()) throws -> [FrameCapture] {
        let conn = try ensureConnection(now: now)
        do {
            return try capture(conn, now: now)
        } catch let error as CaptureError {
            if conn.display.isDead || error.code == .displayUnavailable {
                let lost = conn.display.lostError()
                dropConnection(now: now, error: lost)
                health.failed(lost)
                throw lost
            }
            throw error
        }
    }

    // MARK: - Connection management

    private func ensureConnection(now: Date) throws -> Connection {
        if let connection { return connection }
        let conn = try gate.attempt(now: now, health: health) {
            let display = try X11Display(name: displayName, xauthority: xauthority, source: xauthoritySource)
            return (try Connection(display: display, logger: logger), display.name)
        }
        connection = conn
        previous.removeAll()
        streams.removeAll()
        return conn
    }

    /// Forgets a lost connection; the next attempt comes after the first backoff delay.
    private func dropConnection(now: Date, error: CaptureError) {
        connection?.shmBuffers.removeAll()
        connection = nil
        previous.removeAll()
        streams.removeAll()
        gate.lost(error, now: now)
    }

    // MARK: - Capture

    private func capture(_ conn: Connection, now: Date) throws -> [FrameCapture] {
        var timeMs = Int64((now.timeIntervalSince1970 * 1000).rounded())
        var lastError: CaptureError?
        // Take the damage first: anything drawn after this point is caught next time.
        var damaged = try takeDamage(conn)
        // The exclusion mask now; a new one (a window excluded, moved, covered, uncovered)
        // grabs every monitor, DAMAGE or not.
        let (rules, generation) = policy.current
        if rules.hasExclusions {
            if conn.exclusion == nil { conn.exclusion = try ExclusionTracker(display: conn.display, reader: WindowReader(conn.display)) }
            try conn.exclusion!.update(rules: rules, generation: generation)
        } else if let tracker = conn.exclusion {
            tracker.stop()
            conn.exclusion = nil
        }
        let mask = conn.exclusion?.rects ?? []
        if mask != lastMask { damaged = nil }
        // A RandR resize between reading the geometry and grabbing makes a strip's grab fail
        // with BadMatch; re-read the geometry and grab the whole frame again, so no frame is
        // sheared or stale. During a burst of resizes (a VM window being dragged, `xrandr` in
        // a loop) the retries back off, so one quiet moment of a few ms is enough.
        for delayMs in Self.resizeRetryDelaysMs {
            if delayMs > 0 {
                usleep(UInt32(delayMs) * 1000)
                timeMs += Int64(delayMs)  // the frame shows the screen after the wait
            }
            let monitors = try readMonitors(conn)
            var frames: [FrameCapture] = []
            var hashes: [Int: (geometry: Geometry, hash: UInt64)] = [:]
            do {
                for (index, geometry) in monitors.enumerated() {
                    if let problem = unrecordable(geometry) {
                        // Reported once while it stays the same and its part of the screen does
                        // not change (no capture was lost then); again on each change.
                        streams[index] = nil
                        let same = previous[index]?.geometry == geometry
                        let quiet = same && (geometry.outside != nil || damaged.map { d in !d.contains { $0.intersects(geometry) } } == true)
                        hashes[index] = (geometry, 0)
                        frames.append(quiet ? .unchanged(monitor: index) : .skipped(monitor: index, error: problem))
                        continue
                    }
                    if let damaged, let last = previous[index], last.geometry == geometry,
                       !damaged.contains(where: { $0.intersects(geometry) }) {
                        hashes[index] = last
                        frames.append(.unchanged(monitor: index))
                        continue
                    }
                    let frame = try grab(conn, index: index, geometry: geometry, timeMs: timeMs, hashes: &hashes)
                    frames.append(frame)
                }
            } catch let error as CaptureError where error.code != .xProtocolError || conn.display.isDead {
                // Any other failure ends this round: packets already encoded in it are thrown away,
                // so their streams must not go on from them (a hole): those monitors start anew.
                for case .packet(let meta, _) in frames { streams[meta.monitor] = nil }
                throw error
            } catch let error as CaptureError where error.code == .xProtocolError && !conn.display.isDead {
                lastError = error
                // Packets already encoded in this attempt are thrown away with it: their streams
                // must not go on from them (a hole), so those monitors start new streams.
                for case .packet(let meta, _) in frames { streams[meta.monitor] = nil }
                conn.shmBuffers.removeAll()
                damaged = nil  // grab everything on the retry
                continue
            }
            previous = hashes
            lastMask = conn.exclusion?.rects ?? []
            // A monitor gone (or renumbered) takes its stream with it.
            for index in streams.keys where index >= monitors.count { streams[index] = nil }
            return frames
        }
        throw lastError ?? CaptureError(.xProtocolError, "screen geometry kept changing during capture")
    }

    /// Waits before each attempt at a frame whose grab failed while the screen geometry was
    /// changing, in ms: nine attempts within 1,270 ms, after which the capture throws the last
    /// X error.
    static let resizeRetryDelaysMs = [0, 10, 20, 40, 80, 160, 240, 320, 400]

    /// The root-window rectangles damaged since the last call, or nil when DAMAGE is not
    /// available (then every monitor is grabbed and hashed).
    private func takeDamage(_ conn: Connection) throws -> [Geometry]? {
        guard let damage = conn.damage else { return nil }
        let dpy = conn.display.dpy
        cx11_damage_subtract(dpy, damage.major, damage.id, damage.parts)
        var count: Int32 = 0
        let rects = XFixesFetchRegion(dpy, damage.parts, &count)
        defer { if let rects { XFree(rects) } }
        try conn.display.check("fetching the damaged region")
        guard let rects, count > 0 else { return [] }  // Xlib returns no array for an empty region
        return (0..<Int(count)).map {
            Geometry(name: "", x: Int(rects[$0].x), y: Int(rects[$0].y), width: Int(rects[$0].width),
                     height: Int(rects[$0].height))
        }
    }

    private func readMonitors(_ conn: Connection) throws -> [Geometry] {
        let dpy = conn.display.dpy
        let root = conn.display.root
        var rootReturn: Window = 0
        var x: Int32 = 0, y: Int32 = 0
        var width: UInt32 = 0, height: UInt32 = 0, border: UInt32 = 0, depth: UInt32 = 0
        let ok = XGetGeometry(dpy, root, &rootReturn, &x, &y, &width, &height, &border, &depth)
        try conn.display.check("reading the root window geometry")
        guard ok != 0 else { throw conn.display.lostError() }
        let rootW = Int(width), rootH = Int(height)
        var result: [Geometry] = []
        if conn.hasRandR {
            var count: Int32 = 0
            if let monitors = XRRGetMonitors(dpy, root, 1, &count) {
                defer { XRRFreeMonitors(monitors) }
                for i in 0..<Int(count) {
                    let m = monitors[i]
                    let x0 = max(0, Int(m.x)), y0 = max(0, Int(m.y))
                    let x1 = min(rootW, Int(m.x) + Int(m.width)), y1 = min(rootH, Int(m.y) + Int(m.height))
                    let name: String
                    if let cached = conn.atomNames[m.name] {
                        name = cached
                    } else {
                        name = conn.display.atomName(m.name) ?? "monitor-\(i)"
                        conn.atomNames[m.name] = name
                    }
                    guard x1 > x0, y1 > y0 else {
                        result.append(Geometry(name: name, x: Int(m.x), y: Int(m.y), width: 0, height: 0,
                                               outside: "\(m.width)x\(m.height)+\(m.x)+\(m.y) lies outside the \(rootW)x\(rootH) screen"))
                        continue
                    }
                    result.append(Geometry(name: name, x: x0, y: y0, width: x1 - x0, height: y1 - y0))
                }
            }
            try conn.display.check("listing RandR monitors")
        }
        if result.isEmpty {
            result = [Geometry(name: "root", x: 0, y: 0, width: rootW, height: rootH)]
        }
        return result
    }

    /// Rows per grab request. A 1920-pixel-wide strip of 64 rows is 480 KiB of shared memory
    /// (or of `XGetImage` reply), where a whole 1920×1080 frame would keep 8 MiB resident for
    /// the agent's lifetime; hashing and libpng both consume rows in order, so nothing needs
    /// the frame whole.
    static let stripRows = 64

    /// Grabs monitor `g` strip by strip, top to bottom, and hands each strip to `body` as
    /// (pixels of its first new row, row count, that row's index in the monitor (even except
    /// possibly for the last strip's), stride in bytes, pixel format). The last strip is grabbed
    /// overlapping the one before so every request has the same size.
    /// - Throws: `CaptureError.xProtocolError` naming the failed request, `.displayUnavailable`.
    private func forEachStrip(_ conn: Connection, index: Int, geometry g: Geometry,
                              _ body: (UnsafeRawPointer, Int, Int, Int, PixelFormat) throws -> Void) throws {
        let stripHeight = min(Self.stripRows, g.height)
        var y = 0
        while y < g.height {
            let top = min(y, g.height - stripHeight)
            let skip = y - top
            let rows = stripHeight - skip
            let buffer = try grabStrip(conn, index: index, geometry: g, top: top, height: stripHeight)
            try withExtendedLifetime(buffer) {
                guard let pixels = buffer.data else {
                    throw CaptureError(.unsupportedFormat, "X image for monitor \(SafeText.escaped(g.name)) has no pixel data")
                }
                let format = PixelFormat(bitsPerPixel: buffer.bitsPerPixel, msbFirst: buffer.msbFirst,
                                         redMask: conn.format.red.mask, greenMask: conn.format.green.mask,
                                         blueMask: conn.format.blue.mask)
                let first = pixels + skip * buffer.bytesPerLine
                if let rects = conn.exclusion?.rects, !rects.isEmpty {
                    // Excluded pixels are overwritten in this process's own buffer, before
                    // anything hashes, converts or encodes them.
                    let pixel = format == conn.format ? conn.maskPixel
                        : format.pixelBytes(red: WindowRules.maskColor.red, green: WindowRules.maskColor.green,
                                            blue: WindowRules.maskColor.blue)
                    paintMask(rects, pixel: pixel, into: UnsafeMutableRawPointer(mutating: first), originX: g.x,
                              originY: g.y + y, width: g.width, rows: rows, stride: buffer.bytesPerLine)
                }
                try body(first, rows, y, buffer.bytesPerLine, format)
            }
            y += rows
        }
    }

    /// One `g.width`×`height` strip of monitor `g` starting `top` rows down: from the
    /// monitor's reused MIT-SHM buffer, or a fresh `XGetImage` (freed when released).
    private func grabStrip(_ conn: Connection, index: Int, geometry g: Geometry, top: Int,
                           height: Int) throws -> XImageBuffer {
        let display = conn.display
        let what = "monitor \(SafeText.escaped(g.name)) \(g.width)x\(g.height)+\(g.x)+\(g.y) (rows \(top)..<\(top + height))"
        if conn.useShm {
            let buffer: XImageBuffer
            if let existing = conn.shmBuffers[index], existing.width == g.width, existing.height == height {
                buffer = existing
            } else {
                conn.shmBuffers[index] = nil
                do {
                    buffer = try XImageBuffer(shmFor: display, width: g.width, height: height)
                    conn.shmBuffers[index] = buffer
                } catch let error as CaptureError where !display.isDead {
                    logger.info("MIT-SHM unusable on this display; using XGetImage",
                                metadata: ["capture.display": "\(display.name)", "capture.error": "\(error)"])
                    conn.useShm = false
                    return try grabStrip(conn, index: index, geometry: g, top: top, height: height)
                }
            }
            let ok = XShmGetImage(display.dpy, display.root, buffer.image, Int32(g.x), Int32(g.y + top),
                                  UInt(bitPattern: ~0))
            try display.check("grabbing \(what) with XShmGetImage")
            guard ok != 0 else { throw display.lostError() }
            return buffer
        }
        let image = XGetImage(display.dpy, display.root, Int32(g.x), Int32(g.y + top), UInt32(g.width), UInt32(height),
                              UInt(bitPattern: ~0), ZPixmap)
        try display.check("grabbing \(what) with XGetImage")
        guard let image else { throw display.lostError() }
        return XImageBuffer(takingOwnership: image, display: display)
    }

    private func grab(_ conn: Connection, index: Int, geometry g: Geometry, timeMs: Int64,
                      hashes: inout [Int: (geometry: Geometry, hash: UInt64)]) throws -> FrameCapture {
        // Pass 1 (only when there is a previous frame to compare with): hash the raw rows, so a
        // repaint with identical pixels costs a grab and a hash, not a PNG encode.
        if let last = previous[index], last.geometry == g {
            var hasher: RowHasher?
            try forEachStrip(conn, index: index, geometry: g) { pixels, rows, _, stride, format in
                if hasher == nil { hasher = RowHasher(rowBytes: g.width * format.bytesPerPixel) }
                hasher!.update(pixels, rows: rows, stride: stride)
            }
            if let hasher, hasher.value == last.hash {
                hashes[index] = last
                return .unchanged(monitor: index)
            }
        }
        // Pass 2: grab again and encode, hashing exactly the rows that are encoded. Strips are
        // separate requests: a window redrawn between two of them can show its old state in
        // one strip and its new state in the next (the next capture then has both new).
        switch output {
        case .png(let encoder):
            return try withCurrentMask(conn) {
                try grabPNG(conn, index: index, geometry: g, timeMs: timeMs, encoder: encoder, hashes: &hashes)
            }
        case .video(let interval):
            return try grabVideo(conn, index: index, geometry: g, timeMs: timeMs, keyframeIntervalMs: interval,
                                 hashes: &hashes)
        }
    }

    /// How many times a grab is repeated because an excluded window moved (or was uncovered)
    /// while it was read, before the last try holds the server (`XGrabServer`) for it.
    static let maskRetries = 2

    /// Runs `grab` (which reads strips painted with the current mask) until no notification
    /// changed the mask meanwhile: after each run, `ExclusionTracker.changedSinceUpdate` waits
    /// for the server's notifications up to now; when the mask moved, the frame may show an
    /// excluded window where it was not painted, so it is grabbed again with the new mask.
    /// After `maskRetries` repeats (a window being dragged), the last run holds the server, so
    /// nothing can move during it. Without exclusions it runs `grab` once.
    private func withCurrentMask<T>(_ conn: Connection, _ grab: () throws -> T) throws -> T {
        guard let tracker = conn.exclusion else { return try grab() }
        let (rules, generation) = policy.current
        for _ in 0...Self.maskRetries {
            let result = try grab()
            if try !tracker.changedSinceUpdate(rules: rules, generation: generation) { return result }
        }
        let dpy = conn.display.dpy
        XGrabServer(dpy)
        defer {
            XUngrabServer(dpy)
            XFlush(dpy)
        }
        try tracker.update(rules: rules, generation: generation)
        return try grab()
    }

    /// Grabs monitor `g` strip by strip (``forEachStrip``), hashes each strip's raw rows into
    /// `hasher`, and hands `body` rows an encoder reads: as they are when the layout is one of
    /// ``RGBLayout``'s, else converted to packed RGB once (depth 15/16, odd masks), as
    /// (pixels, row count, first row, stride in bytes, layout).
    /// - Throws: `CaptureError.xProtocolError` when the monitor gave no rows, and what
    ///   `forEachStrip` or `body` throw.
    private func forEachEncodableStrip(_ conn: Connection, index: Int, geometry g: Geometry, hasher: inout RowHasher?,
                                       _ body: (UnsafeRawPointer, Int, Int, Int, RGBLayout) throws -> Void) throws {
        var rowHasher: RowHasher?
        try forEachStrip(conn, index: index, geometry: g) { pixels, rows, firstRow, stride, format in
            if rowHasher == nil { rowHasher = RowHasher(rowBytes: g.width * format.bytesPerPixel) }
            rowHasher!.update(pixels, rows: rows, stride: stride)
            if let layout = format.directLayout {
                try body(pixels, rows, firstRow, stride, layout)
            } else {
                format.convertToRGB(pixels, width: g.width, height: rows, stride: stride, into: &convertBuffer)
                try convertBuffer.withUnsafeBytes { raw in
                    try body(raw.baseAddress!, rows, firstRow, g.width * 3, .rgb)
                }
            }
        }
        guard rowHasher != nil else {
            throw CaptureError(.xProtocolError, "monitor \(SafeText.escaped(g.name)) \(g.width)x\(g.height) gave no rows")
        }
        hasher = rowHasher
    }

    /// Pass 2 of `grab` for PNG: the strips go into one libpng stream.
    private func grabPNG(_ conn: Connection, index: Int, geometry g: Geometry, timeMs: Int64, encoder: PNGEncoder,
                         hashes: inout [Int: (geometry: Geometry, hash: UInt64)]) throws -> FrameCapture {
        var hasher: RowHasher?
        var stream: PNGStream?
        let png: Data
        do {
            try forEachEncodableStrip(conn, index: index, geometry: g, hasher: &hasher) { pixels, rows, _, stride, layout in
                if stream == nil { stream = try encoder.begin(width: g.width, height: g.height, layout: layout) }
                try stream!.write(rows: rows, from: pixels, stride: stride)
            }
            png = try stream!.finish()
        } catch let error as VideoError {
            return .skipped(monitor: index, error: CaptureError(.encoding, "monitor \(SafeText.escaped(g.name)) \(g.width)x\(g.height): \(error)"))
        }
        hashes[index] = (g, hasher!.value)
        let meta = FrameMetadata(monitor: index, monitorName: g.name, x: g.x, y: g.y, width: g.width,
                                 height: g.height, captureTimeMs: timeMs)
        return .changed(meta, png: png)
    }

    /// Pass 2 of `grab` for video: rows go from each strip into the monitor's stream picture
    /// (converted to I420 by libyuv; depth 15/16 and odd masks through packed RGB first), then
    /// the picture is encoded as the stream's next packet. A new stream starts when there is
    /// none, or the monitor's size or name changed.
    private func grabVideo(_ conn: Connection, index: Int, geometry g: Geometry, timeMs: Int64,
                           keyframeIntervalMs: Int64,
                           hashes: inout [Int: (geometry: Geometry, hash: UInt64)]) throws -> FrameCapture {
        if let stream = streams[index], stream.width != g.width || stream.height != g.height
            || previous[index].map({ $0.geometry.name != g.name }) == true {
            streams[index] = nil
        }
        do {
            let stream: MonitorStream
            if let existing = streams[index] {
                stream = existing
            } else {
                stream = try MonitorStream(monitor: index, width: g.width, height: g.height,
                                           keyframeIntervalMs: keyframeIntervalMs)
                streams[index] = stream
            }
            // An X error mid-frame leaves the picture half-filled but the encoder untouched: the
            // retry refills it whole.
            var hasher: RowHasher?
            try withCurrentMask(conn) {
                try forEachEncodableStrip(conn, index: index, geometry: g, hasher: &hasher) { pixels, rows, firstRow, stride, layout in
                    try stream.picture.write(rows: pixels, firstRow: firstRow, rowCount: rows, stride: stride, layout: layout)
                }
            }
            let (meta, packet) = try stream.encode(timeMs: timeMs, monitorName: g.name, x: g.x, y: g.y)
            hashes[index] = (g, hasher!.value)
            return .packet(meta, packet: packet)
        } catch let error as VideoError {
            streams[index] = nil  // the encoder's state is unknown: the next frame starts a new stream
            return .skipped(monitor: index, error: CaptureError(.encoding, "monitor \(SafeText.escaped(g.name)) \(g.width)x\(g.height): \(error)"))
        }
    }

    /// Why a `width`×`height` monitor is not recorded as video (for the capture's `.skipped`
    /// and for `--check-config`): names the monitor (escaped) and the range.
    public static func unsupportedMessage(_ name: String, _ width: Int, _ height: Int) -> String {
        "monitor \(SafeText.escaped(name)) is \(width)x\(height): video records monitors whose sides are "
            + "\(AV1Encoder.sideRange.lowerBound) to \(AV1Encoder.sideRange.upperBound) pixels, so it is not recorded "
            + "while it has this size (screen-format=png records it)"
    }

    /// Whether `encoding` can record a `width`×`height` monitor.
    public static func canRecord(width: Int, height: Int, encoding: ScreenEncoding) -> Bool {
        switch encoding {
        case .png: width > 0 && height > 0
        case .video: AV1Encoder.sideRange.contains(width) && AV1Encoder.sideRange.contains(height)
        }
    }
}
