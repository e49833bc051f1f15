import CaptureFormat
import CollectorStorage
import CustosBase
import Foundation
import Video

/// What `custos decrypt`/`export` do with video packets besides muxing them.
struct VideoExportOptions: Sendable {
    /// `--stills SECONDS` in ms: a PNG of the picture shown at the start of each WebM file and
    /// every this many ms of capture time after; nil: no stills.
    var stillsEveryMs: Int64?
    /// A run is cut into another file at the first keyframe after its WebM file reached this many
    /// bytes: the bound on what one file holds in memory while it is built.
    var maxFileBytes = 256 << 20
    /// The selection's `--since` (Unix ms): a stream whose first selected packet is inside a group
    /// of pictures is started at that group's keyframe, found before this time
    /// (``Decryptor/lookBack(_:first:before:report:)``); nil: no look back.
    var selectionStartMs: Int64?

    init(stillsEveryMs: Int64? = nil, maxFileBytes: Int = 256 << 20, selectionStartMs: Int64? = nil) {
        self.stillsEveryMs = stillsEveryMs
        self.maxFileBytes = maxFileBytes
        self.selectionStartMs = selectionStartMs
    }
}

/// Why a decrypted video packet was not written (``DecryptReport/videoPacketsSkipped``'s keys).
enum VideoSkipReason {
    /// Each reason in words, for the summary's error line.
    static let explanation: [String: String] = [
        "no-keyframe": "no-keyframe: a packet before it is missing (never stored, evicted on the endpoint, or failed), so it cannot be decoded",
        "duplicate": "duplicate: a second copy of a packet already written",
    ]
}

/// The video packets met in the first pass of a decrypt, grouped per stream (agent, monitor,
/// stream id) in the order streams first appeared. Holds metadata only (about 200 bytes a
/// packet: the item row it shares with the selection, index, time, size, and the sequence
/// header of a keyframe), never packet bytes.
final class VideoStreams {
    struct Key: Hashable {
        var agent: String
        /// The graphical session's user (sealed session blobs), else nil: its files go in the user's folder.
        var user: UserName?
        var monitor: Int
        var streamID: String
    }

    /// One packet, as the second pass needs it to open, place and check it again.
    struct Packet {
        var item: SealedItem
        var index: Int
        var keyframe: Bool
        var timeMs: Int64
        var width: Int
        var height: Int
        var codec: String
        /// The index of its group's keyframe (``VideoPacketMetadata/groupStart``).
        var groupStart: Int
        /// The sequence header OBU payload when the packet has one (keyframes).
        var sequenceHeader: [UInt8]?
    }

    struct Stream {
        var key: Key
        var monitorName: String
        var packets: [Packet] = []
    }

    private(set) var streams: [Stream] = []
    private var slots: [Key: Int] = [:]

    /// Checks one decrypted packet and records it (not its bytes).
    /// - Throws: what ``packet(_:meta:bytes:)`` throws.
    func add(_ item: SealedItem, meta: VideoPacketMetadata, packet: Data) throws {
        let p = try Self.packet(item, meta: meta, bytes: packet)
        let key = Key(agent: item.agentID, user: item.user, monitor: meta.monitor, streamID: meta.streamID)
        let slot: Int
        if let s = slots[key] {
            slot = s
        } else {
            slot = streams.count
            slots[key] = slot
            streams.append(Stream(key: key, monitorName: meta.monitorName))
        }
        streams[slot].packets.append(p)
    }

    /// Checks one decrypted packet against its metadata.
    /// - Throws: `AdminError(.decryptionFailed)` naming what is wrong when the codec is not AV1,
    ///   the bytes are not an AV1 temporal unit, or a keyframe has no sequence header and key frame
    ///   or a size other than its metadata's.
    static func packet(_ item: SealedItem, meta: VideoPacketMetadata, bytes packet: Data) throws -> Packet {
        guard meta.codec.hasPrefix("av01.") else {
            throw AdminError(.decryptionFailed, "video codec '\(meta.codec)' is not AV1 (av01.…); only AV1 is exported")
        }
        let header: AV1SequenceHeader?
        do {
            let tu = try AV1TemporalUnit([UInt8](packet))
            _ = try tu.blockData()
            header = try tu.sequenceHeader()
            if meta.keyframe {
                guard let header, tu.isKeyFrame(reducedStillPicture: header.reducedStillPicture) else {
                    throw VideoError(.corruptPacket, "the metadata says keyframe, but the AV1 packet holds no sequence header and key frame")
                }
                guard header.maxWidth == meta.width, header.maxHeight == meta.height else {
                    throw VideoError(.corruptPacket, "the metadata says \(meta.width)x\(meta.height), the AV1 sequence header \(header.maxWidth)x\(header.maxHeight)")
                }
            }
        } catch {
            throw AdminError(.decryptionFailed, "video packet \(meta.packetIndex) of stream \(meta.streamID): \(error)")
        }
        return Packet(item: item, index: meta.packetIndex, keyframe: meta.keyframe, timeMs: meta.captureTimeMs,
                      width: meta.width, height: meta.height, codec: meta.codec, groupStart: meta.groupStart,
                      sequenceHeader: header?.payload)
    }
}

extension Decryptor {
    /// One WebM file being built: a contiguous run of one stream from a keyframe on.
    private final class Run {
        let stream: VideoStreams.Stream
        let first: VideoStreams.Packet
        var last: VideoStreams.Packet
        let writer: WebMWriter
        var blobIDs: [String] = []
        /// Stills: the decoder (every packet of the run goes through it), the next grid time
        /// (ms), and the manifest entries of stills written, to name the file once it has its path.
        var decoder: AV1Decoder?
        var nextStillMs: Int64
        /// Still times are `stillOrigin` + k × `stillsEveryMs`.
        var stillOrigin: Int64
        var stillEntries: [Int] = []

        init(stream: VideoStreams.Stream, first: VideoStreams.Packet, stills: Bool) throws {
            self.stream = stream
            self.first = first
            last = first
            // TrackUID: the stream id's first 16 hex digits (random per stream), never 0.
            writer = WebMWriter(trackUID: UInt64(stream.key.streamID.prefix(16), radix: 16) ?? 1)
            nextStillMs = first.timeMs
            stillOrigin = first.timeMs
            decoder = stills ? try AV1Decoder() : nil
        }

        /// Stills start at the selection's start when the run was looked back before it
        /// (`--since` inside a group of pictures): pictures before `--since` are decoded, not stilled.
        func startStills(notBefore selectionStartMs: Int64?) {
            if let s = selectionStartMs, s > nextStillMs { (nextStillMs, stillOrigin) = (s, s) }
        }

        func continues(with p: VideoStreams.Packet) -> Bool {
            p.index == last.index + 1 && p.width == first.width && p.height == first.height && p.codec == first.codec
                && (p.sequenceHeader == nil || p.sequenceHeader == first.sequenceHeader)
        }
    }

    /// The second pass over video: for each stream, its packets in `packetIndex` order, opened
    /// again one at a time and muxed into WebM files; stills decoded on the way.
    ///
    /// A stream is cut where a packet is missing (never stored, evicted from the agent's spool,
    /// outside the selection, or failed to open): the part after the gap starts at the next
    /// keyframe, and the packets before that keyframe are counted in
    /// `report.videoPacketsSkipped["no-keyframe"]` (they cannot be decoded). A size, codec or
    /// sequence header change also starts a new file (at a keyframe), and so does a keyframe
    /// after the file reached `video.maxFileBytes`.
    ///
    /// Memory: one WebM file (and, with stills, one decoder and one picture) at a time.
    /// - Throws: `AdminError` `.io` when the output cannot be written.
    func writeVideo(_ streams: VideoStreams, report: inout DecryptReport) async throws {
        for stream in streams.streams {
            var packets = stream.packets.sorted { $0.index < $1.index }
            if let since = video.selectionStartMs, let first = packets.first, !first.keyframe, first.groupStart < first.index {
                let earlier = try await lookBack(stream, first: first, before: since, report: &report)
                packets.insert(contentsOf: earlier, at: 0)
                report.videoPacketsBeforeSelection += earlier.count
            }
            var run: Run?
            for (n, p) in packets.enumerated() {
                if interruptRequested.load(ordering: .relaxed) {
                    report.interrupted = true
                    return  // the file being built is dropped: only complete files are written
                }
                if n > 0, packets[n - 1].index == p.index {
                    report.videoPacketsSkipped["duplicate", default: 0] += 1
                    continue
                }
                if let r = run, !r.continues(with: p) || (p.keyframe && r.writer.byteCount >= video.maxFileBytes) {
                    try finish(r, report: &report)
                    run = nil
                }
                if run == nil, !p.keyframe {
                    report.videoPacketsSkipped["no-keyframe", default: 0] += 1
                    continue
                }
                // The packet again (it opened in the first pass; a second failure is an I/O problem).
                guard let plaintext = await plaintext(of: p.item, report: &report) else {
                    report.decrypted -= 1
                    if let r = run { try finish(r, report: &report) }
                    run = nil
                    continue
                }
                do {
                    let bytes = [UInt8](try VideoPacketPayload.decode(plaintext).packet)
                    let r: Run
                    if let existing = run {
                        r = existing
                    } else {
                        r = try Run(stream: stream, first: p, stills: video.stillsEveryMs != nil)
                        r.startStills(notBefore: video.selectionStartMs)
                    }
                    run = r
                    try r.writer.append(bytes, timeMs: p.timeMs, keyframe: p.keyframe)
                    r.last = p
                    r.blobIDs.append(p.item.blobID.hex)
                    let next = packets.dropFirst(n + 1).first { $0.index != p.index }.flatMap { r.continues(with: $0) ? $0 : nil }
                    try still(r, packet: p, bytes: bytes, shownUntilMs: next?.timeMs, report: &report)
                } catch let e as AdminError where e.code == .io || e.code == .usage {
                    throw e
                } catch {
                    report.failures.append(.init(blobID: p.item.blobID.hex, reason: "decrypted, but the video packet cannot be written: \(error)"))
                    report.decrypted -= 1
                    if let r = run, r.writer.packetCount > 0 { try finish(r, report: &report) }
                    run = nil
                }
            }
            if let r = run { try finish(r, report: &report) }
        }
    }

    /// The longest a group of pictures lasts (the agent's `keyframe-interval-seconds` is at most
    /// 3,600) plus a minute: how far before `--since` a cut group's keyframe is looked for, in ms.
    static let groupLookBackMs: Int64 = 3_660_000

    /// A stream whose first selected packet `first` is not a keyframe because `--since` (`sinceMs`)
    /// fell inside its group of pictures: the group's packets before it, found by walking the same
    /// agent's screen captures newest first from `sinceMs` back at most ``groupLookBackMs``, so the
    /// video starts at the group's keyframe and the selection's first picture decodes.
    ///
    /// - Returns: the packets `first.groupStart ..< first.index` in index order (the first is the
    ///   keyframe), or none when any is missing (the gap stays, skipped as `no-keyframe`). Items
    ///   that fail to open on the way are outside the selection and not reported.
    /// - Throws: what the source throws (storage unreachable).
    private func lookBack(_ stream: VideoStreams.Stream, first: VideoStreams.Packet, before sinceMs: Int64,
                          report: inout DecryptReport) async throws -> [VideoStreams.Packet] {
        guard let agent = try? AgentID(stream.key.agent) else { return [] }
        let wanted = first.groupStart..<first.index
        var found: [Int: VideoStreams.Packet] = [:]
        var scratch = DecryptReport()  // failures outside the selection are not the selection's
        let query = CaptureQuery(agentID: agent, kind: .screen, user: stream.key.user, sinceMs: sinceMs - Self.groupLookBackMs,
                                 untilMs: min(sinceMs, first.timeMs), order: .descending)
        try await source.forEachPage(query) { page in
            for info in page where info.kekID == key.id {
                if interruptRequested.load(ordering: .relaxed) { return false }
                guard let plaintext = await plaintext(of: info, report: &scratch), VideoPacketPayload.matches(plaintext),
                      let (meta, bytes) = try? VideoPacketPayload.decode(plaintext),
                      meta.streamID == stream.key.streamID, meta.monitor == stream.key.monitor else { continue }
                if meta.packetIndex < wanted.lowerBound { return false }  // walked past the keyframe
                guard wanted.contains(meta.packetIndex),
                      let p = try? VideoStreams.packet(info, meta: meta, bytes: bytes) else { continue }
                found[meta.packetIndex] = p
                if found.count == wanted.count { return false }
            }
            return true
        }
        guard found.count == wanted.count, found[wanted.lowerBound]?.keyframe == true else { return [] }
        return wanted.map { found[$0]! }
    }

    /// With `--stills`: decodes `bytes` (every packet of the run, in order) and writes a PNG when
    /// a still time (the run's first packet time + k × `stillsEveryMs`) falls while this packet's
    /// picture is shown, from its time to `shownUntilMs` (the next packet's in the run; nil for
    /// the run's last packet), and always for the run's last picture (the screen as the run
    /// ends). One still per picture at most, named by its capture time.
    private func still(_ r: Run, packet p: VideoStreams.Packet, bytes: [UInt8], shownUntilMs: Int64?,
                       report: inout DecryptReport) throws {
        guard let every = video.stillsEveryMs, let decoder = r.decoder else { return }
        let pictures: [I420Frame]
        do { pictures = try decoder.decode(bytes) } catch {
            report.failures.append(.init(blobID: p.item.blobID.hex, reason: "no more stills from this video: the AV1 packet does not decode: \(error)"))
            r.decoder = nil
            return
        }
        let end = shownUntilMs ?? p.timeMs + 1
        let onGrid = r.nextStillMs < end
        guard onGrid || shownUntilMs == nil, let picture = pictures.last else { return }
        if onGrid {
            let steps = (end - r.stillOrigin + every - 1) / every
            r.nextStillMs = r.stillOrigin + steps * every
        }
        let png: Data
        do {
            let stream = try PNGEncoder(level: 6).begin(width: picture.width, height: picture.height, layout: .bgrx)
            let pixels = picture.bgrx()
            try pixels.withUnsafeBytes { try stream.write(rows: picture.height, from: $0.baseAddress!, stride: picture.width * 4) }
            png = try stream.finish()
        } catch {
            report.failures.append(.init(blobID: p.item.blobID.hex, reason: "the still at \(OutputNaming.iso(p.timeMs)) cannot be made: \(error)"))
            return
        }
        let s = r.stream
        let used = try sink.add(png, at: OutputNaming.screen(agent: s.key.agent, user: s.key.user, monitor: s.key.monitor,
                                                             monitorName: s.monitorName,
                                                             timeMs: p.timeMs), compress: false)
        r.stillEntries.append(files.count)
        files.append(ManifestFile(path: used, kind: "still", agent: s.key.agent, blobIds: [p.item.blobID.hex],
                                  captureTime: OutputNaming.iso(p.timeMs), bytes: png.count, sha256: sha256Hex(png),
                                  streamId: s.key.streamID, monitor: s.key.monitor, width: picture.width, height: picture.height))
        report.stills += 1
    }

    /// Ends a run's WebM file and adds it to the sink and the manifest.
    private func finish(_ r: Run, report: inout DecryptReport) throws {
        guard r.writer.packetCount > 0 else { return }
        let duration = r.writer.durationMs()
        let data: Data
        do { data = try r.writer.finish() } catch {
            report.failures.append(.init(blobID: r.first.item.blobID.hex, reason: "the WebM file cannot be finished: \(error)"))
            return
        }
        let s = r.stream
        let used = try sink.add(data, at: OutputNaming.video(agent: s.key.agent, user: s.key.user, monitor: s.key.monitor,
                                                             monitorName: s.monitorName,
                                                             startMs: r.first.timeMs, streamID: s.key.streamID), compress: false)
        files.append(ManifestFile(path: used, kind: "video", agent: s.key.agent, blobIds: r.blobIDs,
                                  captureTime: OutputNaming.iso(r.first.timeMs), bytes: data.count, sha256: sha256Hex(data),
                                  streamId: s.key.streamID, monitor: s.key.monitor, codec: r.first.codec,
                                  width: r.first.width, height: r.first.height, packets: r.writer.packetCount,
                                  durationMs: duration, firstTime: OutputNaming.iso(r.first.timeMs),
                                  lastTime: OutputNaming.iso(r.last.timeMs)))
        for i in r.stillEntries { files[i].video = used }
        report.videoFiles += 1
        report.videoPackets += r.writer.packetCount
    }
}
