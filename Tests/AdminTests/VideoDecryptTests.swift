import CaptureFormat
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport
import Video
@testable import Admin

/// Solid colours far apart after 4:2:0 AV1 coding; packet `i` shows colour `i % 10`.
private let colours: [(UInt8, UInt8, UInt8)] = [
    (220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 30), (30, 210, 220),
    (210, 40, 210), (250, 250, 250), (20, 20, 20), (240, 140, 20), (120, 120, 120),
]

/// One packet as the agent seals it, and the blob id it got.
private struct SentPacket {
    var meta: VideoPacketMetadata
    var blobID: String
}

/// Records `count` pictures (colour `i % 10`, with a row of text-like strokes) at `startMs` +
/// i × 1000 ms with the agent's `MonitorStream`, seals each packet as its own `screen` blob and
/// returns the ingest items (minus the indices in `drop`, plus a second copy of those in
/// `duplicate`) and what was sent.
private func recordStream(_ session: DEKSession, monitor: Int, name: String, width: Int, height: Int, startMs: Int64,
                          count: Int, keyframeIntervalMs: Int64, drop: Set<Int> = [], duplicate: Set<Int> = [])
    throws -> (items: [IngestItem], sent: [SentPacket]) {
    let stream = try MonitorStream(monitor: monitor, width: width, height: height, keyframeIntervalMs: keyframeIntervalMs)
    var items: [IngestItem] = [], sent: [SentPacket] = []
    for i in 0..<count {
        let c = colours[i % colours.count]
        var px = [UInt8](repeating: 0, count: width * height * 4)
        for y in 0..<height {
            for x in 0..<width {
                let text = y >= 4 && y < 12 && x % 6 < 4 && (x / 6 + i) % 3 != 0
                let o = (y * width + x) * 4
                (px[o], px[o + 1], px[o + 2], px[o + 3]) = text ? (10, 10, 10, 255) : (c.2, c.1, c.0, 255)
            }
        }
        try px.withUnsafeBytes {
            try stream.picture.write(rows: $0.baseAddress!, firstRow: 0, rowCount: height, stride: width * 4, layout: .bgrx)
        }
        let (meta, packet) = try stream.encode(timeMs: startMs + Int64(i) * 1000, monitorName: name, x: 0, y: 0)
        guard !drop.contains(i) else { continue }
        for _ in 0..<(duplicate.contains(i) ? 2 : 1) {
            let blob = try session.seal(VideoPacketPayload.encode(meta, packet: packet), kind: .screen, captureTimeMs: meta.captureTimeMs)
            let h = blob.header
            items.append(ingestItem(blob))
            sent.append(SentPacket(meta: meta, blobID: h.blobID.hex))
        }
    }
    return (items, sent)
}

/// ffprobe's packet count, size and duration (s) of a file.
private func probe(_ path: String) throws -> (codec: String, width: Int, height: Int, packets: Int, duration: Double) {
    let json = try runChecked(["ffprobe", "-v", "error", "-show_streams", "-count_packets", "-show_format", "-of", "json", path])
    let obj = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
    let s = try #require((obj["streams"] as? [[String: Any]])?.first)
    let f = try #require(obj["format"] as? [String: Any])
    return (s["codec_name"] as? String ?? "", s["width"] as? Int ?? 0, s["height"] as? Int ?? 0,
            Int(s["nb_read_packets"] as? String ?? "") ?? -1, Double(f["duration"] as? String ?? "") ?? -1)
}

/// Every frame of a video (or the one picture of a PNG) as RGB24, decoded by ffmpeg, which must report no error.
private func rgbFrames(_ path: String, width: Int, height: Int) throws -> [[UInt8]] {
    let r = try runCommand(["ffmpeg", "-v", "error", "-i", path, "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
    guard r.status == 0, r.stderr.isEmpty else { throw TestSupportError("ffmpeg \(path): \(r.stderrString)") }
    let size = width * height * 3
    return stride(from: 0, to: r.stdout.count, by: size).map { [UInt8](r.stdout[$0..<min($0 + size, r.stdout.count)]) }
}

/// Whether the pixel at the picture's lower middle has colour `c` (± 16 per channel).
private func shows(_ frame: [UInt8], width: Int, height: Int, _ c: (UInt8, UInt8, UInt8)) -> Bool {
    let o = ((height * 3 / 4) * width + width / 2) * 3
    guard o + 2 < frame.count else { return false }
    return abs(Int(frame[o]) - Int(c.0)) <= 16 && abs(Int(frame[o + 1]) - Int(c.1)) <= 16 && abs(Int(frame[o + 2]) - Int(c.2)) <= 16
}

@Suite("custos decrypt / export of screen video")
struct VideoDecryptTests {
    static let t0: Int64 = 1_764_547_200_000

    /// A collector database with, for agent host-v: monitor 0 (320×240, keyframes every 4 s, 12
    /// packets at 1 s, packet 5 never arrived, packet 9 stored twice), monitor 1 (160×120, one
    /// keyframe, 6 packets at 0.5 s + 1 s), one PNG frame and one keystroke chunk.
    private func fill(_ db: String, kek: KEKPublicKey) async throws -> (a: [SentPacket], b: [SentPacket], png: Data) {
        let store = try SQLiteStorage(path: db)
        let session = try DEKSession(kek: kek, agentID: "host-v")
        let r = session.record
        var items: [IngestItem] = [ingestItem(r)]
        let a = try recordStream(session, monitor: 0, name: "DP-1", width: 320, height: 240, startMs: Self.t0, count: 12,
                                 keyframeIntervalMs: 4000, drop: [5], duplicate: [9])
        let b = try recordStream(session, monitor: 1, name: "HDMI/1", width: 160, height: 120, startMs: Self.t0 + 500, count: 6,
                                 keyframeIntervalMs: 0)
        let png = makePNG(width: 8, height: 6, seed: 3)
        let frameMeta = FrameMetadata(monitor: 2, monitorName: "VGA-0", x: 0, y: 0, width: 8, height: 6, captureTimeMs: Self.t0 + 700)
        let chunk = KeystrokeChunk(windowTitle: "Terminal", wmClass: "xterm.XTerm", startMs: Self.t0 + 800, endMs: Self.t0 + 810,
                                   keys: [Keystroke(timeMs: Self.t0 + 800, text: "a")])
        for (payload, kind, t) in [(FramePayload.encode(frameMeta, png: png), CaptureKind.screen, Self.t0 + 700),
                                   (chunk.encoded(), CaptureKind.keystrokes, Self.t0 + 800)] {
            let h = try session.seal(payload, kind: kind, captureTimeMs: t)
            items.append(ingestItem(h))
        }
        let outcomes = try await store.ingest(items + a.items + b.items, receivedAtMs: Self.t0 + 100_000)
        #expect(outcomes.allSatisfy { $0 == .stored })
        return (a.sent, b.sent, png)
    }

    @Test("each contiguous run of a stream becomes one WebM file that ffprobe and ffmpeg read; a gap splits the stream at the next keyframe; stills at the start and every 2 s")
    func decryptWritesWebMAndStills() async throws {
        for tool in ["ffprobe", "ffmpeg"] { try requireTool(tool) }
        let tmp = try TempDir("adm-video")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let db = tmp.file("collector.db")
        let (a, b, png) = try await fill(db, kek: try KEKPublicKey(pemFile: k.publicKey))
        let out = tmp.file("out")
        let report = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                                        options: DecryptOptions(output: .directory(out), stillsEveryMs: 2000),
                                        actor: "tester", log: { _ in }, progressStyle: .quiet)
        #expect(report.failures.isEmpty, "\(report.failures)")
        #expect(report.decrypted == 20, "12 + 6 packets, a frame, a chunk")
        #expect(report.screens == 1 && report.keystrokeChunks == 1)
        // Monitor 0: packets 0–4, then 6 and 7 cannot be decoded (5 is missing), 8–11; 9 twice.
        #expect(report.videoFiles == 3 && report.videoPackets == 5 + 4 + 6)
        #expect(report.videoPacketsSkipped == ["no-keyframe": 2, "duplicate": 1])
        #expect(report.videoSummary.contains("15 video packets in 3 WebM files (3 skipped: 1 duplicate, 2 no-keyframe), 10 stills"))

        let streamA = a[0].meta.streamID, streamB = b[0].meta.streamID
        let runs: [(path: String, first: Int, count: Int, w: Int, h: Int, colour0: Int)] = [
            (OutputNaming.video(agent: "host-v", monitor: 0, monitorName: "DP-1", startMs: Self.t0, streamID: streamA), 0, 5, 320, 240, 0),
            (OutputNaming.video(agent: "host-v", monitor: 0, monitorName: "DP-1", startMs: Self.t0 + 8000, streamID: streamA), 8, 4, 320, 240, 8),
            (OutputNaming.video(agent: "host-v", monitor: 1, monitorName: "HDMI/1", startMs: Self.t0 + 500, streamID: streamB), 0, 6, 160, 120, 0),
        ]
        #expect(runs[2].path == "host-v/screens/host-v_mon1-HDMI_1_2025-12-01T00-00-00.500Z_\(streamB.prefix(8)).webm")
        for run in runs {
            let path = out + "/" + run.path
            let p = try probe(path)
            #expect(p.codec == "av1" && p.width == run.w && p.height == run.h, "\(run.path): \(p)")
            #expect(p.packets == run.count, "\(run.path)")
            #expect(abs(p.duration - Double(run.count)) <= 1.0, "\(run.path): \(p.duration) s for \(run.count) packets 1 s apart")
            let frames = try rgbFrames(path, width: run.w, height: run.h)
            #expect(frames.count == run.count)
            for (i, f) in frames.enumerated() {
                #expect(shows(f, width: run.w, height: run.h, colours[(run.colour0 + i) % 10]), "\(run.path) frame \(i)")
            }
        }
        // Stills: monitor 0 at 0, 2, 4 s (first run) and 8, 10 s (second) plus its last picture at
        // 11 s; monitor 1 at 0.5, 2.5, 4.5 s plus its last picture at 5.5 s (the first run's last
        // picture, at 4 s, is on the grid already: one still, not two).
        let stillTimes: [(monitor: Int, name: String, ms: Int64, packet: Int)] = [
            (0, "DP-1", 0, 0), (0, "DP-1", 2000, 2), (0, "DP-1", 4000, 4), (0, "DP-1", 8000, 8), (0, "DP-1", 10_000, 10),
            (0, "DP-1", 11_000, 11),
            (1, "HDMI/1", 500, 0), (1, "HDMI/1", 2500, 2), (1, "HDMI/1", 4500, 4), (1, "HDMI/1", 5500, 5),
        ]
        #expect(report.stills == stillTimes.count)
        for s in stillTimes {
            let path = out + "/" + OutputNaming.screen(agent: "host-v", monitor: s.monitor, monitorName: s.name, timeMs: Self.t0 + s.ms)
            let (w, h) = s.monitor == 0 ? (320, 240) : (160, 120)
            let picture = try #require(try rgbFrames(path, width: w, height: h).first, "still \(path)")
            #expect(shows(picture, width: w, height: h, colours[s.packet % 10]), "still \(path)")
        }
        // The PNG frame is written as today; nothing raw (no .bin, no payload) for video.
        let frame = out + "/" + OutputNaming.screen(agent: "host-v", meta: FrameMetadata(monitor: 2, monitorName: "VGA-0", x: 0, y: 0,
                                                                                         width: 8, height: 6, captureTimeMs: 0),
                                                    timeMs: Self.t0 + 700)
        #expect(try Data(contentsOf: URL(fileURLWithPath: frame)) == png)
        let all = filesUnder(out)
        #expect(all.filter { $0.hasSuffix(".webm") }.count == 3)
        #expect(all.filter { $0.hasSuffix(".png") }.count == stillTimes.count + 1)
        #expect(!all.contains { $0.contains("/other/") || $0.hasSuffix(".bin") || $0.contains(".partial") }, "\(all)")

        // The manifest lists each WebM file with its packets, duration and first/last time, and
        // each still with the file it comes from.
        let manifest = try readManifest(Data(contentsOf: URL(fileURLWithPath: out + "/manifest.json")))
        let files = try #require(manifest["files"] as? [[String: Any]])
        let videos = files.filter { $0["kind"] as? String == "video" }
        #expect(videos.count == 3)
        for run in runs {
            let v = try #require(videos.first { $0["path"] as? String == run.path }, "\(run.path) in the manifest")
            #expect(v["packets"] as? Int == run.count)
            #expect(v["durationMs"] as? Int == run.count * 1000)
            let start = (run.path.contains("_mon1-") ? Self.t0 + 500 : Self.t0) + Int64(run.first) * 1000
            #expect(v["firstTime"] as? String == OutputNaming.iso(start))
            #expect(v["lastTime"] as? String == OutputNaming.iso(start + Int64(run.count - 1) * 1000))
            #expect((v["blobIds"] as? [String])?.count == run.count)
            #expect(v["sha256"] as? String == sha256Hex(try Data(contentsOf: URL(fileURLWithPath: out + "/" + run.path))))
        }
        let stills = files.filter { $0["kind"] as? String == "still" }
        #expect(stills.count == stillTimes.count)
        #expect(stills.allSatisfy { s in runs.contains { $0.path == s["video"] as? String } })
        #expect((manifest["counts"] as? [String: Any])?["videoPackets"] as? Int == 15)
    }

    @Test("export: the zip holds the same WebM files (no stills without --stills); a size cap cuts files at keyframes; --since inside a group of pictures looks back to its keyframe")
    func exportCapAndSelection() async throws {
        for tool in ["ffprobe", "unzip"] { try requireTool(tool) }
        let tmp = try TempDir("adm-video-zip")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let db = tmp.file("collector.db")
        _ = try await fill(db, kek: try KEKPublicKey(pemFile: k.publicKey))
        func run(_ options: DecryptOptions) async throws -> DecryptReport {
            try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                               options: options, actor: "tester", log: { _ in }, progressStyle: .quiet)
        }
        let zip = tmp.file("export.zip")
        let exported = try await run(DecryptOptions(output: .archive(zip)))
        #expect(exported.failures.isEmpty && exported.videoFiles == 3 && exported.stills == 0)
        let listing = try runChecked(["unzip", "-Z1", zip]).split(separator: "\n")
        #expect(listing.filter { $0.hasSuffix(".webm") }.count == 3)
        #expect(listing.filter { $0.hasSuffix(".png") }.count == 1, "only the PNG frame: \(listing)")
        let unpacked = tmp.file("unpacked")
        try runChecked(["unzip", "-q", zip, "-d", unpacked])
        for name in listing where name.hasSuffix(".webm") {
            #expect(try probe(unpacked + "/" + name).codec == "av1")
        }

        // A 1-byte cap: every keyframe starts a new file (monitor 0: 0–3, 4, 8–11; monitor 1: one).
        let capped = try await run(DecryptOptions(output: .directory(tmp.file("capped")), maxVideoFileBytes: 1))
        #expect(capped.videoFiles == 4 && capped.videoPackets == 15, "\(capped)")
        let cappedFiles = filesUnder(tmp.file("capped")).filter { $0.hasSuffix(".webm") }
        #expect(try cappedFiles.map { try probe(tmp.file("capped") + "/" + $0).packets }.sorted() == [1, 4, 4, 6])

        // Stills every 1.5 s: the one at 9.5 s shows packet 9 (stored twice), not the packet after it;
        // each run's last picture has one too (4 s: off the grid; 11 s: on it, so one still).
        let sparse = try await run(DecryptOptions(output: .directory(tmp.file("stills")), stillsEveryMs: 1500))
        let stillNames = Set(filesUnder(tmp.file("stills")).filter { $0.hasSuffix(".png") })
        for (ms, expected) in [(Int64(9000), true), (10_000, false), (8000, true), (11_000, true), (3000, true), (4000, true),
                               (2000, false)] {
            let name = OutputNaming.screen(agent: "host-v", monitor: 0, monitorName: "DP-1", timeMs: Self.t0 + ms)
            #expect(stillNames.contains(name) == expected, "still at \(ms) ms: \(stillNames.sorted())")
        }
        #expect(sparse.stills == 7 + 5, "monitor 0 at 0, 1, 3, 4, 8, 9, 11 s; monitor 1 at 0.5, 1.5, 3.5, 4.5, 5.5 s")

        // From 1.5 s on: each stream's first selected packet is inside a group of pictures, so the
        // group's packets before 1.5 s are looked up and written first (monitor 0: packets 0 and
        // 1; monitor 1: packet 0): every selected picture decodes; only the real gap (packet 5
        // missing: 6 and 7) is skipped.
        let since = try await run(DecryptOptions(output: .directory(tmp.file("since")), sinceMs: Self.t0 + 1500))
        #expect(since.videoFiles == 3 && since.videoPackets == 5 + 4 + 6, "\(since)")
        #expect(since.videoPacketsBeforeSelection == 2 + 1)
        #expect(since.videoPacketsSkipped == ["no-keyframe": 2, "duplicate": 1])
        #expect(since.failures.isEmpty && since.screens == 0 && since.keystrokeChunks == 0, "nothing else from before --since")
        #expect(since.videoSummary.contains("(3 from before --since, to start at a keyframe)"), "\(since.videoSummary)")
        for f in filesUnder(tmp.file("since")).filter({ $0.hasSuffix(".webm") }) {
            let p = try probe(tmp.file("since") + "/" + f)
            #expect(p.packets == 5 || p.packets == 4 || p.packets == 6, "\(f): \(p)")
        }
        // Stills with a look back: none of the pictures before --since, except the one on screen at
        // --since (packet 1, shown from 1 s to 2 s, named by its capture time).
        let sinceStills = try await run(DecryptOptions(output: .directory(tmp.file("since-stills")), sinceMs: Self.t0 + 1500,
                                                       stillsEveryMs: 1000))
        let sinceNames = Set(filesUnder(tmp.file("since-stills")).filter { $0.hasSuffix(".png") })
        for (ms, expected) in [(Int64(0), false), (1000, true), (2000, true), (4000, true)] {
            let name = OutputNaming.screen(agent: "host-v", monitor: 0, monitorName: "DP-1", timeMs: Self.t0 + ms)
            #expect(sinceNames.contains(name) == expected, "still at \(ms) ms with --since 1.5 s: \(sinceNames.sorted())")
        }
        #expect(sinceStills.videoPacketsBeforeSelection == 3)
        // --since past a whole group: no look back needed (monitor 0 from its keyframe at 8 s).
        let late = try await run(DecryptOptions(output: .directory(tmp.file("late")), agentID: try AgentID("host-v"),
                                                sinceMs: Self.t0 + 8000))
        #expect(late.videoPacketsBeforeSelection == 0 && late.videoPackets == 4, "\(late)")
    }

    @Test("the built custos: decrypt --stills prints what was written and exits 1 for the packets it could not write; --stills 0, 0x10, 1e3, -1 are usage errors naming the option")
    func commandLine() async throws {
        for tool in ["ffprobe", "openssl"] { try requireTool(tool) }
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-video-cli")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let db = tmp.file("collector.db")
        _ = try await fill(db, kek: try KEKPublicKey(pemFile: k.publicKey))
        let out = tmp.file("out")
        let ok = try runCommand([custos, "decrypt", "--db", db, "--key", k.privateKey, "--passphrase-file", k.passphraseFile,
                                 "--stills", "2", "--quiet", "--out", out])
        // Everything that could be written was (and the summary says so), but 3 packets could not:
        // exit 1, with a line saying how many and why.
        #expect(ok.status == 1, "\(ok.stderrString)")
        #expect(ok.stderrString.contains("15 video packets in 3 WebM files (3 skipped: 1 duplicate, 2 no-keyframe), 10 stills"),
                "\(ok.stderrString)")
        #expect(ok.stderrString.contains("3 video packets decrypted but not written (1 duplicate, 2 no-keyframe)"), "\(ok.stderrString)")
        #expect(filesUnder(out).filter { $0.hasSuffix(".png") }.count == 11)
        // Only monitor 1's last packet (5.5 s) is selected; its group from 0.5 s is written whole,
        // nothing is skipped: exit 0, and "1 WebM file", not "files".
        let one = try runCommand([custos, "decrypt", "--db", db, "--key", k.privateKey, "--passphrase-file", k.passphraseFile,
                                  "--since", String(Self.t0 + 5200), "--until", String(Self.t0 + 5600), "--quiet",
                                  "--out", tmp.file("one")])
        #expect(one.status == 0, "\(one.stderrString)")
        #expect(one.stderrString.contains("6 video packets in 1 WebM file (5 from before --since"), "\(one.stderrString)")
        for value in ["0", "0x10", "1e3", "-1", "inf", "2.", ".5", "1.2345", "31536001"] {
            let bad = try runCommand([custos, "decrypt", "--db", db, "--key", k.privateKey, "--passphrase-file", k.passphraseFile,
                                      "--stills", value, "--out", tmp.file("out2")])
            #expect(bad.status == 2 && bad.stderrString.contains("--stills"), "\(value): \(bad.stderrString)")
            #expect(!FileManager.default.fileExists(atPath: tmp.file("out2")))
        }
    }

    @Test("custos open, one blob, --out FILE: a keyframe as a one-frame WebM, a PNG frame as the PNG, a keystroke chunk as text; an inter packet alone is refused; --stills needs a directory")
    func openOneBlobWritesItsNaturalForm() async throws {
        for tool in ["ffprobe", "openssl"] { try requireTool(tool) }
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-video-open")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let session = try DEKSession(kek: try KEKPublicKey(pemFile: k.publicKey), agentID: "host-o")
        let stream = try MonitorStream(monitor: 0, width: 64, height: 48, keyframeIntervalMs: 0)
        var packets: [SealedBlob] = []
        for i in 0..<2 {
            let c = colours[i]
            var px = [UInt8](repeating: 0, count: 64 * 48 * 4)
            for o in stride(from: 0, to: px.count, by: 4) { (px[o], px[o + 1], px[o + 2], px[o + 3]) = (c.2, c.1, c.0, 255) }
            try px.withUnsafeBytes { try stream.picture.write(rows: $0.baseAddress!, firstRow: 0, rowCount: 48, stride: 256, layout: .bgrx) }
            let (meta, packet) = try stream.encode(timeMs: Self.t0 + Int64(i) * 1000, monitorName: "DP-1", x: 0, y: 0)
            packets.append(try session.seal(VideoPacketPayload.encode(meta, packet: packet), kind: .screen, captureTimeMs: meta.captureTimeMs))
        }
        let png = makePNG(width: 8, height: 6, seed: 9)
        let frame = try session.seal(FramePayload.encode(FrameMetadata(monitor: 0, monitorName: "DP-1", x: 0, y: 0, width: 8, height: 6,
                                                                       captureTimeMs: Self.t0), png: png),
                                     kind: .screen, captureTimeMs: Self.t0)
        let chunk = KeystrokeChunk(windowTitle: "Terminal", wmClass: "xterm.XTerm", startMs: Self.t0, endMs: Self.t0 + 10,
                                   keys: [Keystroke(timeMs: Self.t0, text: "ls -l")])
        let keys = try session.seal(chunk.encoded(), kind: .keystrokes, captureTimeMs: Self.t0)
        func sealedFile(_ name: String, _ blobs: [SealedBlob]) throws -> String {
            let path = tmp.file(name)
            try RecordStream.encode([.dekRecord(session.record)] + blobs.map { .blob($0) }).write(to: URL(fileURLWithPath: path))
            return path
        }
        func open(_ input: String, _ out: String, _ extra: [String] = []) throws -> CommandResult {
            try runCommand([custos, "open", "--key", k.privateKey, "--passphrase-file", k.passphraseFile, "--in", input, "--out", out] + extra)
        }

        let key = try open(try sealedFile("key.sealed", [packets[0]]), tmp.file("key.webm"))
        #expect(key.status == 0, "\(key.stderrString)")
        let p = try probe(tmp.file("key.webm"))
        #expect(p.codec == "av1" && p.width == 64 && p.height == 48 && p.packets == 1, "\(p)")
        #expect(shows(try #require(try rgbFrames(tmp.file("key.webm"), width: 64, height: 48).first), width: 64, height: 48, colours[0]))

        let inter = try open(try sealedFile("inter.sealed", [packets[1]]), tmp.file("inter.webm"))
        #expect(inter.status == 1 && inter.stderrString.contains("is not a keyframe"), "\(inter.stderrString)")
        #expect(!FileManager.default.fileExists(atPath: tmp.file("inter.webm")))

        let still = try open(try sealedFile("frame.sealed", [frame]), tmp.file("frame.png"))
        #expect(still.status == 0, "\(still.stderrString)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: tmp.file("frame.png"))) == png)

        let text = try open(try sealedFile("keys.sealed", [keys]), tmp.file("keys.txt"))
        #expect(text.status == 0, "\(text.stderrString)")
        let written = try String(contentsOfFile: tmp.file("keys.txt"), encoding: .utf8)
        #expect(written.contains("# window: Terminal") && written.contains("ls -l"), "\(written)")

        let noDir = try open(try sealedFile("key2.sealed", [packets[0]]), tmp.file("key2.webm"), ["--stills", "1"])
        #expect(noDir.status == 2 && noDir.stderrString.contains("--stills needs a directory"), "\(noDir.stderrString)")
        #expect(!FileManager.default.fileExists(atPath: tmp.file("key2.webm")))

        // A record cut short at the end (the writer killed mid-write): the complete records are
        // opened and written, the torn tail is reported, exit 1.
        let whole = try Data(contentsOf: URL(fileURLWithPath: try sealedFile("torn.sealed", packets)))
        try whole.prefix(whole.count - 100).write(to: URL(fileURLWithPath: tmp.file("torn.sealed")))
        let torn = try open(tmp.file("torn.sealed"), tmp.file("torn") + "/")
        #expect(torn.status == 1, "\(torn.stderrString)")
        #expect(torn.stderrString.contains("are a record cut short") && torn.stderrString.contains("2 complete records before it were read"),
                "\(torn.stderrString)")
        #expect(torn.stderrString.contains("1 video packet in 1 WebM file"), "\(torn.stderrString)")
        let tornWebM = try #require(filesUnder(tmp.file("torn")).first { $0.hasSuffix(".webm") })
        #expect(try probe(tmp.file("torn") + "/" + tornWebM).packets == 1)
        // One blob and a torn tail, --out FILE: the blob is written, exit 1.
        let oneTorn = try Data(contentsOf: URL(fileURLWithPath: try sealedFile("key3.sealed", packets)))
        let cut = oneTorn.count - packets[1].serialized.count + 50
        try oneTorn.prefix(cut).write(to: URL(fileURLWithPath: tmp.file("key3t.sealed")))
        let fileTorn = try open(tmp.file("key3t.sealed"), tmp.file("key3.webm"))
        #expect(fileTorn.status == 1 && fileTorn.stderrString.contains("record cut short"), "\(fileTorn.stderrString)")
        #expect(try probe(tmp.file("key3.webm")).packets == 1)

        // Both packets into a directory, with stills: one WebM of 2 packets, a still of each picture.
        let dir = try open(try sealedFile("both.sealed", packets), tmp.file("both") + "/", ["--stills", "1"])
        #expect(dir.status == 0, "\(dir.stderrString)")
        #expect(dir.stderrString.contains("2 video packets in 1 WebM file, 2 stills"), "\(dir.stderrString)")
        let all = filesUnder(tmp.file("both"))
        let webm = try #require(all.first { $0.hasSuffix(".webm") })
        #expect(try probe(tmp.file("both") + "/" + webm).packets == 2)
        #expect(all.filter { $0.hasSuffix(".png") }.count == 2)
    }

    @Test("a packet whose bytes contradict its metadata (a keyframe flag on an inter frame) fails by blob id; the stream is cut there and the rest waits for a keyframe")
    func contradictoryPacket() async throws {
        for tool in ["ffprobe"] { try requireTool(tool) }
        let tmp = try TempDir("adm-video-bad")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let kek = try KEKPublicKey(pemFile: k.publicKey)
        let db = tmp.file("collector.db")
        let store = try SQLiteStorage(path: db)
        let session = try DEKSession(kek: kek, agentID: "host-x")
        let r = session.record
        var items: [IngestItem] = [ingestItem(r)]
        let stream = try MonitorStream(monitor: 0, width: 64, height: 48, keyframeIntervalMs: 0)
        var liar = ""
        for i in 0..<4 {
            var (meta, packet) = try stream.encode(timeMs: Self.t0 + Int64(i) * 1000, monitorName: "DP-1", x: 0, y: 0)
            if i == 2 { (meta.keyframe, meta.groupStart) = (true, 2) }
            let blob = try session.seal(VideoPacketPayload.encode(meta, packet: packet), kind: .screen, captureTimeMs: meta.captureTimeMs)
            if i == 2 { liar = blob.header.blobID.hex }
            items.append(ingestItem(blob))
        }
        _ = try await store.ingest(items, receivedAtMs: Self.t0)
        let out = tmp.file("out")
        let report = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                                        options: DecryptOptions(output: .directory(out)), actor: "t", log: { _ in }, progressStyle: .quiet)
        #expect(report.failures.count == 1 && report.failures.first?.blobID == liar)
        #expect(report.failures.first?.reason.contains("says keyframe") == true, "\(report.failures)")
        #expect(report.videoFiles == 1 && report.videoPackets == 2 && report.videoPacketsSkipped == ["no-keyframe": 1])
        let webm = try #require(filesUnder(out).first { $0.hasSuffix(".webm") })
        #expect(try probe(out + "/" + webm).packets == 2)
    }
}
