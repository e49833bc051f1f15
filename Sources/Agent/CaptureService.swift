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
import Video

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

/// Runs screen and keystroke capture on one dedicated thread (`custos.capture`) and hands
/// every capture to the `Sealer`. Knows the display system only through the capture seam
/// (`CaptureBackend`: a `FrameSource` and a `KeystrokeSource` per session).
///
/// Everything that blocks — X requests, PNG encoding, sealing, the spool's fsync'd insert —
/// runs on that thread, never on Swift's cooperative pool, so the uploader and the service
/// group stay responsive on a 2-core machine. `run()` only starts the thread and waits for it;
/// graceful shutdown or cancellation asks it to stop: the current capture finishes, the
/// keystroke recorder is flushed (its open chunk sealed) and stopped (≤ 2 s), and the thread
/// exits. Keystroke chunks arrive from the recorder's own record thread through a mailbox.
///
/// Display problems are reported once for both paths through one `DisplayHealth`. Every capture
/// not kept is counted by reason (`DropReason`) here and in the spool's counters (`status`),
/// and logged as "dropped" once per reason until a capture is kept again.
///
/// Captures exist in plaintext only in memory between the capture call and `Sealer.seal`.
/// With no usable KEK nothing is captured (counted as `sealing-paused`).
public final class CaptureService: Service, Sendable {
    private let config: AgentConfig
    private let sealer: Sealer
    private let logger: Logger
    private let health: DisplayHealth
    private let backend: any CaptureBackend
    /// The window rules every source reads (`sensitive-window-class`, `exclude-window-*`); replaced on SIGHUP.
    private let policy: CapturePolicy
    private let counters = Mutex(CaptureCounters())
    private let lastErrorText = Mutex<String?>(nil)
    private let settings: Mutex<CaptureSettings>
    private let mailbox = Mailbox()

    /// The settings `reload(_:)` may change while running (SIGHUP).
    struct CaptureSettings: Equatable, Sendable {
        /// `display`, `xauthority`: a change reconnects both capture paths.
        var display: String?
        var xauthority: String?
        /// `screen-format`, `png-level`, `keyframe-interval-seconds`: a change replaces the
        /// screen capturer (video: new streams, starting with keyframes).
        var encoding: ScreenEncoding
        /// `screen-interval-ms`: the pause between screen captures (0: no screen capture).
        var screenIntervalMs: Int

        init(_ config: AgentConfig) {
            display = config.display
            xauthority = config.xauthority
            encoding = config.screenEncoding
            screenIntervalMs = config.screenIntervalMs
        }

        var sameDisplay: (String?, String?) { (display, xauthority) }

        var target: CaptureTarget { CaptureTarget(display: display, credentials: xauthority) }
    }

    /// How often agent-side drop counts are written to the spool (the spool's own refusals are
    /// written at once).
    static let dropFlushInterval = Duration.seconds(2)
    /// Delays between attempts to start keystroke capture (1 s doubling to 30 s).
    static let keystrokeBackoff = Backoff(initial: .seconds(1), cap: .seconds(30))

    /// The last capture error, for `record`'s summary.
    public var lastError: String? { lastErrorText.withLock { $0 } }

    /// Records through `backend` (`CaptureBackends.standard` in the agent).
    public init(config: AgentConfig, sealer: Sealer, logger: Logger, backend: any CaptureBackend) {
        self.config = config
        self.backend = backend
        self.sealer = sealer
        self.logger = logger
        self.health = DisplayHealth(logger: logger)
        self.settings = Mutex(CaptureSettings(config))
        self.policy = CapturePolicy(config.windowRules)
    }

    /// A snapshot of the counters.
    public var snapshot: CaptureCounters { counters.withLock { $0 } }

    /// Applies a re-read config (SIGHUP): a new `display` or `xauthority` makes the capture
    /// thread drop its X connections and reconnect with the new values at once; a new
    /// `screen-format`, `png-level` or `keyframe-interval-seconds` replaces the screen capturer
    /// (video streams restart with keyframes); a new `screen-interval-ms` applies from the next
    /// capture; the window rules (`sensitive-window-class`, `exclude-window-*`) from the next key
    /// and frame. `keystroke-idle-ms`
    /// and the rest take effect at the next start.
    public func reload(_ config: AgentConfig) {
        if policy.rules != config.windowRules {
            policy.update(config.windowRules)
            logger.info("window rules changed", metadata: [
                "capture.sensitive-window-class": "\(config.sensitiveWindowClasses.count)",
                "capture.exclude-window-class": "\(config.excludeWindowClasses.count)",
                "capture.exclude-window-title": "\(config.excludeWindowTitles.count)",
            ])
        }
        let fresh = CaptureSettings(config)
        let old = settings.withLock { current -> CaptureSettings in
            defer { current = fresh }
            return current
        }
        guard old != fresh else { return }
        if old.sameDisplay != fresh.sameDisplay {
            logger.info("X display settings changed; reconnecting",
                        metadata: ["capture.display": "\(SafeText.escaped(config.display ?? "$DISPLAY"))",
                                   "capture.xauthority": "\(SafeText.escaped(config.xauthority ?? "-"))"])
        }
        if old.encoding != fresh.encoding || old.screenIntervalMs != fresh.screenIntervalMs {
            logger.info("screen capture settings changed", metadata: [
                "capture.screen-format": "\(config.screenFormat.rawValue)",
                "capture.keyframe-interval-seconds": "\(config.keyframeIntervalSeconds)",
                "capture.png-level": "\(config.pngLevel)",
                "capture.screen-interval-ms": "\(config.screenIntervalMs)",
            ])
        }
        mailbox.wake()
    }

    public func run() async throws {
        guard config.keystrokeIdleMs > 0 || config.screenIntervalMs > 0 || config.activityIntervalSeconds > 0 else {
            // Nothing to capture (a way to drain a spool): the agent keeps uploading until stopped.
            logger.notice("screen-interval-ms=0, keystroke-idle-ms=0 and activity-interval-seconds=0: nothing is captured; uploading what is spooled")
            try? await gracefulShutdown()
            return
        }
        let thread = Thread { [self] in
            // Name the OS thread for ps/top/perf (Foundation's `Thread.name` does not on Linux).
            try? "custos.capture".write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
            self.captureThread()
            self.mailbox.finish()
        }
        thread.name = "custos.capture"
        thread.start()
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await mailbox.finished()
            } onGracefulShutdown: {
                self.mailbox.requestStop()
            }
        } onCancel: {
            self.mailbox.requestStop()
        }
    }

    /// Runs both loops for `seconds`, then stops them as on shutdown (for `custos-agent record`).
    public func run(for seconds: Double) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await self.run() }
            try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            group.cancelAll()
        }
    }

    // MARK: - The capture thread

    /// State owned by the capture thread alone.
    private struct Loop {
        var settings: CaptureSettings
        var capturer: (any FrameSource)?
        var recorder: (any KeystrokeSource)?
        var keystrokeRetry = RetrySchedule(CaptureService.keystrokeBackoff)
        var nextKeystrokeAttempt = ContinuousClock.now
        var nextFrame = ContinuousClock.now
        var nextFlush = ContinuousClock.now + CaptureService.dropFlushInterval
        /// Agent-side drops not yet written to the spool's counters.
        var pendingDrops: [DropReason: Int] = [:]
        var capWarned = false
        /// Video: the DEK the current streams are sealed under (a new DEK starts new streams),
        /// and each monitor's current group of pictures (an eviction of it restarts the stream).
        var streamDEK: DEKID?
        var currentGroups: [Int: Int64] = [:]
        let screenDrops = RepeatedErrorLog()
        let keystrokeDrops = RepeatedErrorLog()
        let keystrokeErrors = RepeatedErrorLog()
        /// Per monitor index: a monitor that cannot be recorded is logged once, and once again
        /// when it records (or is gone).
        var monitorProblems: [Int: RepeatedErrorLog] = [:]
        /// Activity: the source, the periods it produced since the last seal, and when to look
        /// and seal next.
        var activity: (any ActivitySource)?
        var timeline: ActivityTimeline
        var activityPeriods: [ActivityPeriod] = []
        var activityStartMs: Int64?
        var nextActivityPoll = ContinuousClock.now
        var nextActivitySeal: ContinuousClock.Instant
        let activityDrops = RepeatedErrorLog()
    }

    private func captureThread() {
        let activityOn = config.activityIntervalSeconds > 0
        var loop = Loop(settings: settings.withLock { $0 },
                        timeline: ActivityTimeline(idleThresholdMs: Int64(config.idleThresholdSeconds) * 1000),
                        nextActivitySeal: .now + .seconds(config.activityIntervalSeconds))
        while !mailbox.stopRequested {
            let settings = settings.withLock { $0 }
            if settings.sameDisplay != loop.settings.sameDisplay {
                stopRecorder(&loop)
                endActivity(&loop)
                loop.keystrokeRetry.succeeded()
                loop.nextKeystrokeAttempt = .now
            }
            if settings != loop.settings {
                loop.capturer = nil  // a new capturer: new connection, encoder and streams
                loop.currentGroups = [:]
                loop.streamDEK = nil
                loop.capWarned = false
                loop.settings = settings
                loop.nextFrame = .now
            }
            let screenOn = loop.settings.screenIntervalMs > 0
            sealChunks(&loop)
            if config.keystrokeIdleMs > 0 && loop.recorder == nil && ContinuousClock.now >= loop.nextKeystrokeAttempt {
                startRecorder(&loop)
            }
            if screenOn && ContinuousClock.now >= loop.nextFrame {
                screenTick(&loop)
                // The interval is the pause between captures.
                loop.nextFrame = .now + .milliseconds(loop.settings.screenIntervalMs)
            }
            if activityOn && ContinuousClock.now >= loop.nextActivityPoll {
                activityTick(&loop)
                loop.nextActivityPoll = .now + .milliseconds(ActivityTimeline.pollIntervalMs)
            }
            if activityOn && ContinuousClock.now >= loop.nextActivitySeal {
                sealActivity(&loop, cut: true)
                loop.nextActivitySeal = .now + .seconds(config.activityIntervalSeconds)
            }
            if ContinuousClock.now >= loop.nextFlush {
                flushDrops(&loop)
                loop.nextFlush = .now + Self.dropFlushInterval
            }
            var wakeAt = loop.nextFlush
            if screenOn { wakeAt = min(wakeAt, loop.nextFrame) }
            if activityOn { wakeAt = min(wakeAt, loop.nextActivityPoll, loop.nextActivitySeal) }
            if config.keystrokeIdleMs > 0 && loop.recorder == nil { wakeAt = min(wakeAt, loop.nextKeystrokeAttempt) }
            mailbox.wait(until: wakeAt)
        }
        stopRecorder(&loop)
        endActivity(&loop)
        loop.capturer = nil
        flushDrops(&loop)
    }

    private func drop(_ reason: DropReason, _ loop: inout Loop, countedBySpool: Bool = false) {
        counters.withLock { $0.dropped[reason, default: 0] += 1 }
        if !countedBySpool { loop.pendingDrops[reason, default: 0] += 1 }
    }

    private func flushDrops(_ loop: inout Loop) {
        for (reason, count) in loop.pendingDrops where count > 0 {
            sealer.countDropped(reason, count: count)
        }
        loop.pendingDrops = [:]
    }

    /// The drop reason of a failed seal, and whether the spool already counted it.
    private static func reason(ofSealError error: any Error) -> (DropReason, countedBySpool: Bool) {
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

    // MARK: Screen

    private func screenTick(_ loop: inout Loop) {
        guard sealer.isAvailable else {
            counters.withLock { $0.skippedNoKEK += 1 }
            drop(.sealingPaused, &loop)
            return
        }
        let frames: [FrameCapture]
        do {
            if loop.capturer == nil {
                loop.capturer = try backend.makeFrameSource(loop.settings.target, encoding: loop.settings.encoding,
                                                            policy: policy, logger: logger, health: health)
            }
            if case .video = loop.settings.encoding {
                // A new DEK begins with keyframes: each DEK's packets decode on their own.
                let dek = try sealer.rotateIfDue()
                if dek != loop.streamDEK {
                    loop.capturer!.restartStreams(monitor: nil)
                    loop.streamDEK = dek
                }
            }
            frames = try loop.capturer!.captureAll(now: Date())
        } catch let error as CaptureError where error.code == .displayUnavailable {
            // Reported once by `health`; the capturer reconnects with backoff.
            counters.withLock { $0.errors += 1 }
            lastErrorText.withLock { $0 = "\(error)" }
            return
        } catch {
            counters.withLock { $0.errors += 1 }
            lastErrorText.withLock { $0 = "\(error)" }
            drop(.captureError, &loop)
            loop.screenDrops.failure("screen capture dropped (\(DropReason.captureError)): \(error)",
                                     key: DropReason.captureError.rawValue, logger: logger)
            return
        }
        if !loop.capWarned, let capturer = loop.capturer {
            loop.capWarned = true
            let format: ScreenFormat = if case .video = loop.settings.encoding { .video } else { .png }
            if let advice = Self.spoolCapAdvice(spoolMaxMB: config.spoolMaxMB, format: format,
                                                monitors: capturer.monitorSizes()) {
                logger.warning("\(advice)")
            }
        }
        // A monitor that is gone no longer fails.
        for (monitor, log) in loop.monitorProblems where monitor >= frames.count {
            log.success("screen capture of monitor \(monitor) stopped failing: the monitor is gone", logger: logger)
            loop.monitorProblems[monitor] = nil
        }
        var sealedAny = false
        for frame in frames {
            let plaintext: Data, timeMs: Int64, packet: VideoPacketMetadata?
            switch frame {
            case .changed(let meta, let png):
                (plaintext, timeMs, packet) = (FramePayload.encode(meta, png: png), meta.captureTimeMs, nil)
            case .packet(let meta, let bytes):
                (plaintext, timeMs, packet) = (VideoPacketPayload.encode(meta, packet: bytes), meta.captureTimeMs, meta)
            case .unchanged:
                counters.withLock { $0.framesUnchanged += 1 }
                continue
            case .skipped(let monitor, let error):
                let reason: DropReason = error.code == .monitorUnsupported ? .monitorUnsupported : .encodeError
                counters.withLock { $0.errors += 1 }
                lastErrorText.withLock { $0 = "\(error)" }
                drop(reason, &loop)
                loop.currentGroups[monitor] = nil
                let log = loop.monitorProblems[monitor] ?? RepeatedErrorLog()
                loop.monitorProblems[monitor] = log
                log.failure("screen capture of monitor \(monitor) dropped (\(reason)): \(error.message)", key: reason.rawValue,
                            level: reason == .monitorUnsupported ? .warning : .error, logger: logger)
                continue
            }
            if let log = loop.monitorProblems.removeValue(forKey: frame.monitor) {
                log.success("screen capture of monitor \(frame.monitor) recording again", logger: logger)
            }
            do {
                let receipt = try sealer.seal(plaintext, kind: .screen, captureTimeMs: timeMs, group: packet?.groupID)
                counters.withLock { $0.framesSealed += 1 }
                sealedAny = true
                if let packet {
                    loop.currentGroups[packet.monitor] = packet.groupID
                    if receipt.dekID != loop.streamDEK {  // rotated inside seal (a limit reached mid-capture)
                        loop.capturer?.restartStreams(monitor: nil)
                        loop.streamDEK = receipt.dekID
                    }
                }
                noteEvictions(receipt.evictedGroups, &loop)
                loop.screenDrops.success("screen captures kept again", logger: logger)
            } catch {
                if let packet {
                    // The stream cannot go on without this packet: its monitor starts a new one.
                    loop.capturer?.restartStreams(monitor: packet.monitor)
                    loop.currentGroups[packet.monitor] = nil
                }
                let (reason, counted) = Self.reason(ofSealError: error)
                counters.withLock { $0.errors += 1 }
                lastErrorText.withLock { $0 = "\(error)" }
                drop(reason, &loop, countedBySpool: counted)
                loop.screenDrops.failure("screen capture dropped (\(reason)): \(error)", key: reason.rawValue,
                                         metadata: ["capture.bytes": "\(plaintext.count)"], logger: logger)
            }
        }
        if sealedAny { MemoryPolicy.trim() }
    }

    /// Restarts the video stream of every monitor whose current group of pictures the spool
    /// evicted (its next packets could not decode), so the next frame is a keyframe.
    private func noteEvictions(_ groups: Set<Int64>, _ loop: inout Loop) {
        guard !groups.isEmpty else { return }
        for (monitor, group) in loop.currentGroups where groups.contains(group) {
            loop.capturer?.restartStreams(monitor: monitor)
            loop.currentGroups[monitor] = nil
        }
    }

    // MARK: Activity

    private static func nowMs() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    /// Observes the focus and idle time once and adds the periods that closed.
    private func activityTick(_ loop: inout Loop) {
        guard sealer.isAvailable else {
            // Nothing is captured without a KEK: the periods so far end here.
            endActivity(&loop)
            return
        }
        if loop.activity == nil {
            loop.activity = backend.makeActivitySource(loop.settings.target, logger: logger, health: health)
        }
        let now = Date()
        let timeMs = Int64((now.timeIntervalSince1970 * 1000).rounded())
        do {
            let seen = try loop.activity!.observe(now: now)
            if loop.activityStartMs == nil { loop.activityStartMs = timeMs }
            loop.activityPeriods += loop.timeline.observe(seen, timeMs: timeMs, excluded: policy.rules.isExcluded(seen.focus))
        } catch {
            // Display down (reported once by `health`): the open periods end at the loss.
            loop.activityPeriods += loop.timeline.finish(timeMs: timeMs)
            if (error as? CaptureError)?.code != .displayUnavailable {
                counters.withLock { $0.errors += 1 }
                lastErrorText.withLock { $0 = "\(error)" }
            }
        }
    }

    /// Closes the open periods (stop, display change) and seals what there is.
    private func endActivity(_ loop: inout Loop) {
        loop.activityPeriods += loop.timeline.finish(timeMs: Self.nowMs())
        sealActivity(&loop, cut: false)
        loop.activity = nil
    }

    /// Seals the periods gathered since the last seal as one `activity` chunk; with `cut`, the
    /// periods still open are cut here first (and go on in the next chunk).
    private func sealActivity(_ loop: inout Loop, cut: Bool) {
        let endMs = Self.nowMs()
        if cut { loop.activityPeriods += loop.timeline.cut(timeMs: endMs) }
        guard !loop.activityPeriods.isEmpty else {
            loop.activityStartMs = nil
            return
        }
        let periods = loop.activityPeriods.sorted { ($0.startMs, $0.type.rawValue) < ($1.startMs, $1.type.rawValue) }
        let startMs = min(loop.activityStartMs ?? endMs, periods.first!.startMs)
        let chunk = ActivityChunk(startMs: startMs, endMs: max(endMs, periods.map(\.endMs).max()!),
                                  idleThresholdMs: loop.timeline.idleThresholdMs, periods: periods)
        loop.activityPeriods = []
        loop.activityStartMs = nil
        do {
            let receipt = try sealer.seal(chunk.encoded(), kind: .activity, captureTimeMs: chunk.startMs)
            counters.withLock { $0.activitySealed += 1 }
            noteEvictions(receipt.evictedGroups, &loop)
            loop.activityDrops.success("activity records kept again", logger: logger)
        } catch {
            let (reason, counted) = Self.reason(ofSealError: error)
            counters.withLock { $0.errors += 1 }
            drop(reason, &loop, countedBySpool: counted)
            loop.activityDrops.failure("activity record dropped (\(reason)): \(error)", key: reason.rawValue, logger: logger)
        }
    }

    // MARK: Keystrokes

    private func startRecorder(_ loop: inout Loop) {
        guard sealer.isAvailable else {
            loop.nextKeystrokeAttempt = .now + .seconds(1)
            return
        }
        let mailbox = self.mailbox
        do {
            let recorder = try backend.makeKeystrokeSource(loop.settings.target, idleMs: config.keystrokeIdleMs,
                                                           maxKeysPerChunk: 4096, policy: policy, logger: logger,
                                                           health: health,
                                                           onChunk: { mailbox.post($0) })
            try recorder.start()
            loop.recorder = recorder
            loop.keystrokeRetry.succeeded()
            loop.keystrokeErrors.success("keystroke capture started", logger: logger)
        } catch {
            loop.nextKeystrokeAttempt = .now + loop.keystrokeRetry.failed()
            // A missing display is reported by `health`; anything else (no RECORD) here, once.
            if (error as? CaptureError)?.code != .displayUnavailable {
                loop.keystrokeErrors.failure("keystroke capture unavailable; retrying with backoff: \(error)",
                                             logger: logger)
            }
        }
    }

    /// Flushes and stops the recorder (≤ 2 s), then seals what it delivered.
    private func stopRecorder(_ loop: inout Loop) {
        guard let recorder = loop.recorder else { return }
        recorder.flush()
        recorder.stop()
        loop.recorder = nil
        sealChunks(&loop)
    }

    private func sealChunks(_ loop: inout Loop) {
        for chunk in mailbox.takeChunks() {
            do {
                let receipt = try sealer.seal(chunk.encoded(), kind: .keystrokes, captureTimeMs: chunk.startMs)
                let excluded = chunk.keys.lazy.filter { $0.text == KeyToken.excluded && $0.isMarker }.reduce(0) { $0 + ($1.count ?? 0) }
                counters.withLock {
                    $0.chunksSealed += 1
                    $0.keysExcluded += excluded
                }
                noteEvictions(receipt.evictedGroups, &loop)  // keystrokes evict screen records first
                loop.keystrokeDrops.success("keystroke chunks kept again", logger: logger)
            } catch {
                let (reason, counted) = Self.reason(ofSealError: error)
                counters.withLock { $0.errors += 1 }
                drop(reason, &loop, countedBySpool: counted)
                loop.keystrokeDrops.failure("keystroke chunk dropped (\(reason)): \(error)", key: reason.rawValue,
                                            logger: logger)
            }
        }
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

/// Wakes the capture thread and carries keystroke chunks to it from the record thread; tells
/// `run()` when the thread has finished.
private final class Mailbox: Sendable {
    private struct State {
        var chunks: [KeystrokeChunk] = []
        var stop = false
        var finished = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())
    private let signal = DispatchSemaphore(value: 0)

    var stopRequested: Bool { state.withLock { $0.stop } }

    func post(_ chunk: KeystrokeChunk) {
        state.withLock { $0.chunks.append(chunk) }
        signal.signal()
    }

    func takeChunks() -> [KeystrokeChunk] {
        state.withLock { s in
            defer { s.chunks = [] }
            return s.chunks
        }
    }

    func wake() { signal.signal() }

    func requestStop() {
        state.withLock { $0.stop = true }
        signal.signal()
    }

    /// Blocks the capture thread until `deadline`, a posted chunk, a wake or a stop request.
    func wait(until deadline: ContinuousClock.Instant) {
        let left = ContinuousClock.now.duration(to: deadline)
        guard left > .zero, state.withLock({ $0.chunks.isEmpty && !$0.stop }) else { return }
        let ns = left.components.seconds * 1_000_000_000 + left.components.attoseconds / 1_000_000_000
        _ = signal.wait(timeout: .now() + .nanoseconds(Int(min(ns, Int64(Int32.max)))))
    }

    func finish() {
        let waiters = state.withLock { s in
            s.finished = true
            defer { s.waiters = [] }
            return s.waiters
        }
        waiters.forEach { $0.resume() }
    }

    /// Returns once the capture thread has finished.
    func finished() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                if s.finished { return true }
                s.waiters.append(c)
                return false
            }
            if done { c.resume() }
        }
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
