import Foundation

/// Writes one AV1 video track as a WebM file (Matroska, DocType `webm`) in memory: what
/// `custos decrypt`/`export` make of one run of a recorded stream. Pure Swift; written from the
/// specifications, not from another muxer:
/// - RFC 8794 (EBML): the header, element IDs and VINT sizes;
/// - RFC 9559 (Matroska): Segment, SeekHead, Info, Tracks, Cluster, SimpleBlock (§10.2), Cues;
/// - the WebM container guidelines (webmproject.org/docs/container): DocType `webm`, SimpleBlocks,
///   Cues for video keyframes;
/// - the Matroska AV1 codec mapping (codec/av1.md of the Matroska specification) and
///   AV1-ISOBMFF §2.3 (AV1CodecConfigurationRecord): CodecID `V_AV1`, CodecPrivate = `av1C`,
///   PixelWidth/Height from the sequence header, no Temporal Delimiter OBUs in Blocks, a
///   keyframe Block holds a Sequence Header OBU and a KEY_FRAME.
///
/// Layout:
/// ```
/// EBML header (DocType webm, DocTypeVersion 4, DocTypeReadVersion 2)
/// Segment (size: 8-byte VINT, patched by finish)
///   SeekHead   → Info, Tracks, Cues (positions as 8-byte unsigned integers)
///   Info       TimestampScale 1,000,000 ns (1 ms), Duration (ms, 8-byte float), DateUTC of the first packet
///   Tracks     one TrackEntry: number 1, video, V_AV1, av1C, PixelWidth/Height, Colour
///   Cluster*   Timestamp (ms from the first packet) + SimpleBlocks; a new Cluster at every keyframe
///              and whenever a block would lie more than 32,767 ms after its Cluster's Timestamp
///   Cues       one CuePoint per keyframe: CueTime, CueTrack 1, CueClusterPosition
/// ```
/// Block timestamps are the packets' times minus the first packet's (so the file starts at 0);
/// `DateUTC` keeps the absolute start. The head (SeekHead, Info, Tracks) is written with its final
/// size at the first packet and rewritten in place by ``finish(lastFrameDurationMs:)``; the file
/// is one growing `Data` (its final size plus nothing: no second copy).
///
/// Not thread-safe. Errors: ``VideoError`` `.invalidArgument` for a call the file cannot take (a
/// first packet that is not a keyframe, a time not after the previous one, a changed sequence
/// header: start a new file there), `.corruptPacket` for bytes that are not an AV1 temporal unit
/// or a keyframe flag the bitstream does not bear out.
public final class WebMWriter {
    /// The largest time from a Cluster's Timestamp to one of its blocks: a signed 16-bit offset.
    public static let maxBlockOffsetMs: Int64 = 32_767
    /// The Matroska `TrackNumber` of the one video track.
    static let trackNumber: UInt64 = 1

    private let trackUID: UInt64
    private let writingApp: String
    private var out = Data()
    private var segmentSizeAt = 0
    private var segmentStart = 0
    private var headRange = 0..<0
    private var sequence: AV1SequenceHeader?
    private var clusterStart: Int?
    private var clusterTimeMs: Int64 = 0
    private var cues: [(timeMs: Int64, position: Int)] = []
    private var previousTimeMs: Int64?
    private var finished = false

    /// Packets appended so far.
    public private(set) var packetCount = 0
    /// Times of the first and last packet appended (the caller's clock, e.g. Unix ms).
    public private(set) var firstTimeMs: Int64?
    public private(set) var lastTimeMs: Int64?
    /// Bytes written so far (the file grows by about each packet's size).
    public var byteCount: Int { out.count }
    /// The first keyframe's sequence header (nil before the first packet).
    public var sequenceHeader: AV1SequenceHeader? { sequence }

    /// - Parameters:
    ///   - trackUID: the track's `TrackUID` (not 0; e.g. derived from the stream id).
    ///   - writingApp: the `WritingApp` string.
    public init(trackUID: UInt64 = 1, writingApp: String = "custos") {
        self.trackUID = max(trackUID, 1)
        self.writingApp = writingApp
    }

    /// Appends one AV1 temporal unit shown at `timeMs` (ms, later than the previous packet's).
    /// Temporal Delimiter and Padding OBUs are dropped (Matroska AV1 mapping, "Block Data").
    /// - Parameter keyframe: the packet starts a group of pictures; checked against the bitstream
    ///   (a Sequence Header OBU and a KEY_FRAME) and written as the SimpleBlock keyframe flag.
    /// - Throws: ``VideoError``: `.invalidArgument` (first packet not a keyframe, time not
    ///   increasing, sequence header different from the first, writer finished), `.corruptPacket`
    ///   (not a temporal unit, a Tile List OBU, a keyframe flag without a key frame in the bytes).
    public func append(_ temporalUnit: [UInt8], timeMs: Int64, keyframe: Bool) throws(VideoError) {
        guard !finished else { throw VideoError(.invalidArgument, "WebM file already finished") }
        let tu = try AV1TemporalUnit(temporalUnit)
        let header = try tu.sequenceHeader()
        if keyframe {
            guard let header, tu.isKeyFrame(reducedStillPicture: header.reducedStillPicture) else {
                throw VideoError(.corruptPacket, "packet at \(timeMs) ms is flagged as a keyframe, but it does not hold "
                                 + "a sequence header and a KEY_FRAME")
            }
        }
        if let header, let first = sequence, header.payload != first.payload {
            throw VideoError(.invalidArgument, "packet at \(timeMs) ms has another AV1 sequence header than the "
                             + "file's first keyframe; a Matroska track cannot change it (start a new file)")
        }
        let block = try tu.blockData()
        if let last = lastTimeMs {
            guard timeMs > last else {
                throw VideoError(.invalidArgument, "packet at \(timeMs) ms is not after the previous one (\(last) ms)")
            }
        } else {
            guard keyframe, let header else {
                throw VideoError(.invalidArgument, "a WebM file must start with a keyframe (packet at \(timeMs) ms is not one)")
            }
            sequence = header
            firstTimeMs = timeMs
            writeStart()
        }
        let relative = timeMs - firstTimeMs!
        if keyframe || clusterStart == nil || relative - clusterTimeMs > Self.maxBlockOffsetMs {
            closeCluster()
            clusterStart = out.count
            clusterTimeMs = relative
            out.append(contentsOf: EBML.id(EBML.cluster) + EBML.vint(0, length: 8))
            out.append(contentsOf: EBML.uint(EBML.timestamp, UInt64(relative)))
            if keyframe { cues.append((relative, clusterStart! - segmentStart)) }
        }
        let offset = Int16(relative - clusterTimeMs)
        let blockHeader: [UInt8] = [0x80 | UInt8(Self.trackNumber), UInt8(truncatingIfNeeded: offset >> 8),
                                    UInt8(truncatingIfNeeded: offset), keyframe ? 0x80 : 0x00]
        out.append(contentsOf: EBML.id(EBML.simpleBlock) + EBML.vint(UInt64(blockHeader.count + block.count)))
        out.append(contentsOf: blockHeader)
        out.append(contentsOf: block)
        previousTimeMs = lastTimeMs
        lastTimeMs = timeMs
        packetCount += 1
    }

    /// Duration (ms) the file will declare: last − first packet time + the last frame's duration.
    public func durationMs(lastFrameDurationMs: Int64? = nil) -> Int64 {
        guard let first = firstTimeMs, let last = lastTimeMs else { return 0 }
        return last - first + lastFrameDuration(lastFrameDurationMs)
    }

    /// A packet has no duration of its own: the last one is shown for `given`, else for as long
    /// as the gap before it, else (a one-packet file) 1,000 ms (the agent's default screen interval).
    private func lastFrameDuration(_ given: Int64?) -> Int64 {
        if let given, given > 0 { return given }
        if let last = lastTimeMs, let previous = previousTimeMs { return last - previous }
        return 1000
    }

    /// Ends the file: closes the last Cluster, writes the Cues, the final head (Duration, SeekHead
    /// positions) and the Segment size. The writer takes nothing after this.
    /// - Parameter lastFrameDurationMs: how long the last packet is shown (see ``durationMs(lastFrameDurationMs:)``).
    /// - Returns: the whole WebM file.
    /// - Throws: ``VideoError`` `.invalidArgument` when no packet was appended or it was already finished.
    public func finish(lastFrameDurationMs: Int64? = nil) throws(VideoError) -> Data {
        guard !finished else { throw VideoError(.invalidArgument, "WebM file already finished") }
        guard packetCount > 0 else { throw VideoError(.invalidArgument, "a WebM file needs at least one packet") }
        finished = true
        closeCluster()
        let cuesPosition = out.count - segmentStart
        var points: [UInt8] = []
        for cue in cues {
            let positions = EBML.uint(EBML.cueTrack, Self.trackNumber) + EBML.uint(EBML.cueClusterPosition, UInt64(cue.position))
            points += EBML.master(EBML.cuePoint, EBML.uint(EBML.cueTime, UInt64(cue.timeMs)) + EBML.master(EBML.cueTrackPositions, positions))
        }
        out.append(contentsOf: EBML.master(EBML.cues, points))
        let head = self.head(durationMs: Double(durationMs(lastFrameDurationMs: lastFrameDurationMs)), cuesPosition: cuesPosition)
        precondition(head.count == headRange.count, "WebM head changed size (\(headRange.count) → \(head.count))")
        out.replaceSubrange(headRange, with: head)
        out.replaceSubrange(segmentSizeAt..<(segmentSizeAt + 8), with: EBML.vint(UInt64(out.count - segmentStart), length: 8))
        let file = out
        out = Data()
        return file
    }

    /// EBML header, Segment start and a head of its final size (rewritten by `finish`).
    private func writeStart() {
        let header = EBML.uint(EBML.ebmlVersion, 1) + EBML.uint(EBML.ebmlReadVersion, 1)
            + EBML.uint(EBML.ebmlMaxIDLength, 4) + EBML.uint(EBML.ebmlMaxSizeLength, 8)
            + EBML.string(EBML.docType, "webm") + EBML.uint(EBML.docTypeVersion, 4) + EBML.uint(EBML.docTypeReadVersion, 2)
        out.append(contentsOf: EBML.master(EBML.ebml, header))
        out.append(contentsOf: EBML.id(EBML.segment))
        segmentSizeAt = out.count
        out.append(contentsOf: EBML.vint(0, length: 8))
        segmentStart = out.count
        let head = self.head(durationMs: 0, cuesPosition: 0)
        headRange = out.count..<(out.count + head.count)
        out.append(contentsOf: head)
    }

    /// SeekHead, Info and Tracks. Its size depends on nothing `finish` changes (fixed-width
    /// positions, an 8-byte Duration), so it can be rewritten in place.
    private func head(durationMs: Double, cuesPosition: Int) -> [UInt8] {
        let seq = sequence!
        // DateUTC: ns since 2001-01-01T00:00:00 UTC (RFC 8794 §7.6), from the first packet's Unix ms.
        let dateNs = (firstTimeMs! - 978_307_200_000) &* 1_000_000
        let info = EBML.master(EBML.info, EBML.uint(EBML.timestampScale, 1_000_000) + EBML.float(EBML.duration, durationMs)
                               + EBML.int8(EBML.dateUTC, dateNs) + EBML.string(EBML.muxingApp, "custos WebMWriter")
                               + EBML.string(EBML.writingApp, writingApp))
        var colour = EBML.uint(EBML.range, seq.fullRange ? 2 : 1) + EBML.uint(EBML.bitsPerChannel, UInt64(seq.bitDepth))
        if let mc = seq.matrixCoefficients, let tc = seq.transferCharacteristics, let cp = seq.colorPrimaries {
            colour += EBML.uint(EBML.matrixCoefficients, UInt64(mc)) + EBML.uint(EBML.transferCharacteristics, UInt64(tc))
                + EBML.uint(EBML.primaries, UInt64(cp))
        }
        // chroma_sample_position → ChromaSitingHorz/Vert (Matroska AV1 mapping); 3 (reserved) writes none.
        let siting: (UInt64, UInt64)? = switch seq.chromaSamplePosition {
        case 0: (0, 0)
        case 1: (1, 2)
        case 2: (1, 1)
        default: nil
        }
        if let siting { colour += EBML.uint(EBML.chromaSitingHorz, siting.0) + EBML.uint(EBML.chromaSitingVert, siting.1) }
        let video = EBML.uint(EBML.pixelWidth, UInt64(seq.maxWidth)) + EBML.uint(EBML.pixelHeight, UInt64(seq.maxHeight))
            + EBML.master(EBML.colour, colour)
        let entry = EBML.uint(EBML.trackNumberID, Self.trackNumber) + EBML.uint(EBML.trackUID, trackUID)
            + EBML.uint(EBML.trackType, 1) + EBML.uint(EBML.flagLacing, 0) + EBML.string(EBML.codecID, "V_AV1")
            + EBML.binary(EBML.codecPrivate, seq.av1C) + EBML.master(EBML.video, video)
        let tracks = EBML.master(EBML.tracks, EBML.master(EBML.trackEntry, entry))
        func seek(_ id: UInt32, _ position: Int) -> [UInt8] {
            EBML.master(EBML.seek, EBML.binary(EBML.seekID, EBML.id(id)) + EBML.fixedUInt(EBML.seekPosition, UInt64(position)))
        }
        let seekHeadSize = EBML.master(EBML.seekHead, seek(EBML.info, 0) + seek(EBML.tracks, 0) + seek(EBML.cues, 0)).count
        let seekHead = EBML.master(EBML.seekHead, seek(EBML.info, seekHeadSize) + seek(EBML.tracks, seekHeadSize + info.count)
                                   + seek(EBML.cues, cuesPosition))
        return seekHead + info + tracks
    }

    /// Writes the open Cluster's size (its 8-byte placeholder).
    private func closeCluster() {
        guard let start = clusterStart else { return }
        let sizeAt = start + 4
        out.replaceSubrange(sizeAt..<(sizeAt + 8), with: EBML.vint(UInt64(out.count - sizeAt - 8), length: 8))
        clusterStart = nil
    }
}

/// EBML encoding (RFC 8794) and the Matroska element IDs used (RFC 9559; IDs include their
/// VINT marker bits, as the schema `ebml_matroska.xml` lists them).
enum EBML {
    static let ebml: UInt32 = 0x1A45_DFA3
    static let ebmlVersion: UInt32 = 0x4286
    static let ebmlReadVersion: UInt32 = 0x42F7
    static let ebmlMaxIDLength: UInt32 = 0x42F2
    static let ebmlMaxSizeLength: UInt32 = 0x42F3
    static let docType: UInt32 = 0x4282
    static let docTypeVersion: UInt32 = 0x4287
    static let docTypeReadVersion: UInt32 = 0x4285
    static let segment: UInt32 = 0x1853_8067
    static let seekHead: UInt32 = 0x114D_9B74
    static let seek: UInt32 = 0x4DBB
    static let seekID: UInt32 = 0x53AB
    static let seekPosition: UInt32 = 0x53AC
    static let info: UInt32 = 0x1549_A966
    static let timestampScale: UInt32 = 0x2A_D7B1
    static let duration: UInt32 = 0x4489
    static let dateUTC: UInt32 = 0x4461
    static let muxingApp: UInt32 = 0x4D80
    static let writingApp: UInt32 = 0x5741
    static let tracks: UInt32 = 0x1654_AE6B
    static let trackEntry: UInt32 = 0xAE
    static let trackNumberID: UInt32 = 0xD7
    static let trackUID: UInt32 = 0x73C5
    static let trackType: UInt32 = 0x83
    static let flagLacing: UInt32 = 0x9C
    static let codecID: UInt32 = 0x86
    static let codecPrivate: UInt32 = 0x63A2
    static let video: UInt32 = 0xE0
    static let pixelWidth: UInt32 = 0xB0
    static let pixelHeight: UInt32 = 0xBA
    static let colour: UInt32 = 0x55B0
    static let matrixCoefficients: UInt32 = 0x55B1
    static let bitsPerChannel: UInt32 = 0x55B2
    static let chromaSitingHorz: UInt32 = 0x55B7
    static let chromaSitingVert: UInt32 = 0x55B8
    static let range: UInt32 = 0x55B9
    static let transferCharacteristics: UInt32 = 0x55BA
    static let primaries: UInt32 = 0x55BB
    static let cluster: UInt32 = 0x1F43_B675
    static let timestamp: UInt32 = 0xE7
    static let simpleBlock: UInt32 = 0xA3
    static let cues: UInt32 = 0x1C53_BB6B
    static let cuePoint: UInt32 = 0xBB
    static let cueTime: UInt32 = 0xB3
    static let cueTrackPositions: UInt32 = 0xB7
    static let cueTrack: UInt32 = 0xF7
    static let cueClusterPosition: UInt32 = 0xF1

    /// An element ID's bytes (1–4, as written in the schema).
    static func id(_ id: UInt32) -> [UInt8] {
        let length = id > 0xFF_FFFF ? 4 : id > 0xFFFF ? 3 : id > 0xFF ? 2 : 1
        return (0..<length).map { UInt8(truncatingIfNeeded: id >> (8 * UInt32(length - 1 - $0))) }
    }

    /// A VINT (RFC 8794 §4) holding `value` in `length` bytes (1–8), or the fewest that hold it
    /// (all-ones values are reserved for "unknown", so they take one byte more).
    static func vint(_ value: UInt64, length: Int? = nil) -> [UInt8] {
        var n = length ?? 1
        if length == nil { while n < 8 && value >= (UInt64(1) << (7 * UInt64(n))) - 1 { n += 1 } }
        var bytes = (0..<n).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(n - 1 - $0))) }
        bytes[0] |= UInt8(0x80 >> (n - 1))
        return bytes
    }

    static func master(_ id: UInt32, _ body: [UInt8]) -> [UInt8] { binary(id, body) }
    static func binary(_ id: UInt32, _ body: [UInt8]) -> [UInt8] { Self.id(id) + vint(UInt64(body.count)) + body }
    static func string(_ id: UInt32, _ s: String) -> [UInt8] { binary(id, Array(s.utf8)) }

    /// An unsigned integer in the fewest bytes (at least one).
    static func uint(_ id: UInt32, _ value: UInt64) -> [UInt8] {
        var n = 1
        while n < 8 && value >> (8 * UInt64(n)) != 0 { n += 1 }
        return binary(id, (0..<n).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(n - 1 - $0))) })
    }

    /// An unsigned integer in 8 bytes, so that its element keeps its size whatever the value.
    static func fixedUInt(_ id: UInt32, _ value: UInt64) -> [UInt8] {
        binary(id, (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(7 - $0))) })
    }

    /// A signed integer in 8 bytes (two's complement; the `date` type).
    static func int8(_ id: UInt32, _ value: Int64) -> [UInt8] { fixedUInt(id, UInt64(bitPattern: value)) }

    /// An 8-byte IEEE 754 float, big-endian.
    static func float(_ id: UInt32, _ value: Double) -> [UInt8] { fixedUInt(id, value.bitPattern) }
}
