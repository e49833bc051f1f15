import CAOM

/// An AV1 decoder (libaom) for one stream; owns its `aom_codec_ctx_t`. Used on the reviewer's
/// machine (stills, export) and in tests. Packets must come in order from a keyframe on.
/// Not thread-safe. Source: libaom `examples/simple_decoder.c`, `aom_decoder.h`.
public final class AV1Decoder {
    private let context: UnsafeMutablePointer<aom_codec_ctx_t>

    /// - Throws: ``VideoError`` `.codec` when libaom cannot start a decoder.
    public init() throws(VideoError) {
        context = .allocate(capacity: 1)
        context.initialize(to: aom_codec_ctx_t())
        var cfg = aom_codec_dec_cfg_t(threads: 1, w: 0, h: 0, allow_lowbitdepth: 1)
        let rc = custos_aom_dec_init(context, &cfg)
        guard rc == AOM_CODEC_OK else {
            context.deallocate()
            throw VideoError(.codec, "libaom: cannot start an AV1 decoder: \(String(cString: aom_codec_err_to_string(rc)))")
        }
    }

    deinit {
        aom_codec_destroy(context)
        context.deallocate()
    }

    /// Decodes one packet (temporal unit) into the pictures it shows (one for our streams).
    /// - Throws: ``VideoError`` `.corruptPacket` naming libaom's detail when the bytes do not decode.
    public func decode(_ packet: [UInt8]) throws(VideoError) -> [I420Frame] {
        let rc = packet.withUnsafeBufferPointer { aom_codec_decode(context, $0.baseAddress, $0.count, nil) }
        guard rc == AOM_CODEC_OK else {
            throw VideoError(.corruptPacket, "AV1 packet of \(packet.count) bytes does not decode: "
                             + "\(String(cString: aom_codec_err_to_string(rc)))\(AV1Encoder.detail(context))")
        }
        var out: [I420Frame] = []
        var iterator: aom_codec_iter_t? = nil
        while let img = aom_codec_get_frame(context, &iterator) {
            let i = img.pointee
            guard i.fmt == AOM_IMG_FMT_I420, i.bit_depth == 8 else {
                throw VideoError(.corruptPacket, "AV1 picture format \(i.fmt.rawValue) at \(i.bit_depth) bits is not 8-bit I420")
            }
            let frame = try I420Frame(width: Int(i.d_w), height: Int(i.d_h))
            frame.copy(y: i.planes.0!, yStride: Int(i.stride.0), u: i.planes.1!, v: i.planes.2!, chromaStride: Int(i.stride.1))
            out.append(frame)
        }
        return out
    }
}
