import CaptureCore
import CaptureFormat
import CustosBase
import CustosConfig
import Envelope
import Foundation
import Logging
import Spool
import Synchronization

/// What the capture of every session shares: the config, the sealer (one DEK session for all),
/// the backend, the window rules, the settings SIGHUP may change, and the counters.
final class CaptureShared: Sendable {
    let config: AgentConfig
    let sealer: Sealer
    let backend: any CaptureBackend
    let policy: CapturePolicy
    let settings: Mutex<CaptureService.CaptureSettings>
    let counters = Mutex(CaptureCounters())
    let lastErrorText = Mutex<String?>(nil)

    init(config: AgentConfig, sealer: Sealer, backend: any CaptureBackend) {
        self.config = config
        self.sealer = sealer
        self.backend = backend
        policy = CapturePolicy(config.windowRules)
        settings = Mutex(CaptureService.CaptureSettings(config))
    }
}

/// The capture of one graphical session: screen frames, keystrokes and activity of its
/// display, on one dedicated thread (`custos.capture`), each capture sealed as a session blob
/// naming the session's user and display (docs/FORMAT.md "Sealed session blob").
///
/// Everything that blocks — X requests, encoding, sealing, the spool's fsync'd insert — runs
/// on that thread, never on Swift's cooperative pool. `stop()` asks the thread to stop: the
/// current capture finishes, the keystroke source is flushed (its open chunk sealed) and
/// stopped (≤ 2 s), the activity periods close and are sealed, and the thread exits.
/// Keystroke chunks arrive from the keystroke source's own thread through a mailbox.
///
/// Display problems are reported once for all paths of the session through its `DisplayHealth`.
/// Every capture not kept is counted by reason (`DropReason`) in the shared counters and the
/// spool's (`status`), and logged as "dropped" once per reason until a capture is kept again.
/// With no usable KEK nothing is captured (counted as `sealing-paused`).
final class SessionCapture: Sendable {
    let session: GraphicalSession
    private let shared: CaptureShared
    private let logger: Logger
    private let health: DisplayHealth
    /// The header's session (user, display) of every blob this session seals.
    private let blobSession: BlobSession?
    private let mailbox = Mailbox()

    private var config: AgentConfig { shared.config }
    private var sealer: Sealer { shared.sealer }
    private var backend: any CaptureBackend { shared.backend }
    private var policy: CapturePolicy { shared.policy }

    /// `health`: the display's (kept by the caller across restarts of this session's capture,
    /// so a problem and its recovery are logged once each).
    init(session: GraphicalSession, shared: CaptureShared, logger: Logger, health: DisplayHealth) {
        self.session = session
        self.shared = shared
        var logger = logger
        logger[metadataKey: "capture.display"] = "\(SafeText.escaped(session.display))"
        logger[metadataKey: "capture.user"] = "\(SafeText.escaped(session.userName.rawValue))"
        self.logger = logger
        self.health = health
        blobSession = try? BlobSession(user: session.userName, display: session.display)
    }

    /// Starts the capture thread.
    func start() {
        let thread = Thread { [self] in
            // Name the OS thread for ps/top/perf (Foundation's `Thread.name` does not on Linux).
            try? "custos.capture".write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
            self.captureThread()
            self.mailbox.finish()
        }
        thread.name = "custos.capture"
        thread.start()
    }

    /// Wakes the thread (settings changed).
    func wake() { mailbox.wake() }

    /// Asks the thread to stop, without waiting.
    func requestStop() { mailbox.requestStop() }

    /// Stops the thread and waits until it has sealed what it holds and exited.
    func stop() {
        mailbox.requestStop()
        mailbox.waitFinished()
    }

    // MARK: - The capture thread

    /// State owned by the capture thread alone.
    private struct Loop {
        var settings: CaptureService.CaptureSettings
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
        var loop = Loop(settings: shared.settings.withLock { $0 },
                        timeline: ActivityTimeline(idleThresholdMs: Int64(config.idleThresholdSeconds) * 1000),
                        nextActivitySeal: .now + .seconds(config.activityIntervalSeconds))
        while !mailbox.stopRequested {
            let settings = shared.settings.withLock { $0 }
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
                loop.nextFlush = .now + CaptureService.dropFlushInterval
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
        shared.counters.withLock { $0.dropped[reason, default: 0] += 1 }
        if !countedBySpool { loop.pendingDrops[reason, default: 0] += 1 }
    }

    private func flushDrops(_ loop: inout Loop) {
        for (reason, count) in loop.pendingDrops where count > 0 {
            sealer.countDropped(reason, count: count)
        }
        loop.pendingDrops = [:]
    }

    // MARK: Screen

    private func screenTick(_ loop: inout Loop) {
        guard sealer.isAvailable else {
            shared.counters.withLock { $0.skippedNoKEK += 1 }
            drop(.sealingPaused, &loop)
            return
        }
        let frames: [FrameCapture]
        do {
            if loop.capturer == nil {
                loop.capturer = try backend.makeFrameSource(session.target, encoding: loop.settings.encoding,
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
            shared.counters.withLock { $0.errors += 1 }
            shared.lastErrorText.withLock { $0 = "\(error)" }
            return
        } catch {
            shared.counters.withLock { $0.errors += 1 }
            shared.lastErrorText.withLock { $0 = "\(error)" }
            drop(.captureError, &loop)
            loop.screenDrops.failure("screen capture dropped (\(DropReason.captureError)): \(error)",
                                     key: DropReason.captureError.rawValue, logger: logger)
            return
        }
        if !loop.capWarned, let capturer = loop.capturer {
            loop.capWarned = true
            let format: ScreenFormat = if case .video = loop.settings.encoding { .video } else { .png }
            if let advice = CaptureService.spoolCapAdvice(spoolMaxMB: config.spoolMaxMB, format: format,
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
                shared.counters.withLock { $0.framesUnchanged += 1 }
                continue
            case .skipped(let monitor, let error):
                let reason: DropReason = error.code == .monitorUnsupported ? .monitorUnsupported : .encodeError
                shared.counters.withLock { $0.errors += 1 }
                shared.lastErrorText.withLock { $0 = "\(error)" }
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
                let receipt = try sealer.seal(plaintext, kind: .screen, captureTimeMs: timeMs, group: packet?.groupID, session: blobSession)
                shared.counters.withLock { $0.framesSealed += 1 }
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
                let (reason, counted) = CaptureService.reason(ofSealError: error)
                shared.counters.withLock { $0.errors += 1 }
                shared.lastErrorText.withLock { $0 = "\(error)" }
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
            loop.activity = backend.makeActivitySource(session.target, logger: logger, health: health)
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
                shared.counters.withLock { $0.errors += 1 }
                shared.lastErrorText.withLock { $0 = "\(error)" }
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
            let receipt = try sealer.seal(chunk.encoded(), kind: .activity, captureTimeMs: chunk.startMs, session: blobSession)
            shared.counters.withLock { $0.activitySealed += 1 }
            noteEvictions(receipt.evictedGroups, &loop)
            loop.activityDrops.success("activity records kept again", logger: logger)
        } catch {
            let (reason, counted) = CaptureService.reason(ofSealError: error)
            shared.counters.withLock { $0.errors += 1 }
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
            let recorder = try backend.makeKeystrokeSource(session.target, idleMs: config.keystrokeIdleMs,
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
                let receipt = try sealer.seal(chunk.encoded(), kind: .keystrokes, captureTimeMs: chunk.startMs, session: blobSession)
                let excluded = chunk.keys.lazy.filter { $0.text == KeyToken.excluded && $0.isMarker }.reduce(0) { $0 + ($1.count ?? 0) }
                shared.counters.withLock {
                    $0.chunksSealed += 1
                    $0.keysExcluded += excluded
                }
                noteEvictions(receipt.evictedGroups, &loop)  // keystrokes evict screen records first
                loop.keystrokeDrops.success("keystroke chunks kept again", logger: logger)
            } catch {
                let (reason, counted) = CaptureService.reason(ofSealError: error)
                shared.counters.withLock { $0.errors += 1 }
                drop(reason, &loop, countedBySpool: counted)
                loop.keystrokeDrops.failure("keystroke chunk dropped (\(reason)): \(error)", key: reason.rawValue,
                                            logger: logger)
            }
        }
    }
}

/// Wakes a capture thread and carries keystroke chunks to it from the record thread; tells
/// whoever waits when the thread has finished.
final class Mailbox: Sendable {
    private struct State {
        var chunks: [KeystrokeChunk] = []
        var stop = false
        var finished = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())
    private let signal = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)

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
        done.signal()
    }

    /// Blocks until the thread has finished (from another thread, not the pool).
    func waitFinished() {
        done.wait()
        done.signal()  // later callers return at once
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
