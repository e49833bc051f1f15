import CaptureCore
import CaptureFormat
import CustosBase
import CustosConfig
import Envelope
import Foundation
import Logging
import ServiceLifecycle
import Spool
import Synchronization

/// Counters of what the capture loops did, for logs, `status` and tests.
public struct CaptureCounters: Sendable, Equatable {
    public var framesSealed = 0
    public var framesUnchanged = 0
    public var chunksSealed = 0
    /// Activity chunks (focus and idle/active periods) sealed.
    public var activitySealed = 0
    /// Key presses dropped because an `exclude-window-*` window had the focus (each chunk's
    /// `[excluded]` markers count them too).
    public var keysExcluded = 0
    public var skippedNoKEK = 0
    public var errors = 0
    /// Captures not kept, by reason (this run; the spool keeps the lifetime totals).
    public var dropped: [DropReason: Int] = [:]
}
/// Records every graphical session the config selects (`display=auto`: each local X session;
/// `display=:0,:1`: those displays), one `SessionCapture` per session, and hands every capture
/// to the `Sealer`. Knows the display system only through the capture seam (`CaptureBackend`:
/// a `SessionSource`, and per session a `FrameSource`, a `KeystrokeSource` and an
/// `ActivitySource`).
///
/// A supervising thread (`custos.sessions`) asks the session source every
/// ``sessionPollInterval`` (and at once after SIGHUP): a session that appears (a user logs
/// in, an Xvnc or xrdp session starts) gets its capture started; one that ends (its display
/// gone) is stopped (its open keystroke chunk and activity sealed); one whose user or cookie
/// changed is restarted. `run()` only starts that thread and waits for it; graceful shutdown
/// or cancellation stops every session's capture, then the thread exits. All blocking work
/// (file reads, X requests, encoding, sealing) runs on these threads, never on Swift's
/// cooperative pool.
///
/// Captures exist in plaintext only in memory between the capture call and `Sealer.seal`.
public final class CaptureService: Service, Sendable {
    private let shared: CaptureShared
    private let logger: Logger
    private let control = Mailbox()
    /// The running captures, by display.
    private let running = Mutex<[String: SessionCapture]>([:])
    /// Per display: its health, kept across restarts of its capture (a refused cookie fixed
    /// by SIGHUP is logged as recovered once).
    private let healths = Mutex<[String: DisplayHealth]>([:])

    /// The settings `reload(_:)` may change while running (SIGHUP).
    struct CaptureSettings: Equatable, Sendable {
        /// `display`, `xauthority`: which sessions are recorded and how to connect; a change
        /// restarts the captures of the sessions it changes.
        var displays: DisplaySelection
        var xauthority: String?
        /// `screen-format`, `png-level`, `keyframe-interval-seconds`: a change replaces the
        /// screen capturer (video: new streams, starting with keyframes).
        var encoding: ScreenEncoding
        /// `screen-interval-ms`: the pause between screen captures (0: no screen capture).
        var screenIntervalMs: Int

        init(_ config: AgentConfig) {
            displays = config.displays
            xauthority = config.xauthority
            encoding = config.screenEncoding
            screenIntervalMs = config.screenIntervalMs
        }

        /// Equal when what a running session's capture uses is equal (not which sessions).
        static func == (a: CaptureSettings, b: CaptureSettings) -> Bool {
            a.encoding == b.encoding && a.screenIntervalMs == b.screenIntervalMs
        }
    }

    /// How often the sessions are looked up again.
    static let sessionPollInterval = Duration.seconds(5)
    /// How often agent-side drop counts are written to the spool (the spool's own refusals are
    /// written at once).
    static let dropFlushInterval = Duration.seconds(2)
    /// Delays between attempts to start keystroke capture (1 s doubling to 30 s).
    static let keystrokeBackoff = Backoff(initial: .seconds(1), cap: .seconds(30))

    /// The last capture error, for `record`'s summary.
    public var lastError: String? { shared.lastErrorText.withLock { $0 } }

    /// Records through `backend` (`CaptureBackends.standard` in the agent).
    public init(config: AgentConfig, sealer: Sealer, logger: Logger, backend: any CaptureBackend) {
        shared = CaptureShared(config: config, sealer: sealer, backend: backend)
        self.logger = logger
        selection = Mutex((config.displays, config.xauthority))
    }

    /// `display`/`xauthority` in force (SIGHUP may change them).
    private let selection: Mutex<(DisplaySelection, String?)>

    /// A snapshot of the counters (all sessions).
    public var snapshot: CaptureCounters { shared.counters.withLock { $0 } }

    /// The sessions being recorded now (for logs and tests).
    public var sessions: [GraphicalSession] { running.withLock { $0.values.map(\.session) }.sorted { $0.display < $1.display } }

    /// Applies a re-read config (SIGHUP): a new `display` or `xauthority` looks the sessions up
    /// again at once (captures of sessions no longer selected stop, new ones start, changed ones
    /// restart); a new `screen-format`, `png-level` or `keyframe-interval-seconds` replaces every
    /// session's screen capturer (video streams restart with keyframes); a new
    /// `screen-interval-ms` applies from the next capture; the window rules
    /// (`sensitive-window-class`, `exclude-window-*`) from the next key and frame.
    /// `keystroke-idle-ms` and the rest take effect at the next start.
    public func reload(_ config: AgentConfig) {
        let policy = shared.policy
        if policy.rules != config.windowRules {
            policy.update(config.windowRules)
            logger.info("window rules changed", metadata: [
                "capture.sensitive-window-class": "\(config.sensitiveWindowClasses.count)",
                "capture.exclude-window-class": "\(config.excludeWindowClasses.count)",
                "capture.exclude-window-title": "\(config.excludeWindowTitles.count)",
            ])
        }
        let fresh = CaptureSettings(config)
        let old = shared.settings.withLock { current -> CaptureSettings in
            defer { current = fresh }
            return current
        }
        if old != fresh {
            logger.info("screen capture settings changed", metadata: [
                "capture.screen-format": "\(config.screenFormat.rawValue)",
                "capture.keyframe-interval-seconds": "\(config.keyframeIntervalSeconds)",
                "capture.png-level": "\(config.pngLevel)",
                "capture.screen-interval-ms": "\(config.screenIntervalMs)",
            ])
            running.withLock { $0.values.forEach { $0.wake() } }
        }
        let changed = selection.withLock { s -> Bool in
            defer { s = (config.displays, config.xauthority) }
            return s.0 != config.displays || s.1 != config.xauthority
        }
        if changed {
            logger.info("display settings changed; looking for sessions again",
                        metadata: ["capture.display": "\(SafeText.escaped(config.displays.description))",
                                   "capture.xauthority": "\(SafeText.escaped(config.xauthority ?? "-"))"])
            control.wake()
        }
    }

    public func run() async throws {
        let config = shared.config
        guard config.keystrokeIdleMs > 0 || config.screenIntervalMs > 0 || config.activityIntervalSeconds > 0 else {
            // Nothing to capture (a way to drain a spool): the agent keeps uploading until stopped.
            logger.notice("screen-interval-ms=0, keystroke-idle-ms=0 and activity-interval-seconds=0: nothing is captured; uploading what is spooled")
            try? await gracefulShutdown()
            return
        }
        let thread = Thread { [self] in
            try? "custos.sessions".write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
            self.supervise()
            self.control.finish()
        }
        thread.name = "custos.sessions"
        thread.start()
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await control.finished()
            } onGracefulShutdown: {
                self.control.requestStop()
            }
        } onCancel: {
            self.control.requestStop()
        }
    }

    /// Runs the capture for `seconds`, then stops it as on shutdown (for `custos-agent record`).
    public func run(for seconds: Double) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await self.run() }
            try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            group.cancelAll()
        }
    }

    // MARK: - The supervising thread

    private func supervise() {
        var source: (any SessionSource)?
        var sourceSelection: (DisplaySelection, String?)?
        while !control.stopRequested {
            let wanted = selection.withLock { $0 }
            if source == nil || sourceSelection.map({ $0.0 != wanted.0 || $0.1 != wanted.1 }) == true {
                source = shared.backend.makeSessionSource(displays: wanted.0.displays, credentials: wanted.1, logger: logger)
                sourceSelection = wanted
            }
            reconcile(source!.sessions())
            control.wait(until: .now + Self.sessionPollInterval)
        }
        // Stop them all at once (each seals what it holds), then wait for each.
        let all = running.withLock { r in
            defer { r = [:] }
            return Array(r.values)
        }
        all.forEach { $0.requestStop() }
        all.forEach { $0.stop() }
    }

    /// Starts the captures of new sessions, stops those of ended ones, restarts changed ones.
    private func reconcile(_ found: [GraphicalSession]) {
        let wanted = Dictionary(found.map { ($0.display, $0) }, uniquingKeysWith: { a, _ in a })
        let current = running.withLock { $0 }
        for (display, capture) in current {
            guard let session = wanted[display] else {
                logger.notice("session ended; its capture stops", metadata: Self.metadata(capture.session))
                capture.stop()
                running.withLock { _ = $0.removeValue(forKey: display) }
                continue
            }
            if session.user != capture.session.user || session.uid != capture.session.uid
                || session.credentials != capture.session.credentials {
                logger.notice("session changed (user or cookie); its capture restarts", metadata: Self.metadata(session))
                capture.stop()
                running.withLock { _ = $0.removeValue(forKey: display) }
            }
        }
        for session in found where running.withLock({ $0[session.display] == nil }) {
            guard !control.stopRequested else { return }
            logger.notice("recording session", metadata: Self.metadata(session))
            let health = healths.withLock { h -> DisplayHealth in
                if let known = h[session.display] { return known }
                var l = logger
                l[metadataKey: "capture.display"] = "\(SafeText.escaped(session.display))"
                let fresh = DisplayHealth(logger: l)
                h[session.display] = fresh
                return fresh
            }
            let capture = SessionCapture(session: session, shared: shared, logger: logger, health: health)
            running.withLock { $0[session.display] = capture }
            capture.start()
        }
    }

    private static func metadata(_ s: GraphicalSession) -> Logger.Metadata {
        ["capture.display": "\(SafeText.escaped(s.display))", "capture.user": "\(SafeText.escaped(s.userName.rawValue))",
         "capture.session": "\(SafeText.escaped(s.origin.description))",
         "capture.xauthority": "\(SafeText.escaped(s.credentials ?? "-"))"]
    }

    /// The drop reason of a failed seal, and whether the spool already counted it.
    static func reason(ofSealError error: any Error) -> (DropReason, countedBySpool: Bool) {
        if let e = error as? SpoolError {
            switch e.code {
            case .tooLarge: return (.tooLarge, true)
            case .full: return (.full, true)
            case .diskFull: return (.diskFull, true)
            case .groupBroken: return (.groupBroken, true)
            default: return (.sealError, false)
            }
        }
        if error is SealerUnavailable { return (.sealingPaused, false) }
        return (.sealError, false)
    }

    // MARK: - Spool cap against frame size

    /// The largest sealed record one screen frame of `width`×`height` pixels can make, in bytes,
    /// plus the frame payload header and the envelope (generous 4 KiB):
    /// - PNG: an 8-bit RGB PNG that does not compress at all (one filter byte per row, deflate
    ///   stored blocks, IDAT chunk framing). Real 1920×1080 desktop frames are 120–650 KB.
    /// - Video: a keyframe no larger than the uncompressed I420 picture (1.5 bytes per pixel;
    ///   libaom's worst case on noise at the agent's quality is well below it). Real 1920×1080
    ///   keyframes of a desktop are 50–200 KB, inter packets a few KB (docs/VIDEO.md).
    static func worstCaseSealedFrameBytes(width: Int, height: Int, format: ScreenFormat) -> Int {
        switch format {
        case .png:
            let raw = height * (1 + width * 3)
            return raw + raw / 1000 * 3 + 4096
        case .video:
            return (width + 1) / 2 * 2 * ((height + 1) / 2 * 2) * 3 / 2 + 4096
        }
    }

    /// A warning when `spool-max-mb` makes the spool refuse (`too-large`) a frame of one of
    /// `monitors` at its worst case in `format`, naming the sizes and the smallest `spool-max-mb`
    /// that takes every frame; nil when every frame fits.
    static func spoolCapAdvice(spoolMaxMB: Int, format: ScreenFormat,
                               monitors: [(name: String, width: Int, height: Int)]) -> String? {
        guard let largest = monitors.max(by: { $0.width * $0.height < $1.width * $1.height }) else { return nil }
        let worst = worstCaseSealedFrameBytes(width: largest.width, height: largest.height, format: format)
        let limit = Spool.largestRecord(maxBytes: Int64(spoolMaxMB) << 20)
        guard worst > limit else { return nil }
        var enough = spoolMaxMB
        while Spool.largestRecord(maxBytes: Int64(enough) << 20) < worst && enough < 1 << 20 { enough += 1 }
        let what = format == .video ? "keyframe" : "frame"
        return "spool-max-mb=\(spoolMaxMB) accepts sealed records up to \(limit) bytes, but a \(largest.width)x\(largest.height) \(what) "
            + "(monitor \(SafeText.escaped(largest.name)), screen-format=\(format.rawValue)) can seal to \(worst) bytes: "
            + "larger ones are dropped (counted as too-large in `custos-agent status`); spool-max-mb=\(enough) or more keeps every one"
    }
}

extension AgentConfig {
    /// What `sensitive-window-class`, `exclude-window-class` and `exclude-window-title` ask of the sources.
    var windowRules: WindowRules {
        WindowRules(sensitiveClasses: sensitiveWindowClasses, excludedClasses: excludeWindowClasses,
                    excludedTitles: excludeWindowTitles)
    }

    /// What `screen-format`, `png-level` and `keyframe-interval-seconds` ask of the capturer.
    var screenEncoding: ScreenEncoding {
        switch screenFormat {
        case .png: .png(level: pngLevel)
        case .video: .video(keyframeIntervalMs: Int64(keyframeIntervalSeconds) * 1000)
        }
    }
}
