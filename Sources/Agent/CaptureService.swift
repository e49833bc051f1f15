import Capture
import CaptureFormat
import CustosConfig
import Envelope
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Counters of what the capture loops did, for logs, `status` and tests.
public struct CaptureCounters: Sendable, Equatable {
    public var framesSealed = 0
    public var framesUnchanged = 0
    public var chunksSealed = 0
    public var skippedNoKEK = 0
    public var errors = 0
}

/// Runs the screen and keystroke capture loops and hands every capture to the `Sealer`.
///
/// Captures exist in plaintext only in memory between the capture call and `Sealer.seal`.
/// With no usable KEK nothing is captured. On graceful shutdown the keystroke recorder is
/// flushed (the open chunk is sealed) and stopped, so capture stops first, within 2 s.
public final class CaptureService: Service, Sendable {
    private let config: AgentConfig
    private let sealer: Sealer
    private let logger: Logger
    private let counters = Mutex(CaptureCounters())
    private let lastErrorText = Mutex<String?>(nil)

    /// The last capture error, for `record`'s summary.
    public var lastError: String? { lastErrorText.withLock { $0 } }

    public init(config: AgentConfig, sealer: Sealer, logger: Logger) {
        self.config = config
        self.sealer = sealer
        self.logger = logger
    }

    /// A snapshot of the counters.
    public var snapshot: CaptureCounters { counters.withLock { $0 } }

    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            if config.screenIntervalMs > 0 {
                group.addTask { await self.screenLoop() }
            }
            if config.keystrokeIdleMs > 0 {
                group.addTask { await self.keystrokeLoop() }
            }
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

    // MARK: Screen

    private func screenLoop() async {
        var capturer: ScreenCapturer?
        var lastError: String?
        let interval = Duration.milliseconds(config.screenIntervalMs)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            if sealer.isAvailable {
                do {
                    if capturer == nil {
                        capturer = try ScreenCapturer(display: config.display, xauthority: config.xauthority,
                                                      pngLevel: config.pngLevel, logger: logger)
                    }
                    var sealedAny = false
                    for frame in try capturer!.captureAll() {
                        switch frame {
                        case .changed(let meta, let png):
                            try sealer.seal(FramePayload.encode(meta, png: png), kind: .screen, captureTimeMs: meta.captureTimeMs)
                            counters.withLock { $0.framesSealed += 1 }
                            sealedAny = true
                        case .unchanged:
                            counters.withLock { $0.framesUnchanged += 1 }
                        }
                    }
                    if sealedAny { MemoryPolicy.trim() }
                    if lastError != nil {
                        logger.info("screen capture recovered")
                        lastError = nil
                    }
                } catch {
                    counters.withLock { $0.errors += 1 }
                    let text = "\(error)"
                    lastErrorText.withLock { $0 = text }
                    if text != lastError {
                        logger.error("screen capture failed; retrying", metadata: ["capture.error": "\(text)"])
                        lastError = text
                    }
                    // The capturer reconnects by itself (with backoff) when the display goes away;
                    // keeping it keeps change detection and logs the loss once.
                }
            } else {
                counters.withLock { $0.skippedNoKEK += 1 }
            }
            try? await Task.sleep(for: interval)
        }
    }

    // MARK: Keystrokes

    private func keystrokeLoop() async {
        var backoff = Duration.seconds(1)
        var lastError: String?
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            guard sealer.isAvailable else {
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            let recorder: KeystrokeRecorder
            do {
                recorder = try KeystrokeRecorder(display: config.display, xauthority: config.xauthority,
                                                 idleMs: config.keystrokeIdleMs, maxKeysPerChunk: 4096, logger: logger)
                try recorder.start()
            } catch {
                let text = "\(error)"
                if text != lastError {
                    logger.error("keystroke capture unavailable; retrying", metadata: ["capture.error": "\(text)"])
                    lastError = text
                }
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(30))
                continue
            }
            if lastError != nil { logger.info("keystroke capture started"); lastError = nil }
            backoff = .seconds(1)
            await withTaskCancellationHandler {
                await withGracefulShutdownHandler {
                    for await chunk in recorder.chunks {
                        do {
                            try sealer.seal(chunk.encoded(), kind: .keystrokes, captureTimeMs: chunk.startMs)
                            counters.withLock { $0.chunksSealed += 1 }
                        } catch {
                            counters.withLock { $0.errors += 1 }
                            logger.error("keystroke chunk not sealed", metadata: ["capture.error": "\(error)"])
                        }
                    }
                } onGracefulShutdown: {
                    recorder.flush()
                    recorder.stop()
                }
            } onCancel: {
                recorder.flush()
                recorder.stop()
            }
        }
    }
}
