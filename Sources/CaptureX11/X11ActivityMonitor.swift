import CX11
import CaptureCore
import CustosBase
import Foundation
import Logging

/// The X11 `ActivitySource`: the focused top-level window (`XGetInputFocus`, then the nearest
/// ancestor with `WM_CLASS`, as keystroke chunks name it) and the time since the last input
/// (MIT-SCREEN-SAVER `XScreenSaverQueryInfo`, `idle` in ms: the server's own count since the last
/// input of any device, XTest's included), on a connection of its own.
///
/// Without the MIT-SCREEN-SAVER extension `idleMs` is nil (focus periods only). A lost display
/// is reported to `health` and reconnected with `reconnectBackoff` on later calls.
/// Not thread-safe: one caller (the agent's capture thread).
public final class X11ActivityMonitor: ActivitySource {
    /// Delays between reconnection attempts (250 ms doubling to 30 s, jittered); read at the
    /// first capture (``ReconnectGate``), so set it before.
    public var reconnectBackoff = Backoff(initial: .milliseconds(250), cap: .seconds(30))
    private let displayName: String?
    private let xauthority: String?
    /// Where `xauthority` came from, for error messages; nil: `xauthority=`.
    private let xauthoritySource: String?
    private let logger: Logger
    private let health: DisplayHealth
    private var connection: (display: X11Display, reader: WindowReader, screenSaver: Bool)?
    private lazy var gate = ReconnectGate(reconnectBackoff)

    public init(display: String?, xauthority: String?, xauthoritySource: String? = nil, logger: Logger, health: DisplayHealth) {
        displayName = display
        self.xauthority = xauthority
        self.xauthoritySource = xauthoritySource
        self.logger = logger
        self.health = health
    }

    public func observe(now: Date) throws -> ActivityObservation {
        let conn = try connect(now: now)
        let dpy = conn.display.dpy
        var focus: Window = 0
        var revert: Int32 = 0
        XGetInputFocus(dpy, &focus, &revert)
        let identity = conn.reader.ancestorWithClass(focus)?.identity ?? .none
        var idle: Int64? = nil
        if conn.screenSaver, let info = XScreenSaverAllocInfo() {
            if XScreenSaverQueryInfo(dpy, conn.display.root, info) != 0 { idle = Int64(info.pointee.idle) }
            XFree(info)
        }
        XSync(dpy, 0)
        if conn.display.isDead {
            let lost = conn.display.lostError()
            connection = nil
            gate.lost(lost, now: now)
            health.failed(lost)
            throw lost
        }
        _ = conn.display.takeError()  // the focus window destroyed meanwhile: read again next time
        return ActivityObservation(focus: identity, focusID: UInt(focus), idleMs: idle)
    }

    private func connect(now: Date) throws -> (display: X11Display, reader: WindowReader, screenSaver: Bool) {
        if let connection { return connection }
        let conn = try gate.attempt(now: now, health: health) {
            let display = try X11Display(name: displayName, xauthority: xauthority, source: xauthoritySource)
            var event: Int32 = 0, error: Int32 = 0
            let screenSaver = XScreenSaverQueryExtension(display.dpy, &event, &error) != 0
            if !screenSaver {
                logger.notice("X display has no MIT-SCREEN-SAVER extension: activity records focus changes only, no idle time",
                              metadata: ["capture.display": "\(display.name)"])
            }
            return ((display, WindowReader(display), screenSaver), display.name)
        }
        connection = conn
        return conn
    }
}
