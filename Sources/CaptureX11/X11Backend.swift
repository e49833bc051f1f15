import CaptureCore
import CaptureFormat
import Logging

/// The X11 capture backend: frames from `ScreenCapturer` (MIT-SHM/XGetImage, DAMAGE) and
/// keystrokes from `KeystrokeRecorder` (RECORD), each on its own X connections.
/// `CaptureTarget.display` is an X display name and `credentials` an X authority file.
public struct X11Backend: CaptureBackend {
    public init() {}

    public var name: String { "x11" }

    public func makeFrameSource(_ target: CaptureTarget, encoding: ScreenEncoding, policy: CapturePolicy, logger: Logger,
                                health: DisplayHealth) throws -> any FrameSource {
        try ScreenCapturer(display: target.display, xauthority: target.credentials,
                           xauthoritySource: target.credentialsSource, encoding: encoding, logger: logger,
                           health: health, policy: policy)
    }

    public func makeKeystrokeSource(_ target: CaptureTarget, idleMs: Int, maxKeysPerChunk: Int, policy: CapturePolicy,
                                    logger: Logger, health: DisplayHealth,
                                    onChunk: @escaping @Sendable (KeystrokeChunk) -> Void) throws -> any KeystrokeSource {
        try KeystrokeRecorder(display: target.display, xauthority: target.credentials,
                              xauthoritySource: target.credentialsSource, idleMs: idleMs,
                              maxKeysPerChunk: maxKeysPerChunk, logger: logger, health: health, policy: policy,
                              onChunk: onChunk)
    }

    public func makeActivitySource(_ target: CaptureTarget, logger: Logger, health: DisplayHealth) -> any ActivitySource {
        X11ActivityMonitor(display: target.display, xauthority: target.credentials,
                           xauthoritySource: target.credentialsSource, logger: logger, health: health)
    }

    public func makeSessionSource(displays: [String]?, credentials: String?, logger: Logger) -> any SessionSource {
        X11SessionDiscovery(displays: displays, credentials: credentials, logger: logger)
    }
}

extension ScreenCapturer: FrameSource {}
extension KeystrokeRecorder: KeystrokeSource {}
