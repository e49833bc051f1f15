import CaptureFormat
import Envelope
import Foundation
import Logging
import Spool
import Synchronization
import Testing
import TestSupport
import Video

/// One spooled video packet, opened with the private key.
struct SpooledPacket {
    let meta: VideoPacketMetadata
    let packet: [UInt8]
}

/// Opens every screen record in a copy of the spool at `spoolDir` with the passphrase-protected
/// `keypair` (the agent's spool is not touched) and returns the video packets, plus the number
/// of screen records that were not video packets.
func spooledVideoPackets(spoolDir: String, keypair: String, passphrase: String, scratch: String) throws
    -> (packets: [SpooledPacket], others: Int) {
    try? FileManager.default.removeItem(atPath: scratch)
    try FileManager.default.copyItem(atPath: spoolDir, toPath: scratch)
    try? FileManager.default.removeItem(atPath: scratch + "/spool.lock")
    let spool = try Spool(directory: scratch, maxBytes: 1 << 30,
                          logger: Logger(label: "t", factory: { _ in SwiftLogNoOpLogHandler() }))
    defer { try? spool.close() }
    var entries: [SpoolEntry] = []
    while true {
        let batch = try spool.lease(maxItems: 1000, maxBytes: 64 << 20, leaseDuration: .seconds(3600))
        if batch.isEmpty { break }
        entries += batch
    }
    let key = try KEKPrivateKey(pemRepresentation: try String(contentsOfFile: keypair, encoding: .utf8),
                                passphrase: SecretBytes(copying: Data(passphrase.utf8)), source: keypair)
    var openers: [DEKID: BlobOpener] = [:]
    var blobs: [SealedBlob] = []
    for entry in entries {
        for record in try RecordStream.parse(entry.payload) {
            switch record {
            case .dekRecord(let r): openers[r.dekID] = try key.unwrap(r)
            case .blob(let b): blobs.append(b)
            }
        }
    }
    var packets: [SpooledPacket] = []
    var others = 0
    for blob in blobs where blob.header.kind == .screen {
        let opener = try #require(openers[blob.header.dekID], "no DEK record for blob \(blob.header.blobID)")
        let plaintext = try opener.open(blob)
        guard VideoPacketPayload.matches(plaintext) else { others += 1; continue }
        let (meta, packet) = try VideoPacketPayload.decode(plaintext)
        packets.append(SpooledPacket(meta: meta, packet: [UInt8](packet)))
    }
    return (packets, others)
}

/// Checks that every group of pictures present decodes on its own: it holds its keyframe and
/// every packet after it without a hole, and a fresh decoder turns each packet into one
/// picture of the stated size. Returns the number of groups and of streams.
@discardableResult
func expectEveryGroupDecodes(_ packets: [SpooledPacket]) throws -> (groups: Int, streams: Int) {
    var groups = 0
    let byStream = Dictionary(grouping: packets, by: \.meta.streamID)
    for (stream, list) in byStream {
        let sorted = list.sorted { $0.meta.packetIndex < $1.meta.packetIndex }
        #expect(Set(sorted.map(\.meta.packetIndex)).count == sorted.count, "stream \(stream): a packet twice")
        for (start, group) in Dictionary(grouping: sorted, by: \.meta.groupStart) {
            groups += 1
            let indices = group.map(\.meta.packetIndex).sorted()
            #expect(indices.first == start, "stream \(stream): group \(start) lost its keyframe (has \(indices))")
            #expect(indices == Array(start..<(start + indices.count)), "stream \(stream): group \(start) has a hole: \(indices)")
            let decoder = try AV1Decoder()
            for p in group.sorted(by: { $0.meta.packetIndex < $1.meta.packetIndex }) {
                #expect(p.meta.keyframe == (p.meta.packetIndex == start))
                let pictures = try decoder.decode(p.packet)
                #expect(pictures.count == 1 && pictures.first?.width == p.meta.width && pictures.first?.height == p.meta.height)
            }
        }
    }
    return (groups, byStream.count)
}

@Suite("Agent: screen video in the spool", .serialized)
struct VideoSpoolTests {
    static let passphrase = "correct horse battery staple"

    /// Repaints the root (a new solid colour, or the next bitmap) every `everyMs` on a
    /// background thread until `stop()`.
    final class Painter: Sendable {
        private final class Flag: Sendable { let value = Mutex(false) }
        private let stopped = Flag()
        private let finished = DispatchSemaphore(value: 0)
        init(_ xvfb: Xvfb, everyMs: Int, bitmaps: [String] = []) {
            let env = xvfb.environment
            let thread = Thread { [stopped, finished] in
                var i = 0
                while !stopped.value.withLock({ $0 }) {
                    let args = bitmaps.isEmpty ? ["xsetroot", "-solid", String(format: "#%06x", (i * 0x3f1d7) & 0xffffff)]
                                               : ["xsetroot", "-bitmap", bitmaps[i % bitmaps.count]]
                    _ = try? runCommand(args, environment: env)
                    i += 1
                    usleep(UInt32(everyMs) * 1000)
                }
                finished.signal()
            }
            thread.start()
        }
        func stop() {
            stopped.value.withLock { $0 = true }
            finished.wait()
        }
    }

    /// issue 13: kill -9 in the middle of a group of pictures, then a restart: every spooled
    /// packet decodes; the killed run's streams end where it died and the new run starts new
    /// streams with keyframes; the keyframe interval made groups inside a stream.
    @Test func killNineMidGroupThenRestartEverythingSpooledDecodes() throws {
        for tool in ["Xvfb", "xsetroot"] { try requireTool(tool) }
        let rig = try SpoolOnlyAgent(name: "video-kill")
        defer { rig.stop(); rig.dir.remove() }
        let xvfb = try Xvfb(width: 640, height: 400, depth: 24)
        try rig.writeConfig(display: xvfb.name, xauthority: "/dev/null", screenIntervalMs: 150, keystrokeIdleMs: 0)
        try "keyframe-interval-seconds=1\n".append(toFile: rig.configPath)
        let painter = Painter(xvfb, everyMs: 100)
        try rig.start()
        usleep(3_000_000)
        rig.agent!.send(SIGKILL)
        _ = rig.agent!.waitExit(timeout: 10)
        try rig.start()
        usleep(2_000_000)
        painter.stop()
        rig.stop()
        let (packets, others) = try spooledVideoPackets(spoolDir: rig.spoolDir, keypair: rig.dir.file("e2e/keypair.pem"),
                                                        passphrase: Self.passphrase, scratch: rig.dir.file("copy"))
        #expect(others == 0, "every screen record is a video packet by default")
        #expect(packets.count >= 10, "packets: \(packets.count); log: \(rig.log)")
        let (groups, streams) = try expectEveryGroupDecodes(packets)
        #expect(streams >= 2, "the restart starts a new stream (streams: \(streams))")
        #expect(groups > streams, "keyframe-interval-seconds=1 makes several groups per stream (groups \(groups))")
        // Nothing lost inside a stream before the kill: each stream is one run from packet 0.
        for (_, list) in Dictionary(grouping: packets, by: \.meta.streamID) {
            let indices = list.map(\.meta.packetIndex).sorted()
            #expect(indices == Array(0..<indices.count))
        }
    }

    /// SIGHUP applies `screen-format` and `keyframe-interval-seconds` at once: PNG frames before
    /// it, video packets after it (a new stream with interval keyframes every second), and back to
    /// PNG on the next SIGHUP; every group of pictures spooled decodes.
    @Test func sighupSwitchesScreenFormatAndKeyframeInterval() throws {
        for tool in ["Xvfb", "xsetroot"] { try requireTool(tool) }
        let rig = try SpoolOnlyAgent(name: "video-hup")
        defer { rig.stop(); rig.dir.remove() }
        let xvfb = try Xvfb(width: 320, height: 240, depth: 24)
        try rig.writeConfig(display: xvfb.name, xauthority: "/dev/null", screenIntervalMs: 150, keystrokeIdleMs: 0,
                            screenFormat: "png")
        let painter = Painter(xvfb, everyMs: 100)
        try rig.start()
        func screenRecords() -> (packets: [SpooledPacket], others: Int) {
            (try? spooledVideoPackets(spoolDir: rig.spoolDir, keypair: rig.dir.file("e2e/keypair.pem"),
                                      passphrase: Self.passphrase, scratch: rig.dir.file("copy"))) ?? ([], 0)
        }
        #expect(waitUntil(timeout: 20) { screenRecords().others >= 3 }, "PNG frames before SIGHUP: \(rig.log)")
        try rig.writeConfig(display: xvfb.name, xauthority: "/dev/null", screenIntervalMs: 150, keystrokeIdleMs: 0,
                            screenFormat: "video", extra: ["keyframe-interval-seconds=1"])
        rig.agent!.send(SIGHUP)
        #expect(waitUntil(timeout: 20) { Set(screenRecords().packets.filter(\.meta.keyframe).map(\.meta.groupStart)).count >= 3 },
                "three groups of pictures, a second apart, after SIGHUP: \(rig.log)")
        let pngBefore = screenRecords().others
        try rig.writeConfig(display: xvfb.name, xauthority: "/dev/null", screenIntervalMs: 150, keystrokeIdleMs: 0,
                            screenFormat: "png")
        rig.agent!.send(SIGHUP)
        #expect(waitUntil(timeout: 20) { screenRecords().others >= pngBefore + 3 }, "PNG frames again: \(rig.log)")
        painter.stop()
        rig.stop()
        let (packets, _) = screenRecords()
        let (groups, streams) = try expectEveryGroupDecodes(packets)
        #expect(streams == 1 && groups >= 3, "one video stream while screen-format=video (streams \(streams), groups \(groups))")
        #expect(rig.logLines.filter { $0.contains("screen capture settings changed") }.count == 2, "\(rig.log)")
    }

    /// issue 13: eviction under a small cap leaves only whole groups of pictures, each decoding
    /// on its own; the agent restarts a stream whose group was evicted (a new keyframe), and
    /// `status` counts the evictions.
    @Test func evictionUnderASmallCapLeavesOnlyDecodableGroups() throws {
        for tool in ["Xvfb", "xsetroot"] { try requireTool(tool) }
        let rig = try SpoolOnlyAgent(name: "video-evict")
        defer { rig.stop(); rig.dir.remove() }
        let xvfb = try Xvfb(width: 800, height: 600, depth: 24)
        let bitmaps = (0..<4).map { rig.dir.file("noise\($0).xbm") }
        for path in bitmaps { try randomXBM(width: 800, height: 600).write(toFile: path, atomically: true, encoding: .utf8) }
        try rig.writeConfig(display: xvfb.name, xauthority: "/dev/null", screenIntervalMs: 100, keystrokeIdleMs: 0,
                            spoolMaxMB: 1)
        try "keyframe-interval-seconds=1\n".append(toFile: rig.configPath)
        let painter = Painter(xvfb, everyMs: 80, bitmaps: bitmaps)
        try rig.start()
        // Until the spool has evicted screen records (a few seconds; longer on a loaded machine).
        func screenEvictions(_ status: String) -> Bool {
            let line = status.split(separator: "\n").first { $0.hasPrefix("evictions:") }.map(String.init) ?? ""
            return line.firstMatch(of: /screen [1-9]/) != nil
        }
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, !screenEvictions((try? rig.status()) ?? "") { usleep(500_000) }
        usleep(1_000_000)  // a few packets more after the eviction: the restarted stream
        painter.stop()
        rig.stop()
        let status = try rig.status()
        let evictedLine = status.split(separator: "\n").first { $0.hasPrefix("evictions:") }.map(String.init) ?? ""
        #expect(evictedLine.firstMatch(of: /screen [1-9]/) != nil, "no screen record evicted: \(status)\n\(rig.log)")
        let (packets, _) = try spooledVideoPackets(spoolDir: rig.spoolDir, keypair: rig.dir.file("e2e/keypair.pem"),
                                                   passphrase: Self.passphrase, scratch: rig.dir.file("copy"))
        #expect(!packets.isEmpty, "status: \(status)")
        try expectEveryGroupDecodes(packets)
    }
}

extension String {
    /// Appends this text to the file at `path`.
    func append(toFile path: String) throws {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(utf8))
    }
}
