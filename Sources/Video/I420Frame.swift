import CYUV

/// Byte order of one pixel of an RGB source row, as it lies in memory (X11 visuals of depth
/// 24/32 are one of the four 4-byte orders; `rgb` is 3 bytes R, G, B).
public enum RGBLayout: Sendable, Equatable {
    case bgrx, rgbx, xrgb, xbgr, rgb

    /// Bytes per pixel.
    public var bytesPerPixel: Int { self == .rgb ? 3 : 4 }
}

/// A planar YUV 4:2:0 picture (I420: a Y plane, then U and V planes of ⌈width/2⌉×⌈height/2⌉
/// samples), 8 bits per sample, BT.601 limited range ("studio swing": Y 16–235), as libyuv's
/// `ARGBToI420` writes it. The encoder's input and the decoder's output.
///
/// Owns its planes in one allocation laid out exactly as libaom's `aom_img_wrap` with a stride
/// alignment of 2 expects (width and height rounded up to even: `yStride` = even width, chroma
/// stride = `yStride / 2`), so the encoder reads the picture in place, with no copy. 3.1 MB at
/// 1920×1080, reused frame after frame. Not thread-safe.
public final class I420Frame {
    public let width: Int
    public let height: Int
    /// Chroma plane size in samples.
    public let chromaWidth: Int
    public let chromaHeight: Int
    /// Bytes from one row to the next: Y plane (`width` rounded up to even), U and V planes.
    public let yStride: Int
    public let chromaStride: Int
    let storage: UnsafeMutablePointer<UInt8>
    /// Rows allocated for the Y plane (`height` rounded up to even).
    let paddedHeight: Int

    /// - Throws: ``VideoError`` `.invalidArgument` for a size outside 2…16384 pixels per side.
    public init(width: Int, height: Int) throws(VideoError) {
        guard (2...16384).contains(width), (2...16384).contains(height) else {
            throw VideoError(.invalidArgument, "video frame \(width)x\(height): each side must be 2 to 16384 pixels")
        }
        self.width = width
        self.height = height
        chromaWidth = (width + 1) / 2
        chromaHeight = (height + 1) / 2
        yStride = chromaWidth * 2
        chromaStride = chromaWidth
        paddedHeight = chromaHeight * 2
        let count = yStride * paddedHeight + 2 * chromaStride * chromaHeight
        storage = .allocate(capacity: count)
        storage.initialize(repeating: 0, count: count)
    }

    deinit { storage.deallocate() }

    /// The Y plane (stride `yStride`), U plane and V plane (stride `chromaStride`).
    public var y: UnsafeMutablePointer<UInt8> { storage }
    public var u: UnsafeMutablePointer<UInt8> { storage + yStride * paddedHeight }
    public var v: UnsafeMutablePointer<UInt8> { storage + yStride * paddedHeight + chromaStride * chromaHeight }

    /// Converts `rowCount` rows of RGB pixels into rows `firstRow ..< firstRow + rowCount` of
    /// this picture (BT.601 limited range). Frames may be filled strip by strip, top to bottom.
    /// - Parameters:
    ///   - pixels: the first source row; each row holds `width` pixels in `layout`.
    ///   - stride: bytes from one source row to the next (≥ width × bytesPerPixel; X rows may be padded).
    ///   - firstRow: must be even except when it is the last row (4:2:0 pairs rows).
    /// - Throws: ``VideoError`` `.invalidArgument` when the rows do not fit or `firstRow` is odd.
    public func write(rows pixels: UnsafeRawPointer, firstRow: Int, rowCount: Int, stride: Int,
                      layout: RGBLayout) throws(VideoError) {
        guard firstRow >= 0, rowCount > 0, firstRow + rowCount <= height, stride >= width * layout.bytesPerPixel,
              firstRow % 2 == 0 else {
            throw VideoError(.invalidArgument, "video frame \(width)x\(height): rows \(firstRow)..<\(firstRow + rowCount) "
                             + "with stride \(stride) do not fit (first row must be even)")
        }
        let src = pixels.assumingMemoryBound(to: UInt8.self)
        let yDst = y + firstRow * yStride
        let uDst = u + (firstRow / 2) * chromaStride
        let vDst = v + (firstRow / 2) * chromaStride
        let w = Int32(width), h = Int32(rowCount), s = Int32(stride), ys = Int32(yStride), cs = Int32(chromaStride)
        let rc: Int32 = switch layout {
        case .bgrx: ARGBToI420(src, s, yDst, ys, uDst, cs, vDst, cs, w, h)
        case .rgbx: ABGRToI420(src, s, yDst, ys, uDst, cs, vDst, cs, w, h)
        case .xrgb: BGRAToI420(src, s, yDst, ys, uDst, cs, vDst, cs, w, h)
        case .xbgr: RGBAToI420(src, s, yDst, ys, uDst, cs, vDst, cs, w, h)
        case .rgb: RAWToI420(src, s, yDst, ys, uDst, cs, vDst, cs, w, h)
        }
        guard rc == 0 else {
            throw VideoError(.invalidArgument, "libyuv could not convert \(width)x\(rowCount) \(layout) rows (\(rc))")
        }
    }

    /// The picture as BGRX rows (B, G, R, 255 per pixel; `width × 4` bytes per row), e.g. for a
    /// PNG still or a comparison.
    public func bgrx() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: width * height * 4)
        out.withUnsafeMutableBufferPointer { dst in
            _ = I420ToARGB(y, Int32(yStride), u, Int32(chromaStride), v, Int32(chromaStride),
                           dst.baseAddress, Int32(width * 4), Int32(width), Int32(height))
        }
        return out
    }

    /// Copies planes given with their own strides (a decoder's output).
    func copy(y ySrc: UnsafePointer<UInt8>, yStride: Int, u uSrc: UnsafePointer<UInt8>, v vSrc: UnsafePointer<UInt8>,
              chromaStride: Int) {
        for r in 0..<height { (y + r * self.yStride).update(from: ySrc + r * yStride, count: width) }
        for r in 0..<chromaHeight {
            (u + r * self.chromaStride).update(from: uSrc + r * chromaStride, count: chromaWidth)
            (v + r * self.chromaStride).update(from: vSrc + r * chromaStride, count: chromaWidth)
        }
    }

    /// Similarity to `other` (same size), as libyuv's `I420Ssim` (SSIM of Wang et al. 2004
    /// over 8×8 windows: 0.8 × Y + 0.1 × (U + V); 1 is identical) and `I420Psnr` (PSNR in dB
    /// over Y, U and V together; 128 when identical). Nil when the sizes differ.
    public func compare(with other: I420Frame) -> (ssim: Double, psnr: Double)? {
        guard other.width == width, other.height == height else { return nil }
        let w = Int32(width), h = Int32(height), ys = Int32(yStride), cs = Int32(chromaStride)
        let ssim = I420Ssim(y, ys, u, cs, v, cs, other.y, ys, other.u, cs, other.v, cs, w, h)
        let psnr = I420Psnr(y, ys, u, cs, v, cs, other.y, ys, other.u, cs, other.v, cs, w, h)
        return (ssim, psnr)
    }
}
