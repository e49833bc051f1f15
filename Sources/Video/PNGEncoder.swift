import CPNGWriter
import Foundation

/// PNG settings: encodes raw pixel rows as an 8-bit RGB PNG (colour type 2, no alpha; PNG
/// specification, W3C 2003, section 11.2.2) with libpng.
///
/// libpng's `longjmp` error path stays inside the `CPNGWriter` C wrapper; every libpng error
/// comes back as ``VideoError`` `.codec` with libpng's message. Used for the agent's PNG frames
/// (`screen-format=png`) and the admin's stills decoded from video.
public struct PNGEncoder: Sendable {
    /// zlib level 0 (store) … 9 (smallest).
    public let level: Int32

    /// - Parameter level: zlib level 0…9 (clamped).
    public init(level: Int32) { self.level = min(max(level, 0), 9) }

    /// PNG filter and zlib strategy for a level. Screen content is mostly flat areas and
    /// text: the SUB filter with run-length matching is several times faster than adaptive
    /// filters at level 6 and compresses such frames within ~20 %.
    private var filters: Int32 { level <= 2 ? 0x10 /* PNG_FILTER_SUB */ : 0xF8 /* PNG_ALL_FILTERS */ }
    private var strategy: Int32 { level <= 1 ? 3 /* Z_RLE */ : 0 /* Z_DEFAULT_STRATEGY */ }

    /// Starts a `width`×`height` image whose rows arrive in `layout` (feed them with
    /// `PNGStream.write`, then `finish`).
    /// - Throws: ``VideoError`` `.codec` when libpng cannot start (memory, a bad size).
    public func begin(width: Int, height: Int, layout: RGBLayout) throws(VideoError) -> PNGStream {
        try PNGStream(width: width, height: height, layout: layout, level: level, strategy: strategy, filters: filters)
    }
}

extension RGBLayout {
    var png: cpng_format {
        switch self {
        case .rgb: CPNG_RGB
        case .bgrx: CPNG_BGRX
        case .rgbx: CPNG_RGBX
        case .xrgb: CPNG_XRGB
        case .xbgr: CPNG_XBGR
        }
    }
}

/// One PNG being encoded row by row: owns the `cpng_stream` (libpng write struct and the
/// growing output buffer) and frees it in `deinit`. Lets a frame be encoded strip by strip,
/// so its raw pixels never have to be held whole.
public final class PNGStream {
    private let stream: OpaquePointer
    private let width: Int, height: Int

    fileprivate init(width: Int, height: Int, layout: RGBLayout, level: Int32, strategy: Int32,
                     filters: Int32) throws(VideoError) {
        guard let stream = cpng_stream_begin(Int32(width), Int32(height), layout.png, level, strategy, filters) else {
            throw VideoError(.codec, "libpng could not start a \(width)x\(height) frame: out of memory")
        }
        self.stream = stream
        self.width = width
        self.height = height
        try check(status: 0)
    }

    deinit { cpng_stream_free(stream) }

    private var message: String { String(cString: cpng_stream_error(stream)) }

    private func check(status: Int32) throws(VideoError) {
        let text = message
        guard status == 0, text.isEmpty else {
            throw VideoError(.codec, "libpng could not encode a \(width)x\(height) frame: \(text)")
        }
    }

    /// Appends `rows` rows starting at `pixels`, each `stride` bytes after the previous.
    /// - Throws: ``VideoError`` `.codec` (libpng's message, or more rows than the height).
    public func write(rows: Int, from pixels: UnsafeRawPointer, stride: Int) throws(VideoError) {
        try check(status: cpng_stream_write_rows(stream, pixels.assumingMemoryBound(to: UInt8.self), Int32(rows), stride))
    }

    /// Ends the image and returns the PNG bytes (handed over without a copy).
    /// - Throws: ``VideoError`` `.codec` (libpng's message, or missing rows).
    public func finish() throws(VideoError) -> Data {
        var data: UnsafeMutablePointer<UInt8>?
        var size = 0
        try check(status: cpng_stream_finish(stream, &data, &size))
        guard let data else { throw VideoError(.codec, "libpng returned no data for a \(width)x\(height) frame") }
        return Data(bytesNoCopy: data, count: size, deallocator: .free)
    }
}
