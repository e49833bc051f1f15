import CX11
import CaptureCore
import Foundation
import Synchronization

/// One X protocol error as reported to the process-wide error handler.
struct XErrorRecord: Sendable {
    var errorCode: UInt8
    var requestCode: UInt8
    var minorCode: UInt8
    var resourceID: UInt
}

/// Process-wide X error state: Xlib has one error handler and one I/O error handler per
/// process; these record into tables keyed by the `Display*` address, so each `X11Display`
/// reads only its own errors.
enum XErrorState {
    static let errors = Mutex<[UInt: XErrorRecord]>([:])
    static let dead = Mutex<Set<UInt>>([])
    /// Serialises XOpenDisplay, which reads `XAUTHORITY` from the process environment.
    static let openLock = Mutex<Void>(())

    /// Serialises every use of libXi's per-process display list: the XI calls
    /// (`XIQueryVersion`, `XIQueryDevice`, which add a display to it) and every `XCloseDisplay`
    /// (whose XI close hook removes the display and, when it was the last, frees the whole
    /// list and sets it to NULL: `XInputClose` in libXi's src/XExtInt.c, without a lock). With
    /// one keystroke recorder per graphical session, a record session opening on one thread
    /// while another closed its connection wrote into the freed list (heap corruption,
    /// `ConcurrentRecorderTests`). libXtst, libXext, libXfixes, libXrandr and libXss keep theirs in
    /// static storage under Xlib's global lock and need nothing.
    static let xinputLock = Mutex<Void>(())

    static func key(_ dpy: OpaquePointer?) -> UInt { UInt(bitPattern: UnsafeRawPointer(dpy)) }

    /// Installs the handlers and turns on Xlib's thread support, once per process.
    static let installed: Bool = {
        _ = XInitThreads()
        _ = XSetErrorHandler(custosXErrorHandler)
        _ = XSetIOErrorHandler(custosXIOErrorHandler)
        return true
    }()
}

/// The process's X error handler: records the first error per display and returns, never
/// exits (Xlib's default handler prints and calls `exit`).
private func custosXErrorHandler(_ dpy: OpaquePointer?, _ event: UnsafeMutablePointer<XErrorEvent>?) -> Int32 {
    guard let event else { return 0 }
    let record = XErrorRecord(errorCode: event.pointee.error_code, requestCode: event.pointee.request_code,
                              minorCode: event.pointee.minor_code, resourceID: UInt(event.pointee.resourceid))
    let key = XErrorState.key(dpy)
    XErrorState.errors.withLock { table in
        if table[key] == nil { table[key] = record }
    }
    return 0
}

/// The process's X I/O error handler: marks the display dead. Xlib then calls the display's
/// exit handler (`custosXIOErrorExit`), which returns instead of exiting, so Xlib fails every
/// later call on that display and the owner reconnects.
private func custosXIOErrorHandler(_ dpy: OpaquePointer?) -> Int32 {
    let key = XErrorState.key(dpy)
    _ = XErrorState.dead.withLock { $0.insert(key) }
    return 0
}

private func custosXIOErrorExit(_ dpy: OpaquePointer?, _ data: UnsafeMutableRawPointer?) {
    let key = XErrorState.key(dpy)
    _ = XErrorState.dead.withLock { $0.insert(key) }
}

/// Names of the X requests this module issues, for error messages (X11 protocol, Appendix B).
private let coreRequestNames: [UInt8: String] = [
    3: "GetWindowAttributes", 14: "GetGeometry", 15: "QueryTree", 17: "GetAtomName", 20: "GetProperty",
    43: "GetInputFocus", 73: "GetImage", 98: "QueryExtension", 100: "ChangeKeyboardMapping",
    101: "GetKeyboardMapping", 119: "GetModifierMapping",
]

/// One connection to an X server; owns the `Display*` and closes it in `deinit`.
///
/// Not thread-safe by itself: each connection is used by one owner at a time (the screen
/// capturer's caller, or the keystroke recorder's thread). Errors go to the process-wide
/// handlers above and are read back with `takeError()`.
final class X11Display {
    let dpy: OpaquePointer
    let name: String
    private var extensionNames: [UInt8: String] = [:]

    /// Opens `name` (nil: `$DISPLAY`) authorised by the cookie file `xauthority` (nil:
    /// `$XAUTHORITY`, else `~/.Xauthority`).
    ///
    /// Probes first (`DisplayProbe`: socket and connection setup, silent), so a missing server
    /// or a refused cookie becomes an error naming which it is and the cookie file tried, and
    /// Xlib/libxcb never print their own refusal to stderr. Then `XOpenDisplay` runs with the
    /// probe's cookie set by `XSetAuthorization` (process-wide in Xlib, so opens are serialised
    /// and the environment is never modified).
    /// - Throws: `CaptureError.displayUnavailable` with `problem` `.noServer`,
    ///   `.authorizationRefused` or `.badName`.
    init(name: String?, xauthority: String?, source: String? = nil) throws {
        _ = XErrorState.installed
        let parsed = try DisplayProbe.name(name)
        let (authority, probeConnection) = try DisplayProbe.check(parsed, xauthority: xauthority, source: source)
        let displayName = name ?? ProcessInfo.processInfo.environment["DISPLAY"] ?? ""
        // The probe's connection stays open until Xlib's is made (see DisplayProbe.check).
        let opened: OpaquePointer? = withExtendedLifetime(probeConnection) { XErrorState.openLock.withLock { _ in
            guard var cookie = authority.cookie.map({ $0.map { CChar(bitPattern: $0) } }) else {
                return XOpenDisplay(displayName)
            }
            // XSetAuthorization copies both strings; it is reset before the lock is released.
            var method = Array("MIT-MAGIC-COOKIE-1".utf8CString)
            XSetAuthorization(&method, Int32(method.count - 1), &cookie, Int32(cookie.count))
            defer { XSetAuthorization(nil, 0, nil, 0) }
            return XOpenDisplay(displayName)
        } }
        guard let opened else {
            // The probe passed a moment ago: the server went away or changed its mind since.
            throw CaptureError(.displayUnavailable,
                               "XOpenDisplay failed for display \(parsed.shown) right after a successful probe (server restarting?)",
                               problem: .noServer)
        }
        XSetIOErrorExitHandler(opened, custosXIOErrorExit, nil)
        dpy = opened
        self.name = parsed.shown
    }

    deinit {
        let key = XErrorState.key(dpy)
        XErrorState.errors.withLock { _ = $0.removeValue(forKey: key) }
        // XCloseDisplay also works on a connection marked dead: Xlib skips the round trips.
        XErrorState.xinputLock.withLock { _ in _ = XCloseDisplay(dpy) }
        _ = XErrorState.dead.withLock { $0.remove(key) }
    }

    /// Asks for XI `major.minor` (`XIQueryVersion`, which must come before any other XI 2
    /// request of the connection) under `XErrorState.xinputLock`.
    /// - Returns: whether the server grants XI 2.
    func queryXInput2(major: Int32 = 2, minor: Int32 = 0) -> Bool {
        var grantedMajor = major, grantedMinor = minor
        let d = dpy
        return XErrorState.xinputLock.withLock { _ in XIQueryVersion(d, &grantedMajor, &grantedMinor) } == Success
    }

    /// Whether the connection has failed (server gone); a dead display only returns errors.
    var isDead: Bool { XErrorState.dead.withLock { $0.contains(XErrorState.key(dpy)) } }

    var root: Window { XDefaultRootWindow(dpy) }

    /// Remembers an extension's major opcode so errors name its requests.
    func registerExtension(_ name: String, majorOpcode: Int32) {
        extensionNames[UInt8(truncatingIfNeeded: majorOpcode)] = name
    }

    /// Removes and returns the first X error recorded for this display since the last call.
    func takeError() -> XErrorRecord? {
        let key = XErrorState.key(dpy)
        return XErrorState.errors.withLock { $0.removeValue(forKey: key) }
    }

    /// Waits for the server to process all requests, then throws the first X error, if any.
    /// - Throws: `CaptureError.displayUnavailable` when the connection is dead,
    ///   `CaptureError.xProtocolError` naming the failed request.
    func sync(_ what: String) throws {
        XSync(dpy, 0)
        try check(what)
    }

    /// Throws the first recorded error (or the lost connection) without a round trip.
    func check(_ what: String) throws {
        if isDead { throw lostError() }
        if let record = takeError() { throw protocolError(record, while: what) }
    }

    func lostError() -> CaptureError {
        CaptureError(.displayUnavailable, "connection to X display \(name) lost (server exited or restarted)", problem: .lost)
    }

    func protocolError(_ record: XErrorRecord, while what: String) -> CaptureError {
        var text = [CChar](repeating: 0, count: 128)
        XGetErrorText(dpy, Int32(record.errorCode), &text, Int32(text.count))
        let request = coreRequestNames[record.requestCode]
            ?? extensionNames[record.requestCode].map { "\($0) minor \(record.minorCode)" }
            ?? "request \(record.requestCode)"
        let message = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return CaptureError(.xProtocolError,
                            "X error \(message) (code \(record.errorCode)) in \(request) while \(what) on display \(name), resource 0x\(String(record.resourceID, radix: 16))")
    }

    /// The name of an atom, or nil.
    func atomName(_ atom: Atom) -> String? {
        guard atom != 0, let p = XGetAtomName(dpy, atom) else { return nil }
        defer { XFree(p) }
        return String(cString: p)
    }
}
