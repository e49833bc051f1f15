/// One OBU (open bitstream unit) of an AV1 temporal unit: AV1 Bitstream & Decoding Process
/// Specification §5.3 (obu_header, optional obu_size as leb128, payload).
public struct AV1OBU: Sendable, Equatable {
    /// `obu_type` (AV1 spec §6.2.2): 1 sequence header, 2 temporal delimiter, 3 frame header,
    /// 4 tile group, 5 metadata, 6 frame, 7 redundant frame header, 8 tile list, 15 padding.
    public var type: UInt8
    /// Byte offsets in the temporal unit: the whole OBU (header, size field, payload) and its payload.
    public var range: Range<Int>
    public var payload: Range<Int>

    public static let sequenceHeader: UInt8 = 1
    public static let temporalDelimiter: UInt8 = 2
    public static let frameHeader: UInt8 = 3
    public static let frame: UInt8 = 6
    public static let tileList: UInt8 = 8
    public static let padding: UInt8 = 15
}

/// An AV1 temporal unit (one packet of ``AV1Encoder``; one `EncodedVideoChunk` for WebCodecs) split
/// into its OBUs, in the low-overhead bitstream format (AV1 spec §5.2: each OBU has
/// `obu_has_size_field` = 1, except that the last may fill the rest of the unit).
///
/// What the WebM muxer and the admin's export need from it: whether it is a keyframe (its first
/// frame header has `frame_type` KEY_FRAME, AV1 spec §5.9.2), its sequence header, and its bytes
/// as a Matroska Block carries them (the Matroska AV1 mapping, "Block Data": no Temporal
/// Delimiter or Padding OBUs; Tile List OBUs are not allowed at all).
public struct AV1TemporalUnit: Sendable {
    public let bytes: [UInt8]
    public let obus: [AV1OBU]

    /// - Throws: ``VideoError`` `.corruptPacket` naming the byte offset when an OBU header, its
    ///   leb128 size or its payload runs past the end, or the forbidden bit is set.
    public init(_ bytes: [UInt8]) throws(VideoError) {
        self.bytes = bytes
        var obus: [AV1OBU] = []
        var i = 0
        while i < bytes.count {
            let header = bytes[i]
            guard header & 0x80 == 0 else {
                throw VideoError(.corruptPacket, "AV1 temporal unit of \(bytes.count) bytes: OBU at byte \(i) has the forbidden bit set")
            }
            let type = (header >> 3) & 0x0F
            let headerLength = header & 0x04 != 0 ? 2 : 1
            var p = i + headerLength
            guard p <= bytes.count else {
                throw VideoError(.corruptPacket, "AV1 temporal unit of \(bytes.count) bytes: OBU header at byte \(i) is cut off")
            }
            let size: Int
            if header & 0x02 != 0 {
                guard let (value, length) = Self.leb128(bytes, at: p) else {
                    throw VideoError(.corruptPacket, "AV1 temporal unit of \(bytes.count) bytes: obu_size at byte \(p) is not a leb128 value")
                }
                size = value
                p += length
            } else {
                size = bytes.count - p
            }
            guard size <= bytes.count - p else {
                throw VideoError(.corruptPacket, "AV1 temporal unit of \(bytes.count) bytes: OBU at byte \(i) claims \(size) payload bytes, \(bytes.count - p) are left")
            }
            obus.append(AV1OBU(type: type, range: i..<(p + size), payload: p..<(p + size)))
            i = p + size
        }
        guard !obus.isEmpty else { throw VideoError(.corruptPacket, "AV1 temporal unit is empty") }
        self.obus = obus
    }

    /// leb128 (AV1 spec §4.10.5): at most 8 bytes, value < 2³²; nil when cut off or too large.
    static func leb128(_ bytes: [UInt8], at start: Int) -> (value: Int, length: Int)? {
        var value: UInt64 = 0
        for k in 0..<8 {
            guard start + k < bytes.count else { return nil }
            let b = bytes[start + k]
            value |= UInt64(b & 0x7F) << (7 * UInt64(k))
            if b & 0x80 == 0 { return value <= UInt64(UInt32.max) ? (Int(value), k + 1) : nil }
        }
        return nil
    }

    /// leb128 of `value` in the fewest bytes.
    static func leb128(_ value: Int) -> [UInt8] {
        var v = value, out: [UInt8] = []
        repeat {
            var b = UInt8(v & 0x7F)
            v >>= 7
            if v != 0 { b |= 0x80 }
            out.append(b)
        } while v != 0
        return out
    }

    /// The first sequence header OBU, parsed; nil when the unit has none.
    /// - Throws: ``VideoError`` `.corruptPacket` when it is there but cannot be parsed.
    public func sequenceHeader() throws(VideoError) -> AV1SequenceHeader? {
        guard let obu = obus.first(where: { $0.type == AV1OBU.sequenceHeader }) else { return nil }
        let header = bytes[obu.range.lowerBound]
        let extensionByte = header & 0x04 != 0 ? bytes[obu.range.lowerBound + 1] : nil
        return try AV1SequenceHeader(obuHeader: header, extensionByte: extensionByte, payload: Array(bytes[obu.payload]))
    }

    /// Whether the first frame (the first Frame or Frame Header OBU) is a shown KEY_FRAME:
    /// `show_existing_frame` = 0 and `frame_type` = 0, the first bits of uncompressed_header()
    /// (AV1 spec §5.9.2; a sequence with `reduced_still_picture_header` has only key frames, so
    /// its frame header starts elsewhere: `reducedStillPicture` says which).
    public func isKeyFrame(reducedStillPicture: Bool = false) -> Bool {
        guard let f = obus.first(where: { $0.type == AV1OBU.frame || $0.type == AV1OBU.frameHeader }) else { return false }
        if reducedStillPicture { return true }
        guard !f.payload.isEmpty else { return false }
        let first = bytes[f.payload.lowerBound]
        return first & 0x80 == 0 && (first >> 5) & 0x03 == 0
    }

    /// The bytes a Matroska Block carries: every OBU except Temporal Delimiters and Padding, unchanged.
    /// - Throws: ``VideoError`` `.corruptPacket` for a Tile List OBU (not allowed in Matroska) or
    ///   when nothing but delimiters and padding is left.
    public func blockData() throws(VideoError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        for obu in obus {
            switch obu.type {
            case AV1OBU.temporalDelimiter, AV1OBU.padding: continue
            case AV1OBU.tileList:
                throw VideoError(.corruptPacket, "AV1 temporal unit holds a Tile List OBU, which Matroska does not allow")
            default: out += bytes[obu.range]
            }
        }
        guard !out.isEmpty else { throw VideoError(.corruptPacket, "AV1 temporal unit holds no frame, only delimiters or padding") }
        return out
    }
}

/// The fields of an AV1 sequence header OBU (AV1 spec §5.5) that a container needs, and the
/// configuration records built from it.
///
/// - ``av1C``: the AV1CodecConfigurationRecord of the AV1 Codec ISO Media File Format Binding
///   §2.3.3, which Matroska's CodecPrivate for `V_AV1` also is (Matroska AV1 codec mapping,
///   "CodecPrivate"): marker 1, version 1, seq_profile, seq_level_idx_0, seq_tier_0,
///   high_bitdepth, twelve_bit, monochrome, chroma_subsampling_x/y, chroma_sample_position,
///   no initial presentation delay, then this sequence header OBU (with its size field).
/// - ``codecString``: the `av01.P.LLT.DD` string of AV1-ISOBMFF §5 (WebCodecs' `codec`).
public struct AV1SequenceHeader: Sendable, Equatable {
    public var profile: Int
    public var levelIndex0: Int
    public var tier0: Int
    public var reducedStillPicture: Bool
    /// `max_frame_width_minus_1 + 1`, `max_frame_height_minus_1 + 1`: Matroska's PixelWidth/Height.
    public var maxWidth: Int
    public var maxHeight: Int
    public var bitDepth: Int
    public var highBitDepth: Bool
    public var twelveBit: Bool
    public var monochrome: Bool
    public var subsamplingX: Bool
    public var subsamplingY: Bool
    public var chromaSamplePosition: Int
    /// CICP values (ITU-T H.273), nil when `color_description_present_flag` is 0.
    public var colorPrimaries: Int?
    public var transferCharacteristics: Int?
    public var matrixCoefficients: Int?
    /// `color_range`: true for full range (0–255), false for studio (16–235).
    public var fullRange: Bool
    /// The OBU's payload bytes (two sequence headers of one Matroska track must be bit-identical).
    public var payload: [UInt8]
    /// The whole OBU with `obu_has_size_field` = 1: header, leb128 size, payload.
    public var obu: [UInt8]

    /// Parses a sequence header OBU's payload.
    /// - Throws: ``VideoError`` `.corruptPacket` when the payload ends early.
    init(obuHeader: UInt8, extensionByte: UInt8?, payload: [UInt8]) throws(VideoError) {
        var r = BitReader(payload)
        profile = try r.bits(3)
        _ = try r.bits(1)  // still_picture
        reducedStillPicture = try r.bits(1) == 1
        if reducedStillPicture {
            levelIndex0 = try r.bits(5)
            tier0 = 0
        } else {
            var decoderModelInfo = false
            var bufferDelayLength = 0
            if try r.bits(1) == 1 {  // timing_info_present_flag
                _ = try r.bits(32)  // num_units_in_display_tick
                _ = try r.bits(32)  // time_scale
                if try r.bits(1) == 1 { try r.uvlc() }  // equal_picture_interval, num_ticks_per_picture_minus_1
                decoderModelInfo = try r.bits(1) == 1
                if decoderModelInfo {
                    bufferDelayLength = try r.bits(5) + 1
                    _ = try r.bits(32)  // num_units_in_decoding_tick
                    _ = try r.bits(5)   // buffer_removal_time_length_minus_1
                    _ = try r.bits(5)   // frame_presentation_time_length_minus_1
                }
            }
            let initialDisplayDelay = try r.bits(1) == 1
            let operatingPoints = try r.bits(5) + 1
            var level0 = 0, tier = 0
            for i in 0..<operatingPoints {
                _ = try r.bits(12)  // operating_point_idc
                let level = try r.bits(5)
                let t = try level > 7 ? r.bits(1) : 0
                if i == 0 { (level0, tier) = (level, t) }
                if decoderModelInfo, try r.bits(1) == 1 {  // decoder_model_present_for_this_op
                    _ = try r.bits(bufferDelayLength)  // decoder_buffer_delay
                    _ = try r.bits(bufferDelayLength)  // encoder_buffer_delay
                    _ = try r.bits(1)                  // low_delay_mode_flag
                }
                if initialDisplayDelay, try r.bits(1) == 1 { _ = try r.bits(4) }
            }
            levelIndex0 = level0
            tier0 = tier
        }
        let widthBits = try r.bits(4) + 1
        let heightBits = try r.bits(4) + 1
        maxWidth = try r.bits(widthBits) + 1
        maxHeight = try r.bits(heightBits) + 1
        if !reducedStillPicture, try r.bits(1) == 1 {  // frame_id_numbers_present_flag
            _ = try r.bits(4)
            _ = try r.bits(3)
        }
        _ = try r.bits(3)  // use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter
        if !reducedStillPicture {
            _ = try r.bits(4)  // interintra, masked compound, warped motion, dual filter
            let orderHint = try r.bits(1) == 1
            if orderHint { _ = try r.bits(2) }  // enable_jnt_comp, enable_ref_frame_mvs
            let forceScreenContent = try r.bits(1) == 1 ? 2 : r.bits(1)  // 2 = SELECT_SCREEN_CONTENT_TOOLS
            if forceScreenContent > 0, try r.bits(1) == 0 { _ = try r.bits(1) }  // seq_choose_integer_mv, seq_force_integer_mv
            if orderHint { _ = try r.bits(3) }
        }
        _ = try r.bits(3)  // enable_superres, enable_cdef, enable_restoration
        // color_config() (AV1 spec §5.5.2).
        highBitDepth = try r.bits(1) == 1
        twelveBit = try profile == 2 && highBitDepth ? r.bits(1) == 1 : false
        bitDepth = twelveBit ? 12 : (highBitDepth ? 10 : 8)
        monochrome = try profile == 1 ? false : r.bits(1) == 1
        if try r.bits(1) == 1 {
            colorPrimaries = try r.bits(8)
            transferCharacteristics = try r.bits(8)
            matrixCoefficients = try r.bits(8)
        }
        chromaSamplePosition = 0
        if monochrome {
            fullRange = try r.bits(1) == 1
            (subsamplingX, subsamplingY) = (true, true)
        } else if colorPrimaries == 1, transferCharacteristics == 13, matrixCoefficients == 0 {  // BT.709, sRGB, identity
            fullRange = true
            (subsamplingX, subsamplingY) = (false, false)
        } else {
            fullRange = try r.bits(1) == 1
            switch profile {
            case 0: (subsamplingX, subsamplingY) = (true, true)
            case 1: (subsamplingX, subsamplingY) = (false, false)
            default:
                if bitDepth == 12 {
                    subsamplingX = try r.bits(1) == 1
                    subsamplingY = try subsamplingX ? r.bits(1) == 1 : false
                } else {
                    (subsamplingX, subsamplingY) = (true, false)
                }
            }
            if subsamplingX && subsamplingY { chromaSamplePosition = try r.bits(2) }
        }
        self.payload = payload
        obu = [obuHeader | 0x02] + (extensionByte.map { [$0] } ?? []) + AV1TemporalUnit.leb128(payload.count) + payload
    }

    /// AV1CodecConfigurationRecord (AV1-ISOBMFF §2.3.3; Matroska `V_AV1` CodecPrivate): 4 bytes
    /// then this sequence header OBU.
    public var av1C: [UInt8] {
        let b1 = UInt8(profile & 0x07) << 5 | UInt8(levelIndex0 & 0x1F)
        var b2 = UInt8(tier0 & 1) << 7
        if highBitDepth { b2 |= 0x40 }
        if twelveBit { b2 |= 0x20 }
        if monochrome { b2 |= 0x10 }
        if subsamplingX { b2 |= 0x08 }
        if subsamplingY { b2 |= 0x04 }
        b2 |= UInt8(chromaSamplePosition & 0x03)
        return [0x81, b1, b2, 0x00] + obu
    }

    /// `av01.<profile>.<level><tier>.<bit depth>` (AV1-ISOBMFF §5, WebCodecs AV1 registration),
    /// e.g. `av01.0.08M.08`.
    public var codecString: String {
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "av01.\(profile).\(two(levelIndex0))\(tier0 == 1 ? "H" : "M").\(two(bitDepth))"
    }
}

/// Reads bits most significant first (AV1 spec §4.10.2 f(n)).
private struct BitReader {
    let bytes: [UInt8]
    var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func bits(_ n: Int) throws(VideoError) -> Int {
        var value = 0
        for _ in 0..<n {
            guard position / 8 < bytes.count else {
                throw VideoError(.corruptPacket, "AV1 sequence header of \(bytes.count) bytes ends early (bit \(position))")
            }
            value = value << 1 | Int(bytes[position / 8] >> (7 - UInt8(position % 8)) & 1)
            position += 1
        }
        return value
    }

    /// uvlc() (AV1 spec §4.10.3): skipped, only its length matters here.
    mutating func uvlc() throws(VideoError) {
        var leadingZeros = 0
        while try bits(1) == 0 {
            leadingZeros += 1
            guard leadingZeros < 32 else { return }
        }
        _ = try bits(leadingZeros)
    }
}
