import CaptureCore
import Foundation
import Video

/// How to read one pixel of a ZPixmap `XImage` as 8-bit R, G, B.
///
/// Built from the visual's channel masks and the image's bits per pixel and byte order
/// (X11 protocol §8 "Image formats"); never assumes BGRX.
struct PixelFormat: Sendable, Equatable {
    struct Channel: Sendable, Equatable {
        let shift: Int
        let bits: Int
        let mask: UInt
        init(mask: UInt) {
            self.mask = mask
            let m = UInt64(mask)
            shift = m == 0 ? 0 : m.trailingZeroBitCount
            bits = m == 0 ? 0 : (~(m >> UInt64(shift))).trailingZeroBitCount
        }
        /// Scales a `bits`-wide value to 8 bits by bit replication (5-bit 31 → 255, 0 → 0).
        @inline(__always) func expand(_ pixel: UInt32) -> UInt8 {
            let v = (pixel >> UInt32(shift)) & ((1 << UInt32(bits)) - 1)
            if bits >= 8 { return UInt8(truncatingIfNeeded: v >> UInt32(bits - 8)) }
            var out: UInt32 = 0
            var filled = 0
            while filled < 8 {
                let s = 8 - filled - bits
                out |= s >= 0 ? v << UInt32(s) : v >> UInt32(-s)
                filled += bits
            }
            return UInt8(truncatingIfNeeded: out)
        }
    }

    let bitsPerPixel: Int
    let msbFirst: Bool
    let red: Channel, green: Channel, blue: Channel

    init(bitsPerPixel: Int, msbFirst: Bool, redMask: UInt, greenMask: UInt, blueMask: UInt) {
        self.bitsPerPixel = bitsPerPixel
        self.msbFirst = msbFirst
        red = Channel(mask: redMask)
        green = Channel(mask: greenMask)
        blue = Channel(mask: blueMask)
    }

    var bytesPerPixel: Int { (bitsPerPixel + 7) / 8 }

    /// The layout libpng and libyuv read directly (32 bpp with whole-byte channels), or nil when
    /// rows must be converted to RGB first (16 bpp RGB565, 24 bpp, odd masks).
    var directLayout: RGBLayout? {
        guard bitsPerPixel == 32, red.bits == 8, green.bits == 8, blue.bits == 8,
              red.shift % 8 == 0, green.shift % 8 == 0, blue.shift % 8 == 0 else { return nil }
        func index(_ c: Channel) -> Int { msbFirst ? 3 - c.shift / 8 : c.shift / 8 }
        switch (index(red), index(green), index(blue)) {
        case (0, 1, 2): return .rgbx
        case (2, 1, 0): return .bgrx
        case (1, 2, 3): return .xrgb
        case (3, 2, 1): return .xbgr
        default: return nil
        }
    }

    var isSupported: Bool {
        [16, 24, 32].contains(bitsPerPixel) && red.bits > 0 && green.bits > 0 && blue.bits > 0
    }

    /// Converts `height` rows of `width` pixels (rows `stride` bytes apart) to packed RGB.
    func convertToRGB(_ src: UnsafeRawPointer, width: Int, height: Int, stride: Int,
                      into out: inout [UInt8]) {
        let needed = width * height * 3
        if out.count != needed { out = [UInt8](repeating: 0, count: needed) }
        let bpp = bytesPerPixel
        out.withUnsafeMutableBufferPointer { dst in
            var o = 0
            for y in 0..<height {
                let row = src + y * stride
                for x in 0..<width {
                    let p = row + x * bpp
                    let pixel: UInt32
                    switch bpp {
                    case 2:
                        let a = UInt32(p.load(as: UInt8.self)), b = UInt32(p.load(fromByteOffset: 1, as: UInt8.self))
                        pixel = msbFirst ? (a << 8 | b) : (b << 8 | a)
                    case 3:
                        let a = UInt32(p.load(as: UInt8.self)), b = UInt32(p.load(fromByteOffset: 1, as: UInt8.self))
                        let c = UInt32(p.load(fromByteOffset: 2, as: UInt8.self))
                        pixel = msbFirst ? (a << 16 | b << 8 | c) : (c << 16 | b << 8 | a)
                    default:
                        let v = p.loadUnaligned(as: UInt32.self)
                        pixel = msbFirst ? v.byteSwapped : v
                    }
                    dst[o] = red.expand(pixel)
                    dst[o + 1] = green.expand(pixel)
                    dst[o + 2] = blue.expand(pixel)
                    o += 3
                }
            }
        }
    }
}

/// A 64-bit hash of the visible bytes of each row (row padding is skipped), used to detect a
/// frame identical to the previous one without keeping a copy. Eight independent lanes of
/// `rotl((lane ^ word) * k, 29)` over 8-byte words (the rotate carries high-bit changes into
/// low bits), then a final mix; not cryptographic (an accidental collision has probability
/// ~2⁻⁶⁴ per frame; nobody chooses the screen content to collide).
///
/// Rows may be fed in strips of any size: the result depends only on the rows and their order.
struct RowHasher {
    private static let k: UInt64 = 0x9E37_79B9_7F4A_7C15
    private var l0: UInt64 = 0x243F_6A88_85A3_08D3, l1: UInt64 = 0x1319_8A2E_0370_7344
    private var l2: UInt64 = 0xA409_3822_299F_31D0, l3: UInt64 = 0x082E_FA98_EC4E_6C89
    private var l4: UInt64 = 0x4528_21E6_38D0_1377, l5: UInt64 = 0xBE54_66CF_34E9_0C6C
    private var l6: UInt64 = 0xC0AC_29B7_C97C_50DD, l7: UInt64 = 0x3F84_D5B5_B547_0917
    private var tail: UInt64 = 0x6A09_E667_F3BC_C908
    private var row: Int = 0
    /// Visible bytes per row.
    let rowBytes: Int

    init(rowBytes: Int) { self.rowBytes = rowBytes }

    @inline(__always) private static func step(_ lane: inout UInt64, _ word: UInt64) {
        let m = (lane ^ word) &* k
        lane = (m << 29) | (m >> 35)
    }

    /// Hashes `rows` rows starting at `src`, each `stride` bytes after the previous.
    mutating func update(_ src: UnsafeRawPointer, rows: Int, stride: Int) {
        let blocks = rowBytes / 64
        var l0 = l0, l1 = l1, l2 = l2, l3 = l3, l4 = l4, l5 = l5, l6 = l6, l7 = l7, tail = tail
        for y in 0..<rows {
            let line = src + y * stride
            var i = 0
            for _ in 0..<blocks {
                Self.step(&l0, line.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                Self.step(&l1, line.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self))
                Self.step(&l2, line.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self))
                Self.step(&l3, line.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self))
                Self.step(&l4, line.loadUnaligned(fromByteOffset: i + 32, as: UInt64.self))
                Self.step(&l5, line.loadUnaligned(fromByteOffset: i + 40, as: UInt64.self))
                Self.step(&l6, line.loadUnaligned(fromByteOffset: i + 48, as: UInt64.self))
                Self.step(&l7, line.loadUnaligned(fromByteOffset: i + 56, as: UInt64.self))
                i += 64
            }
            while i + 8 <= rowBytes {
                Self.step(&tail, line.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                i += 8
            }
            while i < rowBytes {
                Self.step(&tail, UInt64(line.load(fromByteOffset: i, as: UInt8.self)))
                i += 1
            }
            Self.step(&tail, UInt64(row + y))
        }
        row += rows
        self.l0 = l0; self.l1 = l1; self.l2 = l2; self.l3 = l3
        self.l4 = l4; self.l5 = l5; self.l6 = l6; self.l7 = l7; self.tail = tail
    }

    /// The hash of every row fed so far.
    var value: UInt64 {
        var h = tail
        for lane in [l0, l1, l2, l3, l4, l5, l6, l7] { Self.step(&h, lane) }
        h ^= h >> 31
        h = h &* Self.k
        return h ^ (h >> 29)
    }
}
