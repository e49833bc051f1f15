import CaptureFormat
import Testing
import Video

/// A desktop-like BGRX picture: a light background, a dark title bar, a coloured block and rows
/// of glyph-like dark strokes ("text") whose pattern depends on `seed` from row `changedFrom` on.
private func desktop(width: Int, height: Int, seed: Int = 0, changedFrom: Int = Int.max) -> [UInt8] {
    var px = [UInt8](repeating: 0, count: width * height * 4)
    for y in 0..<height {
        for x in 0..<width {
            var (r, g, b): (UInt8, UInt8, UInt8) = (240, 240, 236)
            if y < 24 { (r, g, b) = (40, 44, 52) }
            if x >= width / 2 && x < width / 2 + 120 && y >= 40 && y < 140 { (r, g, b) = (200, 30, 30) }
            let line = y / 16, inLine = y % 16
            if y >= 160 && inLine >= 3 && inLine < 13 && x >= 8 && x < width - 8 {
                let glyph = x / 8, inGlyph = x % 8
                let s = y >= changedFrom ? seed : 0
                let h = (glyph &* 2654435761 &+ line &* 40503 &+ s &* 97) & 0xffff
                if inGlyph < 6 && (h >> (inGlyph + (inLine & 3))) & 1 == 1 { (r, g, b) = (20, 20, 20) }
            }
            let o = (y * width + x) * 4
            px[o] = b; px[o + 1] = g; px[o + 2] = r; px[o + 3] = 255
        }
    }
    return px
}

private func frame(_ bgrx: [UInt8], width: Int, height: Int, strip: Int = 64) throws -> I420Frame {
    let f = try I420Frame(width: width, height: height)
    try bgrx.withUnsafeBytes { raw in
        var y = 0
        while y < height {
            let rows = min(strip, height - y)
            try f.write(rows: raw.baseAddress! + y * width * 4, firstRow: y, rowCount: rows, stride: width * 4, layout: .bgrx)
            y += rows
        }
    }
    return f
}

@Suite struct AV1RoundTripTests {
    @Test func desktopFramesDecodeLegiblyAndUnchangedFramesAreNearlyFree() throws {
        let (w, h) = (1280, 720)
        let encoder = try AV1Encoder(width: w, height: h)
        let decoder = try AV1Decoder()
        let first = try frame(desktop(width: w, height: h), width: w, height: h)
        let typed = try frame(desktop(width: w, height: h, seed: 1, changedFrom: 400), width: w, height: h)
        var packets: [VideoPacket] = []
        packets += try encoder.encode(first, timeMs: 0)
        packets += try encoder.encode(first, timeMs: 1000)
        packets += try encoder.encode(typed, timeMs: 2000)
        packets += try encoder.encode(typed, timeMs: 3000, keyframe: true)
        packets += try encoder.flush()
        #expect(packets.count == 4)
        #expect(packets.map(\.isKeyframe) == [true, false, false, true])
        #expect(packets.map(\.timeMs) == [0, 1000, 2000, 3000])
        // An unchanged screen costs at most 2% of the keyframe (issue 13's budget for skips).
        #expect(packets[1].data.count * 50 <= packets[0].data.count, "unchanged: \(packets[1].data.count) B vs \(packets[0].data.count) B")
        #expect(packets[2].data.count < packets[0].data.count / 2, "a few changed lines cost less than a keyframe")
        let originals = [first, first, typed, typed]
        for (i, p) in packets.enumerated() {
            let pictures = try decoder.decode(p.data)
            #expect(pictures.count == 1)
            let q = try #require(pictures.first?.compare(with: originals[i]))
            #expect(q.ssim >= 0.97, "packet \(i): SSIM \(q.ssim), PSNR \(q.psnr) dB")
            #expect(q.psnr >= 30, "packet \(i): PSNR \(q.psnr) dB")
        }
    }

    @Test func aPaintedColourSurvives() throws {
        let (w, h) = (320, 240)
        let encoder = try AV1Encoder(width: w, height: h)
        let bgrx = desktop(width: w, height: h)
        let packet = try #require(try encoder.encode(frame(bgrx, width: w, height: h), timeMs: 0).first)
        let out = try #require(try AV1Decoder().decode(packet.data).first).bgrx()
        // The red block's centre, away from edges (4:2:0 blurs chroma across 2 pixels).
        let o = (90 * w + w / 2 + 60) * 4
        let (b, g, r) = (Int(out[o]), Int(out[o + 1]), Int(out[o + 2]))
        #expect(abs(r - 200) <= 12 && abs(g - 30) <= 12 && abs(b - 30) <= 12, "got r\(r) g\(g) b\(b)")
        let bg = (30 * w + 10) * 4
        #expect(abs(Int(out[bg + 2]) - 240) <= 8 && abs(Int(out[bg]) - 236) <= 8)
    }

    @Test func oddSizesAndEveryByteOrderWork() throws {
        let (w, h) = (1023, 767)  // depth-16 Xvfb's odd width; odd height too
        let bgrx = desktop(width: w, height: h)
        var rgbx = bgrx, rgb = [UInt8]()
        for i in stride(from: 0, to: bgrx.count, by: 4) {
            rgbx[i] = bgrx[i + 2]; rgbx[i + 2] = bgrx[i]
            rgb += [bgrx[i + 2], bgrx[i + 1], bgrx[i]]
        }
        let reference = try frame(bgrx, width: w, height: h)
        let a = try I420Frame(width: w, height: h), b = try I420Frame(width: w, height: h)
        try rgbx.withUnsafeBytes { try a.write(rows: $0.baseAddress!, firstRow: 0, rowCount: h, stride: w * 4, layout: .rgbx) }
        // Padded rows: 3 bytes a pixel, rows padded to a multiple of 4 plus 8.
        let stride = (w * 3 + 3) / 4 * 4 + 8
        var padded = [UInt8](repeating: 0xEE, count: stride * h)
        for y in 0..<h { padded.replaceSubrange(y * stride..<(y * stride + w * 3), with: rgb[(y * w * 3)..<((y + 1) * w * 3)]) }
        try padded.withUnsafeBytes { try b.write(rows: $0.baseAddress!, firstRow: 0, rowCount: h, stride: stride, layout: .rgb) }
        #expect(a.compare(with: reference)?.psnr ?? 0 >= 60)
        #expect(b.compare(with: reference)?.psnr ?? 0 >= 60)
        let encoder = try AV1Encoder(width: w, height: h)
        let packet = try #require(try encoder.encode(reference, timeMs: 5).first)
        let decoded = try #require(try AV1Decoder().decode(packet.data).first)
        #expect(decoded.width == w && decoded.height == h)
        #expect((decoded.compare(with: reference)?.ssim ?? 0) >= 0.97)
    }

    @Test func badInputIsRefusedWithAClearError() throws {
        #expect(throws: VideoError.self) { try I420Frame(width: 0, height: 10) }
        #expect(throws: VideoError.self) { try AV1Encoder(width: 64, height: 64, settings: AV1EncoderSettings(cqLevel: 64)) }
        let encoder = try AV1Encoder(width: 64, height: 64)
        do {
            _ = try encoder.encode(try I420Frame(width: 32, height: 64), timeMs: 0)
            Issue.record("a frame of another size was encoded")
        } catch {
            #expect(error.code == .invalidArgument && error.description.contains("64x64"))
        }
        let f = try I420Frame(width: 64, height: 64)
        let row = [UInt8](repeating: 0, count: 64 * 4)
        #expect(throws: VideoError.self) {
            try row.withUnsafeBytes { try f.write(rows: $0.baseAddress!, firstRow: 1, rowCount: 1, stride: 256, layout: .bgrx) }
        }
        #expect(throws: VideoError.self) {
            try row.withUnsafeBytes { try f.write(rows: $0.baseAddress!, firstRow: 64, rowCount: 1, stride: 256, layout: .bgrx) }
        }
        // Garbage and a truncated packet: an error, never a crash.
        let decoder = try AV1Decoder()
        #expect(throws: VideoError.self) { try decoder.decode([0x12, 0x00, 0xFF, 0xFF, 0xFF, 0x01, 0x02]) }
        let good = try #require(try encoder.encode(f, timeMs: 0).first)
        do {
            let pictures = try AV1Decoder().decode(Array(good.data.prefix(good.data.count / 2)))
            #expect(pictures.isEmpty, "a truncated keyframe must not yield a picture")
        } catch {
            #expect(error.code == .corruptPacket)
        }
    }
}

@Suite struct SealedPacketShapeTests {
    /// A packet put into the payload the agent seals, taken out again and decoded: the bytes a
    /// reviewer's decoder gets are exactly the encoder's.
    @Test func aPacketSurvivesThePayload() throws {
        let (w, h) = (640, 360)
        let encoder = try AV1Encoder(width: w, height: h)
        let source = try frame(desktop(width: w, height: h), width: w, height: h)
        let packet = try #require(try encoder.encode(source, timeMs: 1_764_547_200_000).first)
        let meta = VideoPacketMetadata(codec: "av01.0.08M.08", keyframe: packet.isKeyframe, width: w, height: h,
                                       monitor: 0, monitorName: "root", x: 0, y: 0, captureTimeMs: packet.timeMs,
                                       streamID: String(repeating: "a1", count: 16), packetIndex: 0, groupStart: 0)
        let (decodedMeta, bytes) = try VideoPacketPayload.decode(VideoPacketPayload.encode(meta, packet: packet.data))
        #expect(decodedMeta == meta)
        let picture = try #require(try AV1Decoder().decode(Array(bytes)).first)
        #expect((picture.compare(with: source)?.ssim ?? 0) >= 0.97)
    }
}
