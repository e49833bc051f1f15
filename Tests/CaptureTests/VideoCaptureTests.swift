import CaptureCore
import CaptureFormat
import CaptureX11
import CustosBase
import Foundation
import TestSupport
import Testing
import Video

/// A decoded video picture as RGB (through libyuv's BT.601 conversion).
private struct Picture {
    let width: Int, height: Int
    let i420: I420Frame
    let bgrx: [UInt8]
    init(_ frame: I420Frame) {
        width = frame.width
        height = frame.height
        i420 = frame
        bgrx = frame.bgrx()
    }
    func pixel(_ x: Int, _ y: Int) -> RGB {
        let i = (y * width + x) * 4
        return RGB(bgrx[i + 2], bgrx[i + 1], bgrx[i])
    }
}

/// Whether two colours differ by at most `tolerance` per channel (BT.601 limited range and
/// 4:2:0 chroma lose a few levels on a round trip).
private func close(_ a: RGB, _ b: RGB, tolerance: Int = 8) -> Bool {
    abs(Int(a.r) - Int(b.r)) <= tolerance && abs(Int(a.g) - Int(b.g)) <= tolerance && abs(Int(a.b) - Int(b.b)) <= tolerance
}

/// The I420 picture of a PNG frame's exact pixels (the reference a decoded packet is compared with).
private func reference(_ png: DecodedPNG) throws -> I420Frame {
    let frame = try I420Frame(width: png.width, height: png.height)
    try png.rgb.withUnsafeBytes { raw in
        try frame.write(rows: raw.baseAddress!, firstRow: 0, rowCount: png.height, stride: png.width * 3, layout: .rgb)
    }
    return frame
}

extension FrameCapture {
    var videoPacket: (VideoPacketMetadata, [UInt8])? {
        if case .packet(let meta, let packet) = self { return (meta, packet) }
        return nil
    }
}

/// Decodes the packets of each stream in order with one decoder per stream, as a player would.
private final class StreamDecoders {
    private var decoders: [String: AV1Decoder] = [:]
    private var nextIndex: [String: Int] = [:]

    func decode(_ meta: VideoPacketMetadata, _ packet: [UInt8]) throws -> Picture {
        if decoders[meta.streamID] == nil {
            #expect(meta.packetIndex == 0 && meta.keyframe, "a stream must start with packet 0, a keyframe")
            decoders[meta.streamID] = try AV1Decoder()
        }
        #expect(meta.packetIndex == nextIndex[meta.streamID, default: 0], "stream \(meta.streamID) has a hole")
        nextIndex[meta.streamID] = meta.packetIndex + 1
        let pictures = try decoders[meta.streamID]!.decode(packet)
        try #require(pictures.count == 1)
        #expect(pictures[0].width == meta.width && pictures[0].height == meta.height)
        return Picture(pictures[0])
    }
}

@Suite("Screen video on a real Xvfb")
struct VideoCaptureTests {
    private func videoCapturer(_ xvfb: Xvfb, keyframeIntervalMs: Int64 = 60_000) throws -> ScreenCapturer {
        try ScreenCapturer(display: xvfb.name, xauthority: nil, encoding: .video(keyframeIntervalMs: keyframeIntervalMs),
                           logger: testLogger("t"))
    }

    @Test("depth 24: a painted colour survives; the tiled pattern decodes with SSIM ≥ 0.97 against the exact grab")
    func depth24ColourAndPattern() throws {
        try requireXTools()
        let dir = try TempDir("video-24")
        defer { dir.remove() }
        let xvfb = try Xvfb(width: 640, height: 480, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#c83214"])
        let capturer = try videoCapturer(xvfb)
        let decoders = StreamDecoders()
        let now = Date(timeIntervalSince1970: 1_800_000_000.123)
        let (meta, packet) = try #require(try capturer.captureAll(now: now).first?.videoPacket)
        #expect(meta.keyframe && meta.packetIndex == 0 && meta.groupStart == 0)
        // The codec string follows the stream's own sequence header (level by picture size).
        #expect(meta.codec == (try AV1TemporalUnit(packet).sequenceHeader()?.codecString))
        #expect(meta.codec.hasPrefix("av01.0.") && meta.codec.hasSuffix("M.08"), "\(meta.codec)")
        #expect(meta.width == 640 && meta.height == 480 && meta.monitor == 0 && meta.x == 0 && meta.y == 0)
        #expect(meta.captureTimeMs == 1_800_000_000_123)
        let solid = try decoders.decode(meta, packet)
        for (x, y) in [(0, 0), (320, 240), (639, 479)] {
            #expect(close(solid.pixel(x, y), RGB(hex: "#c83214")), "pixel (\(x),\(y)) is \(solid.pixel(x, y))")
        }

        // The pattern (text-like 1-pixel detail) against the exact pixels of a PNG grab.
        let fg = RGB(hex: "#101010"), bg = RGB(hex: "#f4f4f0")
        try TilePattern.paint(xvfb, fg: fg.hex, bg: bg.hex, dir: dir)
        let (m2, p2) = try #require(try capturer.captureAll().first?.videoPacket)
        #expect(!m2.keyframe && m2.packetIndex == 1 && m2.groupStart == 0 && m2.streamID == meta.streamID)
        let decoded = try decoders.decode(m2, p2)
        let png = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        let (_, exact) = try #require(try png.captureAll().first?.changedFrame)
        let quality = try #require(decoded.i420.compare(with: try reference(try decodePNG(exact))))
        #expect(quality.ssim >= 0.97, "SSIM \(quality.ssim), PSNR \(quality.psnr) dB")
        // The payload carries the packet and its metadata unchanged.
        let (m3, p3) = try VideoPacketPayload.decode(VideoPacketPayload.encode(m2, packet: p2))
        #expect(m3 == m2 && [UInt8](p3) == p2)
    }

    @Test("depth 16, width 1023, no MIT-SHM: RGB565 rows converted once, colours and pattern survive")
    func depth16OddWidth() throws {
        try requireXTools()
        let dir = try TempDir("video-16")
        defer { dir.remove() }
        let xvfb = try Xvfb(width: 1023, height: 301, depth: 16, extraArgs: ["-extension", "MIT-SHM"])
        let fg = RGB(hex: "#ff00ff"), bg = RGB(hex: "#00ff00")
        try TilePattern.paint(xvfb, fg: fg.hex, bg: bg.hex, dir: dir)
        let capturer = try videoCapturer(xvfb)
        let (meta, packet) = try #require(try capturer.captureAll().first?.videoPacket)
        #expect(!capturer.isUsingSharedMemory)
        #expect(meta.width == 1023 && meta.height == 301)
        let decoded = try StreamDecoders().decode(meta, packet)
        let png = try ScreenCapturer(display: xvfb.name, xauthority: nil, pngLevel: 1, logger: testLogger("t"))
        let (_, exact) = try #require(try png.captureAll().first?.changedFrame)
        let quality = try #require(decoded.i420.compare(with: try reference(try decodePNG(exact))))
        #expect(quality.ssim >= 0.97, "SSIM \(quality.ssim), PSNR \(quality.psnr) dB")
        try xvfb.run(["xsetroot", "-solid", "#0000ff"])
        let (m2, p2) = try #require(try capturer.captureAll().first?.videoPacket)
        #expect(!m2.keyframe && m2.packetIndex == 1)
        let decoders = StreamDecoders()
        _ = try decoders.decode(meta, packet)
        let solid = try decoders.decode(m2, p2)
        #expect(close(solid.pixel(1022, 300), RGB(hex: "#0000ff")), "\(solid.pixel(1022, 300))")
    }

    @Test("unchanged screens encode nothing; changes are inter packets; the interval and a restart make keyframes")
    func keyframePolicy() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 320, height: 200, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#203040"])
        let capturer = try videoCapturer(xvfb, keyframeIntervalMs: 1000)
        let decoders = StreamDecoders()
        let t0 = Date(timeIntervalSince1970: 1_800_000_000)
        var packets: [VideoPacketMetadata] = []
        func step(_ colour: String?, at offsetMs: Int) throws -> FrameCapture {
            if let colour { try xvfb.run(["xsetroot", "-solid", colour]) }
            let frame = try #require(try capturer.captureAll(now: t0.addingTimeInterval(Double(offsetMs) / 1000)).first)
            if let (meta, packet) = frame.videoPacket {
                let picture = try decoders.decode(meta, packet)
                if let colour { #expect(close(picture.pixel(10, 10), RGB(hex: colour)), "\(picture.pixel(10, 10)) vs \(colour)") }
                packets.append(meta)
            }
            return frame
        }
        #expect(try step(nil, at: 0).videoPacket != nil)             // packet 0: keyframe
        #expect(try step(nil, at: 200).isUnchanged)                   // nothing drawn: no packet
        #expect(try step("#405060", at: 400).videoPacket != nil)     // packet 1: inter
        #expect(try step("#506070", at: 1100).videoPacket != nil)    // packet 2: interval passed → keyframe
        #expect(try step("#607080", at: 1300).videoPacket != nil)    // packet 3: inter, group 2
        capturer.restartStreams()
        #expect(try step(nil, at: 1400).videoPacket != nil)          // new stream: keyframe, same pixels re-sent
        try #require(packets.count == 5)
        #expect(packets.map(\.keyframe) == [true, false, true, false, true])
        #expect(packets.map(\.packetIndex) == [0, 1, 2, 3, 0])
        #expect(packets.map(\.groupStart) == [0, 0, 2, 2, 0])
        #expect(Set(packets[0..<4].map(\.streamID)).count == 1 && packets[4].streamID != packets[0].streamID)
        #expect(packets[0].groupID == packets[1].groupID && packets[2].groupID == packets[3].groupID
                && packets[1].groupID != packets[2].groupID)
    }

    @Test("a RandR resize mid-stream starts a new stream at the new size with a keyframe; every packet decodes")
    func resizeStartsANewStream() throws {
        try requireXTools(["Xvfb", "xsetroot", "xrandr", "xwininfo"])
        let xvfb = try Xvfb(width: 640, height: 480, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#aa5500"])
        let capturer = try videoCapturer(xvfb)
        let decoders = StreamDecoders()
        let (m1, p1) = try #require(try capturer.captureAll().first?.videoPacket)
        _ = try decoders.decode(m1, p1)
        _ = try runCommand(["xrandr", "--fb", "500x300"], environment: xvfb.environment)
        let size = try xvfb.run(["xwininfo", "-root"])
        try #require(size.contains("Width: 500") && size.contains("Height: 300"))
        let (m2, p2) = try #require(try capturer.captureAll().first?.videoPacket)
        #expect(m2.width == 500 && m2.height == 300 && m2.keyframe && m2.packetIndex == 0 && m2.streamID != m1.streamID)
        let picture = try decoders.decode(m2, p2)
        #expect(close(picture.pixel(499, 299), RGB(hex: "#aa5500")))
        _ = try runCommand(["xrandr", "--fb", "640x480"], environment: xvfb.environment)
        let (m3, p3) = try #require(try capturer.captureAll().first?.videoPacket)
        #expect(m3.width == 640 && m3.keyframe && m3.streamID != m2.streamID)
        _ = try decoders.decode(m3, p3)
    }

    @Test("two RandR monitors: two streams, each with its geometry, decoding to its own pixels")
    func twoMonitorsTwoStreams() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 800, height: 300, depth: 24)
        try xvfb.run(["xrandr", "--setmonitor", "LEFT", "500/132x300/79+0+0", "screen"])
        try xvfb.run(["xrandr", "--setmonitor", "RIGHT", "300/79x250/66+500+50", "none"])
        try xvfb.run(["xsetroot", "-solid", "#3366cc"])
        let capturer = try videoCapturer(xvfb)
        let decoders = StreamDecoders()
        let frames = try capturer.captureAll()
        try #require(frames.count == 2)
        let (left, lp) = try #require(frames[0].videoPacket)
        let (right, rp) = try #require(frames[1].videoPacket)
        #expect(left.monitor == 0 && left.monitorName == "LEFT" && left.width == 500 && left.height == 300)
        #expect(right.monitor == 1 && right.monitorName == "RIGHT" && right.x == 500 && right.y == 50
                && right.width == 300 && right.height == 250)
        #expect(left.streamID != right.streamID && left.keyframe && right.keyframe)
        #expect(close(try decoders.decode(left, lp).pixel(250, 150), RGB(hex: "#3366cc")))
        #expect(close(try decoders.decode(right, rp).pixel(150, 125), RGB(hex: "#3366cc")))
        #expect(capturer.streamSummary.count == 2)
        // Restarting one monitor's stream leaves the other's going.
        capturer.restartStreams(monitor: 1)
        try xvfb.run(["xsetroot", "-solid", "#cc6633"])
        let next = try capturer.captureAll()
        let (l2, l2p) = try #require(next[0].videoPacket)
        let (r2, r2p) = try #require(next[1].videoPacket)
        #expect(l2.streamID == left.streamID && !l2.keyframe && l2.packetIndex == 1)
        #expect(r2.streamID != right.streamID && r2.keyframe && r2.packetIndex == 0)
        #expect(close(try decoders.decode(l2, l2p).pixel(10, 10), RGB(hex: "#cc6633")))
        #expect(close(try decoders.decode(r2, r2p).pixel(10, 10), RGB(hex: "#cc6633")))
    }

    @Test("a 1-pixel-high RandR monitor is skipped (monitorUnsupported, nothing grabbed) while the other monitor records; PNG records both")
    func monitorTooSmallForTheEncoderIsSkipped() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 640, height: 480, depth: 24)
        try xvfb.run(["xrandr", "--setmonitor", "MAIN", "640/169x479/127+0+0", "screen"])
        try xvfb.run(["xrandr", "--setmonitor", "THIN", "640/169x1/1+0+479", "none"])
        try xvfb.run(["xsetroot", "-solid", "#3366cc"])
        let capturer = try videoCapturer(xvfb)
        #expect(!ScreenCapturer.canRecord(width: 640, height: 1, encoding: .video(keyframeIntervalMs: 0)))
        #expect(ScreenCapturer.canRecord(width: 640, height: 1, encoding: .png(level: 1)))
        for round in 0..<3 {
            if round > 0 { try xvfb.run(["xsetroot", "-solid", round == 1 ? "#cc6633" : "#33cc66"]) }
            let frames = try capturer.captureAll()
            try #require(frames.count == 2)
            let (main, _) = try #require(frames[0].videoPacket, "round \(round): monitor 0 recorded")
            #expect(main.monitorName == "MAIN" && main.height == 479 && main.packetIndex == round)
            guard case .skipped(let monitor, let error) = frames[1] else {
                Issue.record("round \(round): monitor 1 should be skipped, got \(frames[1])")
                continue
            }
            #expect(monitor == 1 && frames[1].monitor == 1 && error.code == .monitorUnsupported)
            #expect(error.message.contains("monitor THIN is 640x1") && error.message.contains("2 to 16384 pixels"), "\(error.message)")
        }
        #expect(capturer.streamSummary.keys.sorted() == [0], "no stream for the skipped monitor")
        // Nothing drawn: the thin monitor is not reported again (no capture of it was lost).
        let quiet = try capturer.captureAll()
        #expect(quiet.count == 2 && quiet[1].isUnchanged, "\(quiet)")
        #expect(capturer.unrecordableMonitors() == [ScreenCapturer.unsupportedMessage("THIN", 640, 1)])
        let png = try ScreenCapturer(display: xvfb.name, xauthority: nil, encoding: .png(level: 1), logger: testLogger("t"))
        let frames = try png.captureAll()
        #expect(frames.count == 2 && frames.allSatisfy { $0.changedFrame != nil }, "\(frames)")
    }

    @Test("a RandR monitor wholly outside the screen keeps its index (the next monitor is not renumbered), is skipped once with why, and comes back when moved on screen")
    func monitorOutsideTheScreen() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 640, height: 480, depth: 24)
        try xvfb.run(["xrandr", "--setmonitor", "LEFT", "320/84x480/127+0+0", "screen"])
        try xvfb.run(["xrandr", "--setmonitor", "OFF", "100/26x100/26+5000+5000", "none"])
        try xvfb.run(["xrandr", "--setmonitor", "RIGHT", "320/84x480/127+320+0", "none"])
        try xvfb.run(["xsetroot", "-solid", "#3366cc"])
        let capturer = try videoCapturer(xvfb)
        let frames = try capturer.captureAll()
        try #require(frames.count == 3)
        let (right, _) = try #require(frames[2].videoPacket)
        #expect(right.monitor == 2 && right.monitorName == "RIGHT")
        guard case .skipped(1, let error) = frames[1] else { Issue.record("OFF: \(frames[1])"); return }
        #expect(error.code == .monitorUnsupported && error.message.contains("monitor OFF (100x100+5000+5000 lies outside the 640x480 screen)"),
                "\(error.message)")
        #expect(capturer.unrecordableMonitors().count == 1)
        try xvfb.run(["xsetroot", "-solid", "#cc6633"])
        let again = try capturer.captureAll()
        #expect(again.count == 3 && again[1].isUnchanged, "reported once: \(again)")
        let (right2, _) = try #require(again[2].videoPacket)
        #expect(right2.streamID == right.streamID && right2.packetIndex == 1, "RIGHT's stream goes on under the same index")
    }

    @Test("the X server restarted: the stream after the reconnect is a new one starting with a keyframe")
    func reconnectStartsANewStream() throws {
        try requireXTools()
        let xvfb = try Xvfb(width: 320, height: 240, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#111111"])
        let capturer = try videoCapturer(xvfb)
        capturer.reconnectBackoff = Backoff(initial: .milliseconds(50), cap: .milliseconds(200))
        let (m1, _) = try #require(try capturer.captureAll().first?.videoPacket)
        xvfb.stop()
        #expect(throws: CaptureError.self) { _ = try capturer.captureAll() }
        try xvfb.restart()
        try xvfb.run(["xsetroot", "-solid", "#22aa33"])
        let deadline = Date().addingTimeInterval(10)
        var resumed: (VideoPacketMetadata, [UInt8])?
        while Date() < deadline && resumed == nil {
            do { resumed = try capturer.captureAll().first?.videoPacket } catch let e as CaptureError where e.code == .displayUnavailable {
                usleep(50_000)
            }
        }
        let (m2, p2) = try #require(resumed)
        #expect(m2.streamID != m1.streamID && m2.keyframe && m2.packetIndex == 0)
        #expect(close(try StreamDecoders().decode(m2, p2).pixel(5, 5), RGB(hex: "#22aa33")))
    }
}
