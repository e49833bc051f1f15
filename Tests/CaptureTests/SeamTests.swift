import CaptureCore
import CaptureFormat
import CaptureX11
import Foundation
import Synchronization
import TestSupport
import Testing

/// The capture backend seam (docs/ARCHITECTURE.md "The capture seam"): the X11 backend works
/// through the protocols alone, and the layering holds (the seam names no X11, the agent's
/// pipeline names no backend).
@Suite("Capture backend seam")
struct SeamTests {
    @Test("X11Backend through the protocols: a FrameSource gives the painted root, a KeystrokeSource the typed text")
    func x11ThroughTheSeam() throws {
        try requireXTools(["Xvfb", "xsetroot", "xdotool"])
        let xvfb = try Xvfb(width: 160, height: 120, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#336699"])
        let backend: any CaptureBackend = X11Backend()
        #expect(backend.name == "x11")
        let logger = testLogger("seam")
        let health = DisplayHealth(logger: logger)
        let target = CaptureTarget(display: xvfb.name, credentials: "/dev/null")
        let frames: any FrameSource = try backend.makeFrameSource(target, encoding: .png(level: 1), policy: CapturePolicy(), logger: logger,
                                                                  health: health)
        #expect(frames.connectError == nil)
        let shot = try frames.captureAll(now: Date())
        let (meta, png) = try #require(shot.first?.changedFrame)
        #expect(meta.width == 160 && meta.height == 120)
        let decoded = try decodePNG(png)
        #expect(decoded.pixel(0, 0) == RGB(hex: "#336699") && decoded.pixel(159, 119) == RGB(hex: "#336699"))
        #expect(frames.monitorSizes().map(\.width) == [160])
        // Unchanged, then after a restart of the streams and change detection, encoded again.
        #expect(try frames.captureAll(now: Date()).first?.isUnchanged == true)
        frames.resetChangeDetection()
        #expect(try frames.captureAll(now: Date()).first?.changedFrame != nil)

        let received = Mutex<[KeystrokeChunk]>([])
        let keys: any KeystrokeSource = try backend.makeKeystrokeSource(
            target, idleMs: 10_000, maxKeysPerChunk: 100, policy: CapturePolicy(), logger: logger, health: health,
            onChunk: { chunk in received.withLock { $0.append(chunk) } })
        try keys.start()
        #expect(waitUntil(timeout: 10) { keys.isRecording })  // set by the record thread once it runs
        try xvfb.run(["xdotool", "type", "--delay", "5", "seam"])
        // RECORD delivers within one poll: wait for the keys, then flush the open chunk.
        let deadline = Date().addingTimeInterval(10)
        repeat {
            keys.flush()
            if received.withLock({ $0.map(\.text).joined() }) == "seam" { break }
            usleep(50_000)
        } while Date() < deadline
        keys.stop()
        #expect(!keys.isRecording)
        #expect(received.withLock { $0.map(\.text).joined() } == "seam")
        #expect(throws: CaptureError.self) { try keys.start() }
    }

    @Test("layering: CaptureCore imports no display library; the agent names a backend in one file only")
    func layering() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        func imports(_ folder: String) throws -> [String: [String]] {
            let dir = root.appendingPathComponent(folder)
            var out: [String: [String]] = [:]
            for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) where name.hasSuffix(".swift") {
                let text = try String(contentsOf: dir.appendingPathComponent(name), encoding: .utf8)
                out[name] = text.split(separator: "\n").filter { $0.hasPrefix("import ") }.map { String($0.dropFirst(7)) }
            }
            return out
        }
        let core = try imports("Sources/CaptureCore")
        #expect(!core.isEmpty)
        for (file, modules) in core {
            #expect(modules.allSatisfy { ["CaptureFormat", "CustosBase", "Foundation", "Logging", "Synchronization"].contains($0) },
                    "Sources/CaptureCore/\(file) imports \(modules)")
        }
        let agent = try imports("Sources/Agent")
        let naming = agent.filter { $0.value.contains { $0.hasPrefix("CaptureX11") || $0.hasPrefix("CX11") } }.keys.sorted()
        #expect(naming == ["CaptureBackends.swift"])
    }
}
