import CPNGWriter
import Foundation

/// Encodes raw pixel rows as an 8-bit RGB PNG (colour type 2, no alpha) with libpng.
///
/// libpng's `longjmp` error path stays inside the `CPNGWriter` C wrapper; every libpng error
/// comes back as `CaptureError.pngEncoding` with libpng's message.
struct PNGEncoder: Sendable {
    /// Byte layout of one input pixel.
    enum Layout: Sendable {
        case rgb, bgrx, rgbx, xrgb, xbgr
        var c: cpng_format {
            switch self {
            case .rgb: CPNG_RGB
            case .bgrx: CPNG_BGRX
            case .rgbx: CPNG_RGBX
            case .xrgb: CPNG_XRGB
            case .xbgr: CPNG_XBGR
            }
        }
    }

    /// zlib level 0 (store) … 9 (smallest).
    let level: Int32

    /// PNG filter and zlib strategy for a level. Screen content is mostly flat areas and
    /// text: the SUB filter with run-length matching is several times faster than adaptive
    /// filters at level 6 and compresses such frames within ~20 %.
    private var filters: Int32 { level <= 2 ? 0x10 /* PNG_FILTER_SUB */ : 0xF8 /* PNG_ALL_FILTERS */ }
    private var strategy: Int32 { level <= 1 ? 3 /* Z_RLE */ : 0 /* Z_DEFAULT_STRATEGY */ }

    /// Encodes `height` rows of `width` pixels starting at `pixels`, rows `stride` bytes apart.
    /// - Throws: `CaptureError.pngEncoding` with libpng's message.
    func encode(pixels: UnsafeRawPointer, width: Int, height: Int, stride: Int, layout: Layout) throws -> Data {
        var result = cpng_result()
        let status = cpng_encode(pixels.assumingMemoryBound(to: UInt8.self), Int32(width), Int32(height), stride,
                                 layout.c, level, strategy, filters, &result)
        defer { cpng_result_free(&result) }
        guard status == 0, let data = result.data else {
            let message = withUnsafeBytes(of: result.error) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            throw CaptureError(.pngEncoding, "libpng could not encode a \(width)x\(height) frame: \(message)")
        }
        return Data(bytes: data, count: result.size)
    }
}
