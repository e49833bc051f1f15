import CX11
import CaptureCore
import CaptureFormat
import CustosBase
import Foundation
import Logging
import Synchronization

/// Records keystrokes from an X display with the RECORD extension and emits them as
/// `KeystrokeChunk`s, one per focused window, closed after `idleMs` without a key, after
/// `maxKeysPerChunk` keys, on `flush()`, on `stop()` and when the display is lost.
///
/// Two connections (X RECORD extension spec, §"Protocol"): a *data* connection that only
/// runs the enabled record context, and a *control* connection that creates and disables
/// the context, reads the Xkb keyboard map, the input focus and window properties. Key events
/// are translated with the group and modifiers carried in the event itself and the keymap in
/// force at that point of the stream (see `KeyTranslator`). All X work happens on one
/// dedicated thread; `stop()` asks that thread to disable the context from the control
/// connection and returns within 2 s even when no key is pressed.
///
/// When the display is lost the open chunk is closed, the loss is reported to `health` (logged
/// once for every capture path), and the thread reconnects with `reconnectBackoff`; no key is
/// attributed to the time the display was gone.
///
/// Call `stop()` when done: the record thread keeps the recorder alive until then.
public final class KeystrokeRecorder: Sendable {
    private let displayName: String?
    private let xauthority: String?
    /// Where `xauthority` came from, for error messages; nil: `xauthority=`.
    private let xauthoritySource: String?
    private let logger: Logger
    private let health: DisplayHealth
    private let policy: CapturePolicy
    private let sink: ChunkSink
    /// Delays between reconnection attempts after the display is lost (250 ms doubling to 30 s).
    static let reconnectBackoff = Backoff(initial: .milliseconds(250), cap: .seconds(30))
    private let stopRequested = Atomic<Bool>(false)
    private let connected = Atomic<Bool>(false)
    private let lifecycle = Mutex<Lifecycle>(.idle)
    private let finished = DispatchSemaphore(value: 0)
    private let stream: AsyncStream<KeystrokeChunk>

    private enum Lifecycle { case idle, running, stopped }

    /// Whether the record context is currently enabled on a live connection (false before
    /// `start()`, while reconnecting after a lost display, and after `stop()`).
    public var isRecording: Bool { connected.load(ordering: .sequentiallyConsistent) }

    /// The closed chunks, in order. Finishes after `stop()`. Empty when `onChunk` was given.
    public var chunks: AsyncStream<KeystrokeChunk> { stream }

    /// Creates a recorder for `display` (nil: `$DISPLAY`) authorised by `xauthority`
    /// (nil: `$XAUTHORITY`). Chunks close after `idleMs` ms without a key or after
    /// `maxKeysPerChunk` keys. With `includeReleases`, key releases are recorded too
    /// (`Keystroke.pressed == false`). Display problems go to `health` (nil: a private one).
    /// Keys typed while another client holds an active keyboard grab, or while a window
    /// `policy` calls sensitive has the focus, become one `[suppressed]` marker per run
    /// (docs/CAPTURE.md "Password prompts").
    /// Closed chunks go to `onChunk` when given (called on the record thread or the caller of
    /// `flush`/`stop`; it must not block long), else to `chunks`.
    /// - Throws: `CaptureError.invalidArgument` when `idleMs` < 1 or `maxKeysPerChunk` < 1.
    public init(display: String?, xauthority: String?, xauthoritySource: String? = nil, idleMs: Int, maxKeysPerChunk: Int, logger: Logger,
                includeReleases: Bool = false, health: DisplayHealth? = nil, policy: CapturePolicy = CapturePolicy(),
                onChunk: (@Sendable (KeystrokeChunk) -> Void)? = nil) throws {
        guard idleMs >= 1 else { throw CaptureError(.invalidArgument, "idleMs \(idleMs) must be at least 1 ms") }
        guard maxKeysPerChunk >= 1 else {
            throw CaptureError(.invalidArgument, "maxKeysPerChunk \(maxKeysPerChunk) must be at least 1")
        }
        displayName = display
        self.xauthority = xauthority
        self.xauthoritySource = xauthoritySource
        self.logger = logger
        self.health = health ?? DisplayHealth(logger: logger)
        self.policy = policy
        let (stream, continuation) = AsyncStream.makeStream(of: KeystrokeChunk.self, bufferingPolicy: .unbounded)
        self.stream = stream
        let deliver: @Sendable (KeystrokeChunk) -> Void = onChunk ?? { continuation.yield($0) }
        sink = ChunkSink(deliver: deliver, finish: { continuation.finish() }, idleMs: idleMs,
                         maxKeys: maxKeysPerChunk, includeReleases: includeReleases)
    }

    deinit {
        stop()
    }

    /// Connects, checks for RECORD and XKEYBOARD, and starts recording on a dedicated thread.
    /// - Throws: `CaptureError.displayUnavailable` when the display cannot be opened,
    ///   `.extensionUnavailable` when it lacks RECORD or XKEYBOARD (screen capture is
    ///   unaffected), `.invalidState` when called twice or after `stop()`.
    public func start() throws {
        try lifecycle.withLock { state in
            guard state == .idle else {
                throw CaptureError(.invalidState, "KeystrokeRecorder.start() called when already \(state)")
            }
            let session: RecordSession
            do {
                session = try RecordSession(display: displayName, xauthority: xauthority, source: xauthoritySource, sink: sink, policy: policy,
                                            logger: logger)
            } catch let error as CaptureError where error.code == .displayUnavailable {
                health.failed(error)
                throw error
            }
            health.connected(session.displayName)
            state = .running
            let box = SessionBox(session)
            let thread = Thread { [self] in
                self.run(box.take())
                self.finished.signal()
            }
            thread.name = "custos.keystrokes"
            thread.start()
        }
    }

    /// Closes the open chunk now (it is yielded on `chunks`), if it has keys.
    public func flush() {
        sink.close(reason: "flush")
    }

    /// Stops recording: the record thread disables the context from the control connection,
    /// yields the open chunk and finishes `chunks`. Returns within 2 s. Idempotent.
    public func stop() {
        let wasRunning = lifecycle.withLock { state -> Bool in
            defer { state = .stopped }
            return state == .running
        }
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        if wasRunning {
            if finished.wait(timeout: .now() + 1.9) == .timedOut {
                logger.warning("keystroke record thread did not stop within 2 s")
            }
        }
        sink.close(reason: "stop")
        sink.finish()
    }

    // MARK: - Record thread

    private var shouldStop: Bool { stopRequested.load(ordering: .sequentiallyConsistent) }

    private func run(_ first: RecordSession) {
        var session: RecordSession? = first
        var retry = RetrySchedule(Self.reconnectBackoff)
        var delay = Duration.zero
        while !shouldStop {
            if let active = session {
                connected.store(true, ordering: .sequentiallyConsistent)
                let reason = active.loop(shouldStop: { [self] in shouldStop })
                connected.store(false, ordering: .sequentiallyConsistent)
                if case .lost(let error) = reason {
                    sink.close(reason: "display lost")
                    if error.code == .displayUnavailable {
                        health.failed(error)
                    } else {
                        logger.warning("keystroke capture stopped by an X error; reconnecting",
                                       metadata: ["capture.error": "\(error)"])
                    }
                    session = nil
                    retry.succeeded()
                    delay = retry.failed()
                    continue
                }
                active.shutdown()  // disables the context and drains the keys still in flight
                sink.close(reason: "stopped")
                session = nil
                return
            }
            // Reconnect with backoff, watching for stop every 50 ms.
            let until = ContinuousClock.now + delay
            while !shouldStop && ContinuousClock.now < until { usleep(50_000) }
            if shouldStop { break }
            do {
                let fresh = try RecordSession(display: displayName, xauthority: xauthority, source: xauthoritySource, sink: sink, policy: policy,
                                              logger: logger)
                session = fresh
                retry.succeeded()
                health.connected(fresh.displayName)
            } catch let error as CaptureError where error.code == .displayUnavailable {
                health.failed(error)
                delay = retry.failed()
            } catch {
                logger.debug("keystroke capture reconnect failed", metadata: ["capture.error": "\(error)"])
                delay = retry.failed()
            }
        }
        session?.shutdown()
    }
}

/// Hands a non-Sendable session to the record thread exactly once.
private final class SessionBox: @unchecked Sendable {
    // @unchecked Sendable: written once before the thread starts, read once by that thread,
    // never touched by the creating thread afterwards.
    private var session: RecordSession?
    init(_ session: RecordSession) { self.session = session }
    func take() -> RecordSession {
        defer { session = nil }
        return session!
    }
}

/// The open chunk and the closing rules; shared by the record thread and `flush()`.
final class ChunkSink: Sendable {
    struct Open {
        var window: UInt = 0
        var chunk: KeystrokeChunk
        var lastKey: Date
    }

    private let deliver: @Sendable (KeystrokeChunk) -> Void
    private let finishDelivery: @Sendable () -> Void
    private let open = Mutex<Open?>(nil)
    let idleMs: Int
    let maxKeys: Int
    let includeReleases: Bool

    init(deliver: @escaping @Sendable (KeystrokeChunk) -> Void, finish: @escaping @Sendable () -> Void,
         idleMs: Int, maxKeys: Int, includeReleases: Bool) {
        self.deliver = deliver
        self.finishDelivery = finish
        self.idleMs = idleMs
        self.maxKeys = maxKeys
        self.includeReleases = includeReleases
    }

    /// Adds a key typed into `window` (title, class); starts a new chunk on a focus change
    /// and closes the chunk when it reaches `maxKeys`.
    func add(_ key: Keystroke, window: UInt, title: String, wmClass: String, now: Date) {
        open.withLock { current in
            if let c = current, c.window != window || c.chunk.windowTitle != title || c.chunk.wmClass != wmClass {
                deliver(c.chunk)
                current = nil
            }
            if current == nil {
                current = Open(window: window,
                               chunk: KeystrokeChunk(windowTitle: title, wmClass: wmClass, startMs: key.timeMs,
                                                     endMs: key.timeMs, keys: []),
                               lastKey: now)
            }
            current!.chunk.keys.append(key)
            current!.chunk.endMs = key.timeMs
            current!.lastKey = now
            if current!.chunk.keys.count >= maxKeys {
                deliver(current!.chunk)
                current = nil
            }
        }
    }

    /// Adds a marker (`KeyToken.suppressed`, `.excluded`) standing for a key left out at
    /// `timeMs` in `window`: it extends the chunk's last entry when that is the same marker
    /// (its `untilMs`, and `count` when counted), else it starts one. `counted`: add one to the
    /// marker's `count` (a press of `[excluded]`).
    func addMarker(_ marker: String, timeMs: Int64, counted: Bool, window: UInt, title: String, wmClass: String,
                   now: Date) {
        open.withLock { current in
            if let c = current, c.window != window || c.chunk.windowTitle != title || c.chunk.wmClass != wmClass {
                deliver(c.chunk)
                current = nil
            }
            if current == nil {
                current = Open(window: window,
                               chunk: KeystrokeChunk(windowTitle: title, wmClass: wmClass, startMs: timeMs,
                                                     endMs: timeMs, keys: []),
                               lastKey: now)
            }
            if let last = current!.chunk.keys.last, last.text == marker, last.isMarker {
                current!.chunk.keys[current!.chunk.keys.count - 1].untilMs = timeMs
                if counted { current!.chunk.keys[current!.chunk.keys.count - 1].count = (last.count ?? 0) + 1 }
            } else {
                current!.chunk.keys.append(Keystroke(timeMs: timeMs, text: marker, untilMs: timeMs,
                                                     count: counted ? 1 : nil))
            }
            current!.chunk.endMs = timeMs
            current!.lastKey = now
            if current!.chunk.keys.count >= maxKeys {
                deliver(current!.chunk)
                current = nil
            }
        }
    }

    /// Closes the chunk when no key came for `idleMs`.
    func closeIfIdle(now: Date) {
        open.withLock { current in
            if let c = current, now.timeIntervalSince(c.lastKey) * 1000 >= Double(idleMs) {
                deliver(c.chunk)
                current = nil
            }
        }
    }

    func close(reason: String) {
        open.withLock { current in
            if let c = current, !c.chunk.keys.isEmpty { deliver(c.chunk) }
            current = nil
        }
    }

    func finish() { finishDelivery() }
}
