import CX11
import CaptureCore
import CaptureFormat
import Foundation
import Logging

/// One RECORD session: the control and data connections, the record context, the key
/// translator and the keyboard grab state. Created by `start()` or on reconnection, then used
/// only by the record thread.
final class RecordSession {
    enum End { case stopped, lost(CaptureError) }

    private let control: X11Display
    private let data: X11Display
    private let context: RecordContext
    private let translator: KeyTranslator
    private let sink: ChunkSink
    private let policy: CapturePolicy
    private let logger: Logger
    private let xkbMajor: UInt8
    /// XInputExtension's major opcode when the server has XI 2 (for XIGrabDevice), else nil.
    private let xiMajor: UInt8?
    private var grabs = KeyboardGrabs()
    /// Per XI device id: its grab slot (0 for a master keyboard, its id for a slave keyboard),
    /// nil for a device that is not a keyboard (read once with XIQueryDevice).
    private var xiSlots: [Int: Int?] = [:]
    private let windows: WindowReader
    private var enabled = false
    private var disabled = false
    private var endOfData = false
    /// Whether the context's StartOfData came: recording is enabled from that point of the stream.
    private var startOfData = false
    fileprivate var failure: CaptureError?
    private var focusCache: (window: Window, identity: WindowIdentity, read: Date)?

    /// Opens both connections, checks RECORD and XKEYBOARD, creates and enables the context.
    /// - Throws: `CaptureError.displayUnavailable`, `.extensionUnavailable`, `.xProtocolError`.
    init(display: String?, xauthority: String?, source: String?, sink: ChunkSink, policy: CapturePolicy, logger: Logger) throws {
        control = try X11Display(name: display, xauthority: xauthority, source: source)
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
        windows = WindowReader(control)
        translator = KeyTranslator(display: control)
        // XI 2 device grabs (GTK 3 prompts grab with XIGrabDevice); XIQueryVersion must come
        // before any XI 2 request of this connection.
        var xiOpcode: Int32 = 0, xiEvent: Int32 = 0, xiError: Int32 = 0
        if XQueryExtension(dpy, "XInputExtension", &xiOpcode, &xiEvent, &xiError) != 0, control.queryXInput2() {
            control.registerExtension("XInputExtension", majorOpcode: xiOpcode)
            xiMajor = UInt8(truncatingIfNeeded: xiOpcode)
        } else {
            xiMajor = nil
        }
        _ = control.takeError()

        // Ranges: key presses/releases, core ChangeKeyboardMapping (100) and the XKB requests
        // that replace the keymap (SetMap 9, GetKbdByName 23); keyboard grabs: core
        // GrabKeyboard (31) with its reply and UngrabKeyboard (32), XI 2 XIGrabDevice (51)
        // with its reply and XIUngrabDevice (52), and client disconnections.
        var ranges: [UnsafeMutablePointer<XRecordRange>] = []
        defer { ranges.forEach { XFree($0) } }
        guard let keys = XRecordAllocRange(), let mapping = XRecordAllocRange(),
              let setMap = XRecordAllocRange(), let byName = XRecordAllocRange(), let grabRange = XRecordAllocRange() else {
            throw CaptureError(.xProtocolError, "XRecordAllocRange failed")
        }
        ranges = [keys, mapping, setMap, byName, grabRange]
        grabRange.pointee.core_requests.first = 31
        grabRange.pointee.core_requests.last = 32
        grabRange.pointee.core_replies.first = 31
        grabRange.pointee.core_replies.last = 31
        grabRange.pointee.client_died = 1
        if let xiMajor {
            guard let xiRange = XRecordAllocRange() else { throw CaptureError(.xProtocolError, "XRecordAllocRange failed") }
            ranges.append(xiRange)
            xiRange.pointee.ext_requests.ext_major.first = xiMajor
            xiRange.pointee.ext_requests.ext_major.last = xiMajor
            xiRange.pointee.ext_requests.ext_minor.first = 51
            xiRange.pointee.ext_requests.ext_minor.last = 52
            xiRange.pointee.ext_replies.ext_major.first = xiMajor
            xiRange.pointee.ext_replies.ext_major.last = xiMajor
            xiRange.pointee.ext_replies.ext_minor.first = 51
            xiRange.pointee.ext_replies.ext_minor.last = 51
        }
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
        // Requests carry their sequence number, so a grab's reply is matched to its request.
        let context = RecordContext(takingOwnership: XRecordCreateContext(dpy, XRecordFromClientSequence, &clients, 1,
                                                                          &rangeList, Int32(rangeList.count)),
                                    on: control)
        try control.sync("creating the record context")
        guard context.id != 0 else {
            throw CaptureError(.xProtocolError, "XRecordCreateContext failed on \(control.name)")
        }
        self.context = context
        data = try X11Display(name: display, xauthority: xauthority, source: source)
        self.sink = sink
        self.policy = policy
        self.logger = logger
        let closure = Unmanaged.passUnretained(self).toOpaque().assumingMemoryBound(to: CChar.self)
        guard XRecordEnableContextAsync(data.dpy, context.id, custosRecordCallback, closure) != 0 else {
            throw CaptureError(.xProtocolError, "XRecordEnableContextAsync failed on \(control.name)")
        }
        enabled = true
        try data.check("enabling the record context")
        // Keys are suppressed until this probe's answer is seen in the stream: a grab held
        // before the context was enabled is not in it. The probe goes on the control connection,
        // which the server may serve before the data connection's enable: wait for StartOfData
        // first, so the probe and its reply are in the stream.
        let deadline = Date().addingTimeInterval(2)
        let fd = XConnectionNumber(data.dpy)
        while !startOfData && !data.isDead && Date() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 50) > 0 { XRecordProcessReplies(data.dpy) }
        }
        _ = grabs.shouldProbe(now: Date())
        probeKeyboardGrab()
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
            let now = Date()
            if grabs.shouldProbe(now: now) { probeKeyboardGrab() }
            sink.closeIfIdle(now: now)
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
        case XRecordStartOfData:
            startOfData = true
        case XRecordEndOfData:
            endOfData = true
        case XRecordClientDied:
            grabs.died(client: UInt(r.id_base))
        case XRecordFromServer:
            guard let bytes = r.data, r.data_len >= 8 else { return }
            if bytes[0] == 1 {  // a reply: to GrabKeyboard or XIGrabDevice (the only ones recorded)
                var sequence = UnsafeRawPointer(bytes + 2).loadUnaligned(as: UInt16.self)
                if r.client_swapped != 0 { sequence = sequence.byteSwapped }
                grabs.replied(client: UInt(r.id_base), sequence: sequence,
                              status: { $0 == .core ? bytes[1] : bytes[8] }, slot: { self.xiSlot($0) })
                return
            }
            let type = bytes[0] & 0x7f
            guard type == KeyPress || type == KeyRelease else { return }
            let pressed = type == KeyPress
            guard pressed || sink.includeReleases else { return }
            let keycode = bytes[1]
            let state = UInt16(bytes[28]) | UInt16(bytes[29]) << 8
            keyEvent(keycode: keycode, state: state, pressed: pressed)
        case XRecordFromClient:
            guard let bytes = r.data, r.data_len >= 1 else { return }
            let client = UInt(r.id_base)
            func u16(_ offset: Int) -> Int {
                let v = UnsafeRawPointer(bytes + offset).loadUnaligned(as: UInt16.self)
                return Int(r.client_swapped != 0 ? v.byteSwapped : v)
            }
            if bytes[0] == 31 {
                grabs.requested(.core, client: client, sequence: r.client_seq)
            } else if bytes[0] == 32 {
                grabs.ungrabbed(.core, client: client, slot: { self.xiSlot($0) })
            } else if let xiMajor, bytes[0] == xiMajor {
                if bytes[1] == 51, r.data_len >= 6 {
                    grabs.requested(.xi(device: u16(16)), client: client, sequence: r.client_seq)
                } else if bytes[1] == 52, r.data_len >= 3 {
                    grabs.ungrabbed(.xi(device: u16(8)), client: client, slot: { self.xiSlot($0) })
                }
            } else if bytes[0] == 100, r.data_len >= 2 {
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
        if grabs.isGrabbed {
            // Not even translated: no text of a password exists, only the marker.
            suppress(now: Date())
            return
        }
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
        let rules = policy.rules
        if rules.isSensitive(focus.identity) {
            suppress(now: now, focus: focus)
            return
        }
        if rules.isExcluded(focus.identity) {
            // Dropped and counted (presses only): the marker says how many. The window's title
            // is not kept either (it may be content: a mail subject, an account).
            sink.addMarker(KeyToken.excluded, timeMs: Self.ms(now), counted: pressed, window: UInt(focus.window),
                           title: "", wmClass: focus.identity.wmClass, now: now)
            return
        }
        let key = Keystroke(timeMs: Self.ms(now), text: text, pressed: pressed ? nil : false)
        sink.add(key, window: UInt(focus.window), title: focus.identity.title, wmClass: focus.identity.wmClass, now: now)
    }

    private static func ms(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }

    /// Records a key left out as part of a `[suppressed]` marker in the focused window's chunk.
    private func suppress(now: Date, focus known: (window: Window, identity: WindowIdentity)? = nil) {
        let focus = known ?? focusedWindow(now: now)
        sink.addMarker(KeyToken.suppressed, timeMs: Self.ms(now), counted: false, window: UInt(focus.window),
                       title: focus.identity.title, wmClass: focus.identity.wmClass, now: now)
    }

    // MARK: - Keyboard grabs

    /// Asks for the keyboard on the control connection and gives it back at once when granted
    /// (`KeyboardGrabs`): the request and its reply reach the stream in order with everyone
    /// else's, so a success ends a grab the stream could not see end.
    private func probeKeyboardGrab() {
        let dpy = control.dpy
        let status = XGrabKeyboard(dpy, control.root, 0, GrabModeAsync, GrabModeAsync, UInt(CurrentTime))
        if status == GrabSuccess {
            XUngrabKeyboard(dpy, UInt(CurrentTime))
        }
        XFlush(dpy)
        _ = control.takeError()
    }

    /// The grab slot of XI device `id`: 0 for a master keyboard (the core keyboard's grab), `id`
    /// for a slave or floating keyboard, nil for a device without keys (a pointer).
    private func xiSlot(_ id: Int) -> Int? {
        if let known = xiSlots[id] { return known }
        let dpy = control.dpy
        let slot: Int? = XErrorState.xinputLock.withLock { _ -> Int? in
            var count: Int32 = 0
            guard let info = XIQueryDevice(dpy, Int32(id), &count) else { return nil }
            defer { XIFreeDeviceInfo(info) }
            guard count > 0 else { return nil }
            switch info[0].use {
            case XIMasterKeyboard: return 0
            case XISlaveKeyboard: return id
            case XIFloatingSlave:
                let classes = UnsafeBufferPointer(start: info[0].classes, count: Int(info[0].num_classes))
                return classes.contains(where: { $0?.pointee.type == XIKeyClass }) ? id : nil
            default: return nil
            }
        }
        _ = control.takeError()
        xiSlots[id] = slot
        return slot
    }

    // MARK: - Window context

    /// The focused top-level window's title and WM_CLASS; re-read on a focus change and at
    /// most every 500 ms otherwise (titles change while typing, e.g. browser tabs).
    private func focusedWindow(now: Date) -> (window: Window, identity: WindowIdentity) {
        let dpy = control.dpy
        var focus: Window = 0
        var revert: Int32 = 0
        XGetInputFocus(dpy, &focus, &revert)
        _ = control.takeError()
        if let c = focusCache, c.window == focus, now.timeIntervalSince(c.read) < 0.5 {
            return (c.window, c.identity)
        }
        // The first window carrying WM_CLASS from the focus up (the client's top-level).
        let identity = windows.ancestorWithClass(focus)?.identity ?? .none
        _ = control.takeError()
        focusCache = (focus, identity, now)
        return (focus, identity)
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
