import CAOM

/// One encoded AV1 temporal unit (OBUs in the "low overhead bitstream format", AV1 spec
/// §5.2 / Annex B not used): what a WebCodecs `EncodedVideoChunk` or a WebM SimpleBlock holds.
public struct VideoPacket: Sendable, Equatable {
    /// The temporal unit's bytes (starts with a temporal delimiter OBU).
    public var data: [UInt8]
    /// Whether it is a keyframe (decodable on its own; a group of pictures starts here).
    public var isKeyframe: Bool
    /// Presentation time in the encoder's time base (milliseconds).
    public var timeMs: Int64
}

/// Encoder settings (agent config keys are mapped onto these by the agent).
public struct AV1EncoderSettings: Sendable, Equatable {
    /// libaom `--cpu-used` in real-time mode, 0…10 (10 fastest).
    public var cpuUsed: Int = 10
    /// Constant-quality level 0…63 (`--end-usage=q --cq-level`): lower is better and bigger.
    public var cqLevel: Int = 30
    /// Encoder threads (1 keeps memory and CPU of an endpoint agent small).
    public var threads: Int = 1

    public init(cpuUsed: Int = 10, cqLevel: Int = 30, threads: Int = 1) {
        self.cpuUsed = cpuUsed
        self.cqLevel = cqLevel
        self.threads = threads
    }
}

/// An AV1 encoder (libaom, real-time usage, `tune-content=screen`: palette and intra block copy
/// suit desktops) for one stream of one size; owns its `aom_codec_ctx_t`. Frames go in one at a
/// time with no look-ahead (`lag-in-frames=0`), so every call returns the packet of the frame
/// just given: nothing waits in the encoder when the agent is killed.
///
/// Keyframes are the caller's decision (``encode(_:timeMs:keyframe:)``): the encoder never adds
/// one on its own. Colour is signalled in the sequence header as BT.601 limited range (what
/// ``I420Frame`` holds; AV1 spec §6.4.2 color_config).
///
/// Not thread-safe; encoding blocks (≈ 10 ms per 1920×1080 frame): call it from a thread of
/// its own, not the Swift cooperative pool. Source: libaom `examples/simple_encoder.c`, `aomcx.h`.
public final class AV1Encoder {
    public let width: Int
    public let height: Int
    public let settings: AV1EncoderSettings
    private let context: UnsafeMutablePointer<aom_codec_ctx_t>
    private var framesIn = 0

    /// The picture sides, in pixels, this encoder takes (AV1 allows 1…65536; libaom's I420
    /// input needs 2 for chroma, and 16384 bounds memory).
    public static let sideRange = 2...16384

    /// - Throws: ``VideoError`` `.invalidArgument` for a bad size or setting, `.codec` when libaom refuses.
    public init(width: Int, height: Int, settings: AV1EncoderSettings = AV1EncoderSettings()) throws(VideoError) {
        guard Self.sideRange.contains(width), Self.sideRange.contains(height) else {
            throw VideoError(.invalidArgument, "AV1 encoder \(width)x\(height): each side must be "
                             + "\(Self.sideRange.lowerBound) to \(Self.sideRange.upperBound) pixels")
        }
        guard (0...10).contains(settings.cpuUsed), (0...63).contains(settings.cqLevel), (1...8).contains(settings.threads) else {
            throw VideoError(.invalidArgument, "AV1 encoder settings \(settings): cpu-used 0-10, cq-level 0-63, threads 1-8")
        }
        self.width = width
        self.height = height
        self.settings = settings
        var cfg = aom_codec_enc_cfg_t()
        var rc = custos_aom_enc_config_default(&cfg, UInt32(AOM_USAGE_REALTIME))
        guard rc == AOM_CODEC_OK else {
            throw VideoError(.codec, "libaom: no default real-time configuration: \(String(cString: aom_codec_err_to_string(rc)))")
        }
        cfg.g_w = UInt32(width)
        cfg.g_h = UInt32(height)
        cfg.g_timebase = aom_rational(num: 1, den: 1000)  // ms
        cfg.g_threads = UInt32(settings.threads)
        cfg.g_lag_in_frames = 0
        cfg.g_forced_max_frame_width = UInt32(width)
        cfg.g_forced_max_frame_height = UInt32(height)
        cfg.rc_resize_mode = 0
        cfg.rc_superres_mode = AOM_SUPERRES_NONE
        cfg.rc_end_usage = AOM_Q
        cfg.rc_dropframe_thresh = 0
        cfg.kf_mode = AOM_KF_DISABLED  // keyframes only when asked (the agent's policy)
        cfg.kf_min_dist = 0
        cfg.kf_max_dist = UInt32(Int32.max)
        context = .allocate(capacity: 1)
        context.initialize(to: aom_codec_ctx_t())
        rc = custos_aom_enc_init(context, &cfg)
        guard rc == AOM_CODEC_OK else {
            let detail = Self.detail(context)
            context.deallocate()
            throw VideoError(.codec, "libaom: cannot start an AV1 encoder for \(width)x\(height): "
                             + "\(String(cString: aom_codec_err_to_string(rc)))\(detail)")
        }
        let controls: [(Int32, Int32, String)] = [
            (Int32(AOME_SET_CPUUSED.rawValue), Int32(settings.cpuUsed), "cpu-used"),
            (Int32(AOME_SET_CQ_LEVEL.rawValue), Int32(settings.cqLevel), "cq-level"),
            (Int32(AV1E_SET_TUNE_CONTENT.rawValue), Int32(AOM_CONTENT_SCREEN.rawValue), "tune-content=screen"),
            (Int32(AV1E_SET_COLOR_PRIMARIES.rawValue), Int32(AOM_CICP_CP_BT_601.rawValue), "color-primaries"),
            (Int32(AV1E_SET_TRANSFER_CHARACTERISTICS.rawValue), Int32(AOM_CICP_TC_BT_601.rawValue), "transfer-characteristics"),
            (Int32(AV1E_SET_MATRIX_COEFFICIENTS.rawValue), Int32(AOM_CICP_MC_BT_601.rawValue), "matrix-coefficients"),
            (Int32(AV1E_SET_COLOR_RANGE.rawValue), 0, "color-range=studio"),
            // Tools that cost memory or CPU and gain little on desktops at 1 frame/s; each
            // switched off keeps the agent's peak RSS down (Benchmarks/video.sh).
            (Int32(AV1E_SET_ENABLE_RESTORATION.rawValue), 0, "enable-restoration=0"),
            (Int32(AV1E_SET_ENABLE_GLOBAL_MOTION.rawValue), 0, "enable-global-motion=0"),
            (Int32(AV1E_SET_ENABLE_WARPED_MOTION.rawValue), 0, "enable-warped-motion=0"),
            (Int32(AV1E_SET_ENABLE_OBMC.rawValue), 0, "enable-obmc=0"),
            (Int32(AV1E_SET_ENABLE_TPL_MODEL.rawValue), 0, "enable-tpl-model=0"),
            (Int32(AV1E_SET_ENABLE_SUPERRES.rawValue), 0, "enable-superres=0"),
            (Int32(AV1E_SET_MAX_REFERENCE_FRAMES.rawValue), 3, "max-reference-frames=3"),
            // 64×64 superblocks: libaom picks 128×128 at 1080p, whose frame borders (superblock
            // size + 32 pixels on each side of every reference picture) cost about 5 MB more
            // at the same bytes out (measured with libaom 3.6 on a text-like 1920×1080 picture).
            (Int32(AV1E_SET_SUPERBLOCK_SIZE.rawValue), Int32(AOM_SUPERBLOCK_SIZE_64X64.rawValue), "sb-size=64"),
        ]
        for (id, value, name) in controls {
            let rc = custos_aom_control_int(context, id, value)
            guard rc == AOM_CODEC_OK else {
                let detail = Self.detail(context)
                aom_codec_destroy(context)
                context.deallocate()
                throw VideoError(.codec, "libaom: control \(name)=\(value) refused: \(String(cString: aom_codec_err_to_string(rc)))\(detail)")
            }
        }
    }

    deinit {
        aom_codec_destroy(context)
        context.deallocate()
    }

    /// Encodes one picture shown at `timeMs` (ms; must increase from call to call).
    /// - Parameter keyframe: force a keyframe (the first frame always is one).
    /// - Returns: the packet(s) of this frame (one temporal unit; empty only if libaom dropped it).
    /// - Throws: ``VideoError`` `.invalidArgument` when the picture's size differs, `.codec` when libaom fails.
    public func encode(_ frame: I420Frame, timeMs: Int64, keyframe: Bool = false) throws(VideoError) -> [VideoPacket] {
        guard frame.width == width, frame.height == height else {
            throw VideoError(.invalidArgument, "AV1 encoder is \(width)x\(height); got a \(frame.width)x\(frame.height) frame")
        }
        // Wrap the picture's planes in place (I420Frame is laid out for a stride alignment of 2).
        var image = aom_image_t()
        guard aom_img_wrap(&image, AOM_IMG_FMT_I420, UInt32(width), UInt32(height), 2, frame.storage) != nil,
              Int(image.stride.0) == frame.yStride, Int(image.stride.1) == frame.chromaStride,
              image.planes.1 == frame.u, image.planes.2 == frame.v else {
            throw VideoError(.codec, "libaom: cannot wrap the \(width)x\(height) picture's planes")
        }
        let flags: aom_enc_frame_flags_t = keyframe || framesIn == 0 ? aom_enc_frame_flags_t(AOM_EFLAG_FORCE_KF) : 0
        let rc = aom_codec_encode(context, &image, timeMs, 1, flags)
        guard rc == AOM_CODEC_OK else {
            throw VideoError(.codec, "libaom: encoding the \(width)x\(height) frame at \(timeMs) ms failed: "
                             + "\(String(cString: aom_codec_err_to_string(rc)))\(Self.detail(context))")
        }
        framesIn += 1
        return drain()
    }

    /// Ends the stream: returns any packet libaom still holds (none with no look-ahead).
    /// - Throws: ``VideoError`` `.codec`.
    public func flush() throws(VideoError) -> [VideoPacket] {
        let rc = aom_codec_encode(context, nil, 0, 0, 0)
        guard rc == AOM_CODEC_OK else {
            throw VideoError(.codec, "libaom: flushing failed: \(String(cString: aom_codec_err_to_string(rc)))\(Self.detail(context))")
        }
        return drain()
    }

    private func drain() -> [VideoPacket] {
        var out: [VideoPacket] = []
        var iterator: aom_codec_iter_t? = nil
        while let pkt = aom_codec_get_cx_data(context, &iterator) {
            guard pkt.pointee.kind == AOM_CODEC_CX_FRAME_PKT else { continue }
            let f = pkt.pointee.data.frame
            let bytes = [UInt8](UnsafeRawBufferPointer(start: f.buf, count: f.sz))
            out.append(VideoPacket(data: bytes, isKeyframe: f.flags & UInt32(AOM_FRAME_IS_KEY) != 0, timeMs: f.pts))
        }
        return out
    }

    static func detail(_ context: UnsafeMutablePointer<aom_codec_ctx_t>) -> String {
        guard let d = aom_codec_error_detail(context) else { return "" }
        return " (\(String(cString: d)))"
    }
}
