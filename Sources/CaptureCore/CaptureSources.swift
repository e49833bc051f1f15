import CaptureFormat
import Foundation
import Logging

// The capture backend seam: what the agent pipeline asks of a display system, in values that
// name no display protocol. X11 (`CaptureX11`) is one backend; a Wayland backend implements the
// same protocols without touching the pipeline. docs/ARCHITECTURE.md "The capture seam".

/// How a frame source encodes the monitors that changed.
public enum ScreenEncoding: Sendable, Equatable {
    /// One PNG per changed frame at zlib level 0…9 (`screen-format=png`).
    case png(level: Int)
    /// One AV1 packet per changed frame, in one video stream per monitor (`screen-format=video`,
    /// docs/VIDEO.md), with a keyframe at least every `keyframeIntervalMs` (0: only at a stream's start).
    case video(keyframeIntervalMs: Int64)
}

/// The result of capturing one monitor.
public enum FrameCapture: Sendable {
    /// The monitor's pixels differ from its previous frame (or it is new): metadata and PNG.
    case changed(FrameMetadata, png: Data)
    /// As `.changed`, encoded as the next packet of the monitor's video stream.
    case packet(VideoPacketMetadata, packet: [UInt8])
    /// The monitor's raw pixels equal its previous frame; nothing was encoded.
    case unchanged(monitor: Int)
    /// The monitor could not be recorded this round; the other monitors were. `error` is
    /// `.monitorUnsupported` (a size the encoder does not take: nothing was grabbed) or
    /// `.encoding` (the encoder failed: its video stream restarts with the next frame).
    case skipped(monitor: Int, error: CaptureError)

    /// The monitor index this result is about.
    public var monitor: Int {
        switch self {
        case .changed(let meta, _): meta.monitor
        case .packet(let meta, _): meta.monitor
        case .unchanged(let monitor), .skipped(let monitor, _): monitor
        }
    }
}

/// One graphical session to capture: where its display is and how to authorise to it.
///
/// Backend-neutral text: for X11, `display` is a display name (`:0`, nil: `$DISPLAY`) and
/// `credentials` the X authority file (nil: `$XAUTHORITY`, else `~/.Xauthority`).
public struct CaptureTarget: Sendable, Hashable {
    public var display: String?
    public var credentials: String?
    /// Where `credentials` came from, for error messages (X11: "~/.Xauthority of user bob"); with
    /// `credentials` nil, which files were tried. nil: the configured ones.
    public var credentialsSource: String?

    public init(display: String?, credentials: String?, credentialsSource: String? = nil) {
        self.display = display
        self.credentials = credentials
        self.credentialsSource = credentialsSource
    }
}

/// Frames of one session's monitors, taken on demand.
///
/// Pull, not push: the pipeline asks for a frame at its own interval on its own thread and may
/// restart a monitor's video stream between two frames (a packet it could not keep must not
/// leave a hole), so a frame is never taken that the pipeline cannot store, nothing is queued,
/// and the blocking work (display round trips, encoding) runs on the caller's thread, never on
/// the Swift cooperative pool. Not thread-safe: one thread at a time.
public protocol FrameSource: AnyObject {
    /// Captures every monitor once (one entry per monitor, in the backend's monitor order),
    /// stamped `now` (plus any wait for a resize to pass).
    /// - Throws: `CaptureError` `.displayUnavailable` while the display is down (reported to the
    ///   source's `DisplayHealth`; the source reconnects with backoff on a later call),
    ///   `.xProtocolError` (or the backend's like code) naming the failed request.
    func captureAll(now: Date) throws -> [FrameCapture]
    /// Ends the video stream of `monitor` (nil: every monitor): its next frame is a keyframe.
    func restartStreams(monitor: Int?)
    /// Forgets the previous frames: the next `captureAll` encodes every monitor.
    func resetChangeDetection()
    /// Why the last connection attempt failed, while disconnected; nil when connected.
    var connectError: CaptureError? { get }
    /// The monitors (name, width, height in pixels); empty while disconnected.
    func monitorSizes() -> [(name: String, width: Int, height: Int)]
    /// Why each monitor that cannot be recorded is not, in words naming it (for `--check-config`).
    func unrecordableMonitors() -> [String]
}

/// Keystrokes of one session, delivered as closed `KeystrokeChunk`s.
///
/// The source runs its blocking work (the display connection, translation) on a thread of its
/// own and hands each closed chunk to the `onChunk` given at creation (on that thread, or on
/// the caller of `flush`/`stop`), or, without one, to `chunks`.
public protocol KeystrokeSource: AnyObject, Sendable {
    /// Connects and starts recording.
    /// - Throws: `CaptureError` `.displayUnavailable`, `.extensionUnavailable` (the display
    ///   cannot report keys: frames are unaffected), `.invalidState` when called twice or after `stop()`.
    func start() throws
    /// Closes the open chunk now, if it has keys.
    func flush()
    /// Stops recording, delivers the open chunk and finishes `chunks`; returns within 2 s.
    /// Idempotent; a stopped source cannot be restarted (make a new one).
    func stop()
    /// Whether keys are being recorded now (false while reconnecting and after `stop()`).
    var isRecording: Bool { get }
    /// The closed chunks in order when no `onChunk` was given; finishes after `stop()`.
    var chunks: AsyncStream<KeystrokeChunk> { get }
}

/// A display system the agent can record: makes the sources for one session.
public protocol CaptureBackend: Sendable {
    /// Its name in logs and `--check-config` (`x11`).
    var name: String { get }

    /// A frame source for `target`. Connects when it can; a display that is not up yet is
    /// reported to `health` once and connected on a later `captureAll`. The visible parts of
    /// windows `policy` excludes are painted with `WindowRules.maskColor` before encoding.
    /// - Throws: `CaptureError.invalidArgument` for an encoding outside its range.
    func makeFrameSource(_ target: CaptureTarget, encoding: ScreenEncoding, policy: CapturePolicy, logger: Logger,
                         health: DisplayHealth) throws -> any FrameSource

    /// A keystroke source for `target` (not started): chunks close after `idleMs` ms without a
    /// key and at `maxKeysPerChunk` keys, and go to `onChunk`. Keys are suppressed (a
    /// `[suppressed]` marker with the time span instead) while another client holds an active
    /// keyboard grab (a password prompt) and while a window `policy` calls sensitive has the focus.
    /// - Throws: `CaptureError.invalidArgument` when `idleMs` or `maxKeysPerChunk` < 1.
    func makeKeystrokeSource(_ target: CaptureTarget, idleMs: Int, maxKeysPerChunk: Int, policy: CapturePolicy,
                             logger: Logger, health: DisplayHealth,
                             onChunk: @escaping @Sendable (KeystrokeChunk) -> Void) throws -> any KeystrokeSource

    /// An activity source for `target` (focus and idle time). Connects on the first `observe`.
    func makeActivitySource(_ target: CaptureTarget, logger: Logger, health: DisplayHealth) -> any ActivitySource

    /// The sessions to record: every graphical session of the machine (`displays` nil:
    /// `display=auto`), or the displays named (`display=:0,:1`), each with its user and
    /// credentials. `credentials`: the configured ones (`xauthority=`), used for every
    /// session when given.
    func makeSessionSource(displays: [String]?, credentials: String?, logger: Logger) -> any SessionSource
}
