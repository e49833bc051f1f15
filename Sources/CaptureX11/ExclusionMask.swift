import CX11
import CaptureCore
import Foundation

/// A rectangle in root-window coordinates, in pixels.
struct MaskRect: Hashable, Comparable, CustomStringConvertible {
    var x: Int, y: Int, width: Int, height: Int

    var isEmpty: Bool { width <= 0 || height <= 0 }

    func intersection(_ o: MaskRect) -> MaskRect? {
        let x0 = max(x, o.x), y0 = max(y, o.y)
        let x1 = min(x + width, o.x + o.width), y1 = min(y + height, o.y + o.height)
        return x1 > x0 && y1 > y0 ? MaskRect(x: x0, y: y0, width: x1 - x0, height: y1 - y0) : nil
    }

    /// This rectangle without `o`: up to four disjoint pieces (the bands above and below `o`,
    /// and left and right of it between them).
    func subtracting(_ o: MaskRect) -> [MaskRect] {
        guard let cut = intersection(o) else { return [self] }
        var pieces: [MaskRect] = []
        if cut.y > y { pieces.append(MaskRect(x: x, y: y, width: width, height: cut.y - y)) }
        if cut.y + cut.height < y + height {
            pieces.append(MaskRect(x: x, y: cut.y + cut.height, width: width, height: y + height - cut.y - cut.height))
        }
        if cut.x > x { pieces.append(MaskRect(x: x, y: cut.y, width: cut.x - x, height: cut.height)) }
        if cut.x + cut.width < x + width {
            pieces.append(MaskRect(x: cut.x + cut.width, y: cut.y, width: x + width - cut.x - cut.width, height: cut.height))
        }
        return pieces
    }

    static func < (a: MaskRect, b: MaskRect) -> Bool { (a.y, a.x, a.height, a.width) < (b.y, b.x, b.height, b.width) }
    var description: String { "\(width)x\(height)+\(x)+\(y)" }
}

extension PixelFormat {
    /// The bytes of one pixel of colour (r, g, b) in this format (each channel scaled to its
    /// mask's width, placed by shift, stored in the image's byte order), `bytesPerPixel` long.
    func pixelBytes(red r: UInt8, green g: UInt8, blue b: UInt8) -> [UInt8] {
        func scaled(_ v: UInt8, _ c: Channel) -> UInt32 {
            let maxValue = UInt32((1 << c.bits) - 1)
            return ((UInt32(v) * maxValue + 127) / 255) << UInt32(c.shift)
        }
        let value = scaled(r, red) | scaled(g, green) | scaled(b, blue)
        let n = bytesPerPixel
        return (0..<n).map { i in
            let byte = msbFirst ? n - 1 - i : i
            return UInt8(truncatingIfNeeded: value >> UInt32(8 * byte))
        }
    }
}

/// Paints `rects` (root coordinates) with `pixel` where they cover a strip: `rows` rows of
/// `width` pixels whose first pixel is at root (`originX`, `originY`), `stride` bytes apart.
func paintMask(_ rects: [MaskRect], pixel: [UInt8], into pixels: UnsafeMutableRawPointer, originX: Int, originY: Int,
               width: Int, rows: Int, stride: Int) {
    let strip = MaskRect(x: originX, y: originY, width: width, height: rows)
    let bpp = pixel.count
    for rect in rects {
        guard let cut = rect.intersection(strip) else { continue }
        for y in cut.y..<(cut.y + cut.height) {
            let row = pixels + (y - originY) * stride + (cut.x - originX) * bpp
            if bpp == 4 {
                let word = pixel.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
                let words = row.bindMemory(to: UInt32.self, capacity: cut.width)
                words.update(repeating: word, count: cut.width)
            } else {
                for x in 0..<cut.width {
                    for i in 0..<bpp { row.storeBytes(of: pixel[i], toByteOffset: x * bpp + i, as: UInt8.self) }
                }
            }
        }
    }
}

/// The parts of the screen that excluded windows show, kept current from the X server's
/// notifications (docs/CAPTURE.md "Pixel exclusions").
///
/// The top-level windows are the root's children in stacking order (`XQueryTree`: bottom to
/// top). Each viewable one is identified by its client window (a window manager's frame holds
/// it: ICCCM `WM_STATE`), and excluded when `WindowRules.isExcluded` says so. What is masked
/// is the window's whole outer rectangle (border and frame included: a frame's title bar shows
/// the title), minus every opaque viewable window above it. A window above counts as opaque
/// only when it is rectangular (no SHAPE bounding region) and not 32-bit ARGB (a compositor may
/// blend it): what shows through anything else stays masked.
///
/// Instead of asking for the whole tree at every frame, it selects `SubstructureNotify` on the
/// root and, on each top-level, `SubstructureNotify` and `PropertyChange` (and `PropertyChange`
/// on each client window), and recomputes only after a notification that can change the
/// answer: a window created, destroyed, mapped, unmapped, moved, resized, restacked or
/// reparented, or its class, title or `WM_STATE` set; or the rules changed. An idle desktop
/// costs one `XPending` per frame.
final class ExclusionTracker {
    private let display: X11Display
    private let reader: WindowReader
    private let relevantAtoms: Set<Atom>
    private let hasShape: Bool
    /// Windows this connection selected events on.
    private var watched: Set<Window> = []
    /// Top-level → its client window, and client window → identity (found ones only: a window
    /// without them is looked at again at the next recompute).
    private var clients: [Window: Window] = [:]
    private var identities: [Window: WindowIdentity] = [:]
    private var dirty = true
    private var generation = -1
    /// The rectangles to paint, sorted; empty when nothing excluded is visible.
    private(set) var rects: [MaskRect] = []

    /// Selects the root's structure notifications.
    /// - Throws: `CaptureError` when the connection is lost.
    init(display: X11Display, reader: WindowReader) throws {
        self.display = display
        self.reader = reader
        let dpy = display.dpy
        let names: [String] = ["WM_NAME", "_NET_WM_NAME", "WM_CLASS", "WM_STATE"]
        relevantAtoms = Set(names.map { XInternAtom(dpy, $0, 0) })
        var event: Int32 = 0, error: Int32 = 0
        hasShape = XShapeQueryExtension(dpy, &event, &error) != 0
        XSelectInput(dpy, display.root, SubstructureNotifyMask)
        try display.sync("selecting SubstructureNotify on the root window")
    }

    /// Stops watching: clears this connection's event selections on every window it watched.
    func stop() {
        guard !display.isDead else { return }
        XSelectInput(display.dpy, display.root, 0)
        for w in watched { XSelectInput(display.dpy, w, 0) }
        XSync(display.dpy, 0)
        _ = display.takeError()
        watched.removeAll()
    }

    /// Brings `rects` up to date for `rules` (generation `generation` of the policy): drains the
    /// notifications and recomputes when one of them, or the rules, can have changed it.
    /// Returns whether `rects` changed.
    /// - Throws: `CaptureError.displayUnavailable` when the connection is lost.
    @discardableResult
    func update(rules: WindowRules, generation: Int) throws -> Bool {
        drain()
        if generation != self.generation { dirty = true }
        guard dirty else { return false }
        dirty = false
        self.generation = generation
        let fresh = try compute(rules)
        defer { rects = fresh }
        return fresh != rects
    }

    /// After a frame was grabbed with `rects`: waits until the server has sent every
    /// notification up to now (`XSync`), and recomputes when one came. Returns whether `rects`
    /// changed (the frame may show an excluded window where the mask was not: grab it again).
    func changedSinceUpdate(rules: WindowRules, generation: Int) throws -> Bool {
        XSync(display.dpy, 0)
        if display.isDead { throw display.lostError() }
        return try update(rules: rules, generation: generation)
    }

    private func drain() {
        let dpy = display.dpy
        while !display.isDead && XPending(dpy) > 0 {
            var event = XEvent()
            XNextEvent(dpy, &event)
            switch event.type {
            case PropertyNotify:
                guard relevantAtoms.contains(event.xproperty.atom) else { continue }
                identities[event.xproperty.window] = nil
                clients = clients.filter { $0.value != event.xproperty.window }
            case DestroyNotify:
                let w = event.xdestroywindow.window
                identities[w] = nil
                clients[w] = nil
                watched.remove(w)
            case ReparentNotify:
                clients.removeAll()
            case CreateNotify, MapNotify, UnmapNotify, ConfigureNotify, CirculateNotify, GravityNotify:
                break
            default:
                continue  // nothing that moves a window or changes what it is
            }
            dirty = true
        }
        if identities.count > 4096 { identities.removeAll() }
    }

    private struct TopLevel {
        var rect: MaskRect
        var opaque: Bool
        var excluded: Bool
    }

    private func compute(_ rules: WindowRules) throws -> [MaskRect] {
        let dpy = display.dpy
        let tops = reader.children(display.root)
        // Select before reading, so a change after the read is notified.
        for w in tops where !watched.contains(w) {
            XSelectInput(dpy, w, SubstructureNotifyMask | PropertyChangeMask)
            watched.insert(w)
        }
        var windows: [TopLevel] = []
        for w in tops {
            var attributes = XWindowAttributes()
            guard XGetWindowAttributes(dpy, w, &attributes) != 0, attributes.map_state == IsViewable,
                  attributes.`class` == InputOutput else { continue }
            let border = Int(attributes.border_width)
            let rect = MaskRect(x: Int(attributes.x), y: Int(attributes.y), width: Int(attributes.width) + 2 * border,
                                height: Int(attributes.height) + 2 * border)
            let excluded = identity(ofTopLevel: w).map(rules.isExcluded) ?? false
            windows.append(TopLevel(rect: rect, opaque: attributes.depth != 32 && !isShaped(w), excluded: excluded))
        }
        XSync(dpy, 0)
        if display.isDead { throw display.lostError() }
        _ = display.takeError()  // a window destroyed meanwhile: its notification makes us look again
        var out: [MaskRect] = []
        for (i, window) in windows.enumerated() where window.excluded {
            var visible = [window.rect]
            for above in windows[(i + 1)...] where above.opaque {
                visible = visible.flatMap { $0.subtracting(above.rect) }
                if visible.isEmpty { break }
            }
            out += visible
        }
        return out.sorted()
    }

    private func isShaped(_ w: Window) -> Bool {
        guard hasShape else { return false }
        var bounding: Int32 = 0, clip: Int32 = 0
        var xb: Int32 = 0, yb: Int32 = 0, xc: Int32 = 0, yc: Int32 = 0
        var wb: UInt32 = 0, hb: UInt32 = 0, wc: UInt32 = 0, hc: UInt32 = 0
        guard XShapeQueryExtents(display.dpy, w, &bounding, &xb, &yb, &wb, &hb, &clip, &xc, &yc, &wc, &hc) != 0 else {
            return false
        }
        return bounding != 0
    }

    /// The identity of top-level `w` through its client window; nil when none is found yet (then
    /// the windows below it are watched for the `WM_STATE` a window manager sets on its client).
    private func identity(ofTopLevel w: Window) -> WindowIdentity? {
        let client: Window
        if let known = clients[w] {
            client = known
        } else {
            var visited: [Window] = []
            guard let found = reader.clientWindow(w, visited: &visited) else {
                for v in visited where !watched.contains(v) {
                    XSelectInput(display.dpy, v, PropertyChangeMask | SubstructureNotifyMask)
                    watched.insert(v)
                }
                return nil
            }
            client = found
            clients[w] = found
            if !watched.contains(found) {
                XSelectInput(display.dpy, found, PropertyChangeMask)
                watched.insert(found)
            }
        }
        if let known = identities[client] { return known }
        guard let identity = reader.identity(client) else { return nil }
        identities[client] = identity
        return identity
    }
}
