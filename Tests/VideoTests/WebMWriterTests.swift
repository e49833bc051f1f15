import CaptureFormat
import Foundation
import Testing
import TestSupport
@testable import Video

/// Distinct colours (R, G, B), far apart after BT.601 limited-range 4:2:0 and AV1 quantisation.
let testColours: [(UInt8, UInt8, UInt8)] = [
    (220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 30), (30, 210, 220),
    (210, 40, 210), (250, 250, 250), (20, 20, 20), (240, 140, 20), (120, 120, 120),
]

/// Fills `picture` with one solid colour and, in its top quarter, rows of dark glyph-like
/// strokes whose pattern depends on `seed` (text on screen, which AV1's screen tools must keep).
func paint(_ picture: I420Frame, colour: (UInt8, UInt8, UInt8), seed: Int) throws {
    let (w, h) = (picture.width, picture.height)
    var px = [UInt8](repeating: 0, count: w * h * 4)
    for y in 0..<h {
        for x in 0..<w {
            var (r, g, b) = colour
            if y < h / 4, y % 12 >= 3, y % 12 < 10, x % 7 < 5, (x / 7 &* 2654435761 &+ y / 12 &* 40503 &+ seed &* 97) & 4 != 0 {
                (r, g, b) = (15, 15, 15)
            }
            let o = (y * w + x) * 4
            px[o] = b; px[o + 1] = g; px[o + 2] = r; px[o + 3] = 255
        }
    }
    try px.withUnsafeBytes {
        try picture.write(rows: $0.baseAddress!, firstRow: 0, rowCount: h, stride: w * 4, layout: .bgrx)
    }
}

/// Encodes one picture per entry of `timesMs` with the agent's `MonitorStream` (colour `i % 10`).
func makeStream(width: Int, height: Int, timesMs: [Int64], keyframeIntervalMs: Int64)
    throws -> [(meta: VideoPacketMetadata, packet: [UInt8])] {
    let stream = try MonitorStream(monitor: 0, width: width, height: height, keyframeIntervalMs: keyframeIntervalMs)
    return try timesMs.enumerated().map { i, t in
        try paint(stream.picture, colour: testColours[i % testColours.count], seed: i)
        return try stream.encode(timeMs: t, monitorName: "DP-1", x: 0, y: 0)
    }
}

/// ffprobe's view of a file: codec, size, packet count, duration (s).
struct Probe {
    var codec: String
    var width: Int
    var height: Int
    var packets: Int
    var duration: Double
    var format: String

    init(_ path: String) throws {
        let json = try runChecked(["ffprobe", "-v", "error", "-show_streams", "-count_packets", "-show_format",
                                   "-of", "json", path])
        guard let obj = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let streams = obj["streams"] as? [[String: Any]], streams.count == 1, let s = streams.first,
              let format = obj["format"] as? [String: Any] else {
            throw TestSupportError("ffprobe \(path): unexpected output \(json)")
        }
        codec = s["codec_name"] as? String ?? ""
        width = s["width"] as? Int ?? 0
        height = s["height"] as? Int ?? 0
        packets = Int(s["nb_read_packets"] as? String ?? "") ?? -1
        duration = Double(format["duration"] as? String ?? "") ?? -1
        self.format = format["format_name"] as? String ?? ""
    }
}

/// Decodes every frame of `path` with ffmpeg (no frame dropped or repeated) as RGB24.
func decodeAllFrames(_ path: String, width: Int, height: Int) throws -> [[UInt8]] {
    let r = try runCommand(["ffmpeg", "-v", "error", "-i", path, "-fps_mode", "passthrough", "-f", "rawvideo",
                            "-pix_fmt", "rgb24", "-"])
    guard r.status == 0, r.stderr.isEmpty else { throw TestSupportError("ffmpeg decoding \(path): \(r.stderrString)") }
    let size = width * height * 3
    guard r.stdout.count % size == 0 else { throw TestSupportError("ffmpeg gave \(r.stdout.count) bytes, not whole frames") }
    return stride(from: 0, to: r.stdout.count, by: size).map { [UInt8](r.stdout[$0..<($0 + size)]) }
}

/// The RGB pixel at (x, y) of an RGB24 frame.
func pixel(_ frame: [UInt8], width: Int, x: Int, y: Int) -> (Int, Int, Int) {
    let o = (y * width + x) * 3
    return (Int(frame[o]), Int(frame[o + 1]), Int(frame[o + 2]))
}

func near(_ got: (Int, Int, Int), _ want: (UInt8, UInt8, UInt8), within tolerance: Int = 16) -> Bool {
    abs(got.0 - Int(want.0)) <= tolerance && abs(got.1 - Int(want.1)) <= tolerance && abs(got.2 - Int(want.2)) <= tolerance
}

/// `mkvinfo -a -x --abort-on-warnings` output (mkvtoolnix): every element, cues and seek entries
/// included, and the first 16 bytes of each frame.
struct MKVInfo {
    let lines: [String]

    init(_ path: String) throws {
        lines = try runChecked(["mkvinfo", "-a", "-x", "--abort-on-warnings", path]).split(separator: "\n").map(String.init)
    }

    func has(_ text: String) -> Bool { lines.contains { $0.contains(text) } }
    /// Lines starting with `prefix`.
    func count(_ prefix: String) -> Int { lines.filter { $0.hasPrefix(prefix) }.count }
    /// Each frame's first bytes as mkvinfo prints them ("0a 0e 00 …").
    var frameStarts: [String] {
        lines.compactMap { line in
            guard line.contains("+ Frame with size"), let r = line.range(of: "hexdump ") else { return nil }
            return String(line[r.upperBound...])
        }
    }
}

@Suite("WebM muxer")
struct WebMWriterTests {
    @Test("a MonitorStream muxed as WebM: ffprobe reads av1, size, packets and duration; ffmpeg decodes every frame in its colour; mkvinfo sees cues at the keyframes")
    func playersReadTheFile() throws {
        for tool in ["ffprobe", "ffmpeg", "mkvinfo"] { try requireTool(tool) }
        let tmp = try TempDir("webm")
        defer { tmp.remove() }
        let (w, h) = (320, 240)
        let base: Int64 = 1_764_547_200_000
        let times = (0..<10).map { base + Int64($0) * 1000 }
        let packets = try makeStream(width: w, height: h, timesMs: times, keyframeIntervalMs: 4000)
        #expect(packets.map(\.meta.keyframe) == [true, false, false, false, true, false, false, false, true, false])
        // libaom's packets start with a temporal delimiter; the blocks must not carry one.
        #expect(Array(packets[0].packet.prefix(2)) == [0x12, 0x00])
        let writer = WebMWriter(trackUID: 0x1234)
        for p in packets { try writer.append(p.packet, timeMs: p.meta.captureTimeMs, keyframe: p.meta.keyframe) }
        #expect(writer.durationMs() == 10_000)
        let file = try writer.finish()
        let path = tmp.file("stream.webm")
        try file.write(to: URL(fileURLWithPath: path))

        let probe = try Probe(path)
        #expect(probe.codec == "av1")
        #expect(probe.format.contains("webm"))
        #expect(probe.width == w && probe.height == h)
        #expect(probe.packets == 10)
        #expect(abs(probe.duration - 10.0) <= 1.0, "duration \(probe.duration) s")

        let frames = try decodeAllFrames(path, width: w, height: h)
        #expect(frames.count == 10)
        for (i, f) in frames.enumerated() {
            let got = pixel(f, width: w, x: w / 2, y: h * 3 / 4)
            #expect(near(got, testColours[i]), "frame \(i): \(got), want \(testColours[i])")
        }
        // A seek to 5 s (through the Cues to the keyframe at 4 s, then decoding on) gives frame 5.
        let seek = try runCommand(["ffmpeg", "-v", "error", "-ss", "5", "-i", path, "-frames:v", "1", "-f", "rawvideo",
                                   "-pix_fmt", "rgb24", "-"])
        #expect(seek.status == 0 && seek.stderr.isEmpty, "\(seek.stderrString)")
        #expect(seek.stdout.count == w * h * 3)
        if seek.stdout.count == w * h * 3 {
            let got = pixel([UInt8](seek.stdout), width: w, x: w / 2, y: h * 3 / 4)
            #expect(near(got, testColours[5]), "frame at 5 s: \(got), want \(testColours[5])")
        }

        // mkvinfo (mkvtoolnix): the structure as a third reader sees it, every element and the
        // first bytes of every frame; a warning fails it.
        let info = try MKVInfo(path)
        #expect(info.has("Document type: webm") && info.has("Codec ID: V_AV1"))
        #expect(info.has("Pixel width: \(w)") && info.has("Pixel height: \(h)"))
        #expect(info.count("|+ Cluster") == 3, "a cluster at each keyframe")
        #expect(info.count("| + Simple block: key,") == 3)
        #expect(info.count("| + Simple block:") == 10)
        #expect(info.count("| + Cue point") == 3)
        #expect(info.frameStarts.count == 10)
        #expect(info.frameStarts.allSatisfy { !$0.hasPrefix("12 00") }, "no temporal delimiter in a block")
        #expect(info.frameStarts.enumerated().allSatisfy { i, start in start.hasPrefix("0a ") == (i % 4 == 0) },
                "each keyframe block starts with the sequence header OBU")
    }

    @Test("a block more than 32.767 s after its cluster starts a new cluster (odd size 161x97, one keyframe); players still read it")
    func longGapsAndOddSizes() throws {
        for tool in ["ffprobe", "ffmpeg", "mkvinfo"] { try requireTool(tool) }
        let tmp = try TempDir("webm-gap")
        defer { tmp.remove() }
        let (w, h) = (161, 97)
        let times: [Int64] = [0, 20_000, 40_000, 60_000, 100_000]
        let packets = try makeStream(width: w, height: h, timesMs: times, keyframeIntervalMs: 0)
        let writer = WebMWriter()
        for p in packets { try writer.append(p.packet, timeMs: p.meta.captureTimeMs, keyframe: p.meta.keyframe) }
        let path = tmp.file("gaps.webm")
        try writer.finish().write(to: URL(fileURLWithPath: path))
        let info = try MKVInfo(path)
        // Clusters at 0 s (0, 20 s), 40 s (40, 60 s) and 100 s.
        #expect(info.count("|+ Cluster") == 3, "\(info.lines)")
        #expect(info.count("| + Cue point") == 1)
        let probe = try Probe(path)
        #expect(probe.codec == "av1" && probe.width == w && probe.height == h && probe.packets == 5)
        #expect(abs(probe.duration - 140) <= 40, "duration \(probe.duration) s: 100 s + the last gap")
        let frames = try decodeAllFrames(path, width: w, height: h)
        #expect(frames.count == 5)
        for (i, f) in frames.enumerated() {
            #expect(near(pixel(f, width: w, x: w / 2, y: h * 3 / 4), testColours[i]), "frame \(i)")
        }
    }

    @Test("av1C and the codec string come from the keyframe's sequence header; blocks carry no temporal delimiter")
    func configurationRecord() throws {
        let packets = try makeStream(width: 640, height: 360, timesMs: [0, 1000], keyframeIntervalMs: 0)
        let key = try AV1TemporalUnit(packets[0].packet)
        let seq = try #require(try key.sequenceHeader())
        #expect(seq.profile == 0 && seq.bitDepth == 8 && !seq.monochrome && seq.subsamplingX && seq.subsamplingY)
        #expect(seq.maxWidth == 640 && seq.maxHeight == 360)
        #expect(seq.matrixCoefficients == 6 && seq.colorPrimaries == 6 && !seq.fullRange, "BT.601 limited range, as I420Frame holds")
        let av1C = seq.av1C
        #expect(av1C[0] == 0x81, "marker 1, version 1")
        #expect(av1C[1] >> 5 == 0 && Int(av1C[1] & 0x1F) == seq.levelIndex0)
        #expect(av1C[2] & 0x0C == 0x0C, "4:2:0")
        #expect(av1C[4] == 0x0A, "then the sequence header OBU with its size field")
        #expect(seq.codecString.hasPrefix("av01.0.") && seq.codecString.hasSuffix("M.08"), "\(seq.codecString)")
        #expect(key.isKeyFrame())
        let inter = try AV1TemporalUnit(packets[1].packet)
        #expect(!inter.isKeyFrame())
        #expect(try inter.sequenceHeader() == nil)
        for p in [key, inter] {
            let block = try AV1TemporalUnit(p.blockData())
            #expect(block.obus.allSatisfy { $0.type != AV1OBU.temporalDelimiter })
            #expect(block.obus.count == p.obus.count - 1)
        }
    }

    @Test("what a WebM file cannot take is refused by name: no keyframe first, time going back, a false keyframe flag, a new sequence header, garbage")
    func refusals() throws {
        let a = try makeStream(width: 64, height: 48, timesMs: [0, 1000, 2000], keyframeIntervalMs: 0)
        let b = try makeStream(width: 96, height: 48, timesMs: [3000], keyframeIntervalMs: 0)
        func code(_ body: () throws -> Void) -> VideoError.Code? {
            do { try body(); return nil } catch let e as VideoError { return e.code } catch { return nil }
        }
        #expect(code { try WebMWriter().append(a[1].packet, timeMs: 1000, keyframe: false) } == .invalidArgument)
        #expect(code { try WebMWriter().append(a[1].packet, timeMs: 1000, keyframe: true) } == .corruptPacket)
        #expect(code { try WebMWriter().append([0x12, 0x00, 0x32, 0x05, 0x01], timeMs: 0, keyframe: true) } == .corruptPacket)
        #expect(code { try WebMWriter().append([0x92, 0x00], timeMs: 0, keyframe: true) } == .corruptPacket)
        #expect(code { try WebMWriter().append([0x12, 0x00, 0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], timeMs: 0, keyframe: true) } == .corruptPacket)
        #expect(code { _ = try WebMWriter().finish() } == .invalidArgument)
        let w = WebMWriter()
        try w.append(a[0].packet, timeMs: 0, keyframe: true)
        #expect(code { try w.append(a[1].packet, timeMs: 0, keyframe: false) } == .invalidArgument)
        #expect(code { try w.append(b[0].packet, timeMs: 3000, keyframe: true) } == .invalidArgument, "another size is another track")
        try w.append(a[1].packet, timeMs: 1000, keyframe: false)
        #expect(w.packetCount == 2)
        _ = try w.finish()
        #expect(code { try w.append(a[2].packet, timeMs: 2000, keyframe: false) } == .invalidArgument)
    }

    @Test("EBML sizes and integers take the fewest bytes, never the all-ones (unknown) value")
    func ebmlEncoding() {
        #expect(EBML.vint(0) == [0x80])
        #expect(EBML.vint(126) == [0xFE])
        #expect(EBML.vint(127) == [0x40, 0x7F])
        #expect(EBML.vint(16382) == [0x7F, 0xFE])
        #expect(EBML.vint(16383) == [0x20, 0x3F, 0xFF])
        #expect(EBML.vint(5, length: 8) == [0x01, 0, 0, 0, 0, 0, 0, 5])
        #expect(EBML.id(EBML.segment) == [0x18, 0x53, 0x80, 0x67])
        #expect(EBML.id(EBML.simpleBlock) == [0xA3])
        #expect(EBML.uint(EBML.timestamp, 0) == [0xE7, 0x81, 0x00])
        #expect(EBML.uint(EBML.timestamp, 300) == [0xE7, 0x82, 0x01, 0x2C])
        #expect(AV1TemporalUnit.leb128(300) == [0xAC, 0x02])
        let parsed = AV1TemporalUnit.leb128([0xAC, 0x02], at: 0)
        #expect(parsed?.value == 300 && parsed?.length == 2)
    }
}
