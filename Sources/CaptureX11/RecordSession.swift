import CX11
import CaptureCore
import CaptureFormat
import Foundation
import Logging

/// One RECORD session: the control and data connections, the record context and the key
/// translator. Created by `start()` or on reconnection, then used only by the record thread.
final class RecordSession {
    enum End { case stopped, lost(CaptureError) }

    private let control: X11Display
    private let data: X11Display
    private let context: RecordContext
    private let translator: KeyTranslator
    private let sink: ChunkSink
    private let logger: Logger
    private let xkbMajor: UInt8
    private var enabled = false
    private var disabled = false
    private var endOfData = false
    fileprivate var failure: CaptureError?
    private var focusCache: (window: Window, title: String, wmClass: String, read: Date)?
    private let atomNetWMName: Atom
    private let atomUTF8: Atom
    private let atomCompoundText: Atom

    /// Opens both connections, checks RECORD and XKEYBOARD, creates and enables the context.
    /// - Throws: `CaptureError.displayUnavailable`, `.extensionUnavailable`, `.xProtocolError`.
    init(display: String?, xauthority: String?, sink: ChunkSink, logger: Logger) throws {
        control = try X11Display(name: display, xauthority: xauthority)
        let dpy = control.dpy
        var major: Int32 = 0, event: Int32 = 0, error: Int32 = 0
        guard XQueryExtension(dpy, "RECORD", &major, &event, &error) != 0 else {
            throw CaptureError(.extensionUnavailable,
                               "X display \(control.name) has no RECORD extension: keystroke capture is unavailable")
        }
        control.registerExtension("RECORD", majorOpcode: major)
        var recMajor: Int32 = 0, recMinor: Int32 = 0
        guard XRecordQueryVersion(dpy, &recMajor, &recMinor) != 0 else {
            throw CaptureError(.extensionUnavailable, "RECORD on \(control.name) did not answer QueryVersion")
        }
        var xkbOpcode: Int32 = 0, xkbEvent: Int32 = 0, xkbError: Int32 = 0
        var xkbMaj: Int32 = 1, xkbMin: Int32 = 0
        guard XkbQueryExtension(dpy, &xkbOpcode, &xkbEvent, &xkbError, &xkbMaj, &xkbMin) != 0 else {
            throw CaptureError(.extensionUnavailable,
                               "X display \(control.name) has no XKEYBOARD extension: keystroke capture is unavailable")
        }
        control.registerExtension("XKEYBOARD", majorOpcode: xkbOpcode)
        xkbMajor = UInt8(truncatingIfNeeded: xkbOpcode)
        // Keymap changes reach the translator from the record stream (requests) and from
        // these notifications on the control connection.
        _ = XkbSelectEvents(dpy, UInt32(XkbUseCoreKbd), UInt32(XkbNewKeyboardNotifyMask | XkbMapNotifyMask),
                            UInt32(XkbNewKeyboardNotifyMask | XkbMapNotifyMask))
        atomNetWMName = XInternAtom(dpy, "_NET_WM_NAME", 0)
        atomUTF8 = XInternAtom(dpy, "UTF8_STRING", 0)
        atomCompoundText = XInternAtom(dpy, "COMPOUND_TEXT", 0)
        translator = KeyTranslator(display: control)

        // Ranges: key presses/releases, core ChangeKeyboardMapping (100) and the XKB requests
        // that replace the keymap (SetMap 9, GetKbdByName 23).
        var ranges: [UnsafeMutablePointer<XRecordRange>] = []
        defer { ranges.forEach { XFree($0) } }
        guard let keys = XRecordAllocRange(), let mapping = XRecordAllocRange(),
              let setMap = XRecordAllocRange(), let byName = XRecordAllocRange() else {
            throw CaptureError(.xProtocolError, "XRecordAllocRange failed")
        }
        ranges = [keys, mapping, setMap, byName]
        keys.pointee.device_events.first = UInt8(KeyPress)
        keys.pointee.device_events.last = UInt8(KeyRelease)
        mapping.pointee.core_requests.first = 100
        mapping.pointee.core_requests.last = 100
        setMap.pointee.ext_requests.ext_major.first = xkbMajor
        setMap.pointee.ext_requests.ext_major.last = xkbMajor
        setMap.pointee.ext_requests.ext_minor.first = 9
        setMap.pointee.ext_requests.ext_minor.last = 9
        byName.pointee.ext_requests.ext_major.first = xkbMajor
        byName.pointee.ext_requests.ext_major.last = xkbMajor
        byName.pointee.ext_requests.ext_minor.first = 23
        byName.pointee.ext_requests.ext_minor.last = 23
        var clients: XRecordClientSpec = XRecordClientSpec(XRecordAllClients)
        var rangeList: [UnsafeMutablePointer<XRecordRange>?] = ranges
        // Owned from here on: every throw below frees it (RecordContext.deinit).
        let context = RecordContext(takingOwnership: XRecordCreateContext(dpy, 0, &clients, 1, &rangeList,
                                                                          Int32(rangeList.count)), on: control)
        try control.sync("creating the record context")
        guard context.id != 0 else {
            throw CaptureError(.xProtocolError, "XRecordCreateContext failed on \(control.name)")
        }
        self.context = context
        data = try X11Display(name: display, xauthority: xauthority)
        self.sink = sink
        self.logger = logger
        let closure = Unmanaged.passUnretained(self).toOpaque().assumingMemoryBound(to: CChar.self)
        guard XRecordEnableContextAsync(data.dpy, context.id, custosRecordCallback, closure) != 0 else {
            throw CaptureError(.xProtocolError, "XRecordEnableContextAsync failed on \(control.name)")
        }
        enabled = true
        try data.check("enabling the record context")
    }

    deinit {
        // Only a fully initialised session has enabled its context; one whose init threw is
        // released without this, and its RecordContext frees the context by itself.
        shutdown()
    }

    /// How long one wait for X data may last (ms): it bounds how late `shouldStop` and an idle
    /// chunk are noticed. Each wake-up costs a little CPU; at 50 ms the 20 wake-ups per second
    /// were about 7% of the agent's CPU under `perf` (`Benchmarks/agent.sh`).
    static let pollTimeoutMs: Int32 = 200

    /// The display's name as shown in messages (escaped).
    var displayName: String { control.name }

    /// Processes recorded data until `shouldStop` or a lost connection, closing idle chunks.
    /// Waits on both connections, so recorded keys and keymap events wake it at once.
    func loop(shouldStop: () -> Bool) -> End {
        // Built once: poll(2) only writes `revents`, which each call overwrites.
        var fds = [pollfd(fd: XConnectionNumber(data.dpy), events: Int16(POLLIN), revents: 0),
                   pollfd(fd: XConnectionNumber(control.dpy), events: Int16(POLLIN), revents: 0)]
        while true {
            if shouldStop() { return .stopped }
            if control.isDead || data.isDead { return .lost(control.lostError()) }
            if let failure { return .lost(failure) }
            let ready = poll(&fds, 2, Self.pollTimeoutMs)
            let pfd = fds[0]
            if ready > 0 && pfd.revents != 0 {
                XRecordProcessReplies(data.dpy)
                if pfd.revents & Int16(POLLHUP | POLLERR) != 0 && !data.isDead {
                    // Let Xlib notice the closed socket and mark the display dead.
                    XRecordProcessReplies(data.dpy)
                    if !data.isDead { return .lost(data.lostError()) }
                }
            }
            drainControlEvents()
            sink.closeIfIdle(now: Date())
        }
    }

    /// Disables the context from the control connection, drains the data connection and frees
    /// the context. Safe to call twice and on dead connections.
    func shutdown() {
        guard !disabled else { return }
        disabled = true
        if enabled && !control.isDead {
            XRecordDisableContext(control.dpy, context.id)
            XFlush(control.dpy)
            // The data connection gets the remaining data and an EndOfData reply.
            let deadline = Date().addingTimeInterval(1)
            let fd = XConnectionNumber(data.dpy)
            while !endOfData && !data.isDead && Date() < deadline {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, 50) > 0 { XRecordProcessReplies(data.dpy) }
            }
        }
        context.free()
    }

    private func drainControlEvents() {
        let dpy = control.dpy
        while !control.isDead && XPending(dpy) > 0 {
            var event = XEvent()
            XNextEvent(dpy, &event)
            // Any map change: core MappingNotify, XkbMapNotify, XkbNewKeyboardNotify.
            translator.invalidate(clearOverrides: false)
        }
        _ = control.takeError()
    }

    // MARK: - Intercepted data (on the record thread, inside XRecordProcessReplies)

    fileprivate func handle(_ record: UnsafeMutablePointer<XRecordInterceptData>) {
        let r = record.pointee
        switch Int32(r.category) {
        case XRecordEndOfData:
            endOfData = true
        case XRecordFromServer:
            guard let bytes = r.data, r.data_len >= 8 else { return }
            let type = bytes[0] & 0x7f
            guard type == KeyPress || type == KeyRelease else { return }
            let pressed = type == KeyPress
            guard pressed || sink.includeReleases else { return }
            let keycode = bytes[1]
            let state = UInt16(bytes[28]) | UInt16(bytes[29]) << 8
            keyEvent(keycode: keycode, state: state, pressed: pressed)
        case XRecordFromClient:
            guard let bytes = r.data, r.data_len >= 1 else { return }
            if bytes[0] == 100, r.data_len >= 2 {
                // ChangeKeyboardMapping: count, length, first keycode, keysyms per keycode.
                let count = Int(bytes[1]), first = bytes[4], per = Int(bytes[5])
                let words = Int(r.data_len) - 2
                guard per > 0, words >= count * per else { return }
                var syms: [KeySym] = []
                syms.reserveCapacity(count * per)
                for i in 0..<(count * per) {
                    let p = UnsafeRawPointer(bytes + 8 + i * 4)
                    var v = p.loadUnaligned(as: UInt32.self)
                    if r.client_swapped != 0 { v = v.byteSwapped }
                    syms.append(KeySym(v))
                }
                translator.applyCoreMapping(firstKeycode: first, keysymsPerKeycode: per, keysyms: syms)
            } else if bytes[0] == xkbMajor {
                translator.invalidate(clearOverrides: true)
            }
        default:
            break
        }
    }

    private func keyEvent(keycode: UInt8, state: UInt16, pressed: Bool) {
        let text: String?
        do {
            text = try translator.text(keycode: keycode, state: state)
        } catch let error as CaptureError {
            if failure == nil { failure = error }
            return
        } catch {
            return
        }
        guard let text else { return }
        let now = Date()
        let focus = focusedWindow(now: now)
        let key = Keystroke(timeMs: Int64((now.timeIntervalSince1970 * 1000).rounded()), text: text,
                            pressed: pressed ? nil : false)
        sink.add(key, window: UInt(focus.window), title: focus.title, wmClass: focus.wmClass, now: now)
    }

    // MARK: - Window context

    /// The focused top-level window's title and WM_CLASS; re-read on a focus change and at
    /// most every 500 ms otherwise (titles change while typing, e.g. browser tabs).
    private func focusedWindow(now: Date) -> (window: Window, title: String, wmClass: String) {
        let dpy = control.dpy
        var focus: Window = 0
        var revert: Int32 = 0
        XGetInputFocus(dpy, &focus, &revert)
        _ = control.takeError()
        if let c = focusCache, c.window == focus, now.timeIntervalSince(c.read) < 0.5 {
            return (c.window, c.title, c.wmClass)
        }
        var title = "", wmClass = ""
        var w = focus
        // Walk up to the first window carrying WM_CLASS (the client's top-level).
        for _ in 0..<32 where w > 1 && w != control.root {
            if let cls = classHint(w) {
                wmClass = cls
                title = windowTitle(w) ?? ""
                break
            }
            var rootReturn: Window = 0, parent: Window = 0
            var children: UnsafeMutablePointer<Window>?
            var count: UInt32 = 0
            guard XQueryTree(dpy, w, &rootReturn, &parent, &children, &count) != 0 else { break }
            if let children { XFree(children) }
            w = parent
        }
        _ = control.takeError()
        focusCache = (focus, title, wmClass, now)
        return (focus, title, wmClass)
    }

    private func classHint(_ w: Window) -> String? {
        var hint = XClassHint()
        guard XGetClassHint(control.dpy, w, &hint) != 0 else { return nil }
        defer {
            if let n = hint.res_name { XFree(n) }
            if let c = hint.res_class { XFree(c) }
        }
        let name = hint.res_name.map { String(cString: $0) } ?? ""
        let cls = hint.res_class.map { String(cString: $0) } ?? ""
        return name + "." + cls
    }

    private func windowTitle(_ w: Window) -> String? {
        if let utf8 = property(w, atomNetWMName, type: atomUTF8) { return String(decoding: utf8, as: UTF8.self) }
        if let latin1 = property(w, Atom(XA_WM_NAME), type: Atom(XA_STRING)) {
            return String(latin1.map { Character(Unicode.Scalar($0)) })
        }
        if let compound = property(w, Atom(XA_WM_NAME), type: atomCompoundText) {
            return Self.decodeCompoundText(compound)
        }
        return nil
    }

    /// Decodes COMPOUND_TEXT (X Consortium "Compound Text Encoding" v1.1) as far as titles
    /// need: ASCII/Latin-1 (the initial state), `ESC ( B`, `ESC - A`, and UTF-8 segments
    /// (`ESC % G` … `ESC % @`). Characters in other charsets become U+FFFD. Independent of
    /// the process locale, unlike Xlib's converters.
    static func decodeCompoundText(_ bytes: [UInt8]) -> String {
        var out = ""
        var i = 0
        var utf8: [UInt8]? = nil
        var grLatin1 = true
        while i < bytes.count {
            let b = bytes[i]
            if b == 0x1b {
                let rest = bytes[(i + 1)...].prefix(2)
                if rest.elementsEqual([0x25, 0x47]) { utf8 = []; i += 3; continue }          // ESC % G
                if rest.elementsEqual([0x25, 0x40]) {                                         // ESC % @
                    if let u = utf8 { out += String(decoding: u, as: UTF8.self) }
                    utf8 = nil; i += 3; continue
                }
                if rest.elementsEqual([0x2d, 0x41]) { grLatin1 = true; i += 3; continue }    // ESC - A
                if rest.elementsEqual([0x28, 0x42]) { i += 3; continue }                     // ESC ( B
                // Another charset designation: skip the sequence (ESC, intermediates, final).
                i += 1
                while i < bytes.count && (0x20...0x2f).contains(bytes[i]) { i += 1 }
                i += 1
                if rest.first == 0x2d || rest.first == 0x24 { grLatin1 = false }
                continue
            }
            if utf8 != nil { utf8!.append(b); i += 1; continue }
            if b < 0x80 || grLatin1 { out.unicodeScalars.append(Unicode.Scalar(b)) } else { out += "\u{FFFD}" }
            i += 1
        }
        if let u = utf8 { out += String(decoding: u, as: UTF8.self) }
        return out
    }

    private func property(_ w: Window, _ atom: Atom, type: Atom) -> [UInt8]? {
        var actualType: Atom = 0
        var format: Int32 = 0
        var count: UInt = 0, after: UInt = 0
        var value: UnsafeMutablePointer<UInt8>?
        let status = XGetWindowProperty(control.dpy, w, atom, 0, 4096, 0, type, &actualType, &format, &count,
                                        &after, &value)
        defer { if let value { XFree(value) } }
        guard status == Success, actualType == type, format == 8, let value else { return nil }
        return Array(UnsafeBufferPointer(start: value, count: Int(count)))
    }
}

/// One RECORD context (X Record Extension Library, `XRecordCreateContext`); frees it with
/// `XRecordFreeContext` on the control connection exactly once: on `free()` or in `deinit`,
/// whichever comes first, so a context whose setup throws half-way is never leaked. Holds
/// the control connection, which must outlive the context.
final class RecordContext {
    let id: XRecordContext
    private let control: X11Display
    private var freed = false

    /// Takes ownership of `id` (0 when creation failed: nothing to free), created on `control`.
    init(takingOwnership id: XRecordContext, on control: X11Display) {
        self.id = id
        self.control = control
    }

    /// Frees the context (disable it first if it was enabled). Safe twice and on a dead display.
    func free() {
        guard !freed else { return }
        freed = true
        guard id != 0, !control.isDead else { return }
        XRecordFreeContext(control.dpy, id)
        XSync(control.dpy, 0)
        _ = control.takeError()
    }

    deinit { free() }
}

/// The RECORD intercept callback (XRecordEnableContextAsync). `closure` is the unretained
/// `RecordSession`, which outlives its enabled context. Frees every block it is given.
private func custosRecordCallback(_ closure: XPointer?, _ record: UnsafeMutablePointer<XRecordInterceptData>?) {
    guard let record else { return }
    defer { XRecordFreeData(record) }
    guard let closure else { return }
    let session = Unmanaged<RecordSession>.fromOpaque(UnsafeRawPointer(closure)).takeUnretainedValue()
    session.handle(record)
}
