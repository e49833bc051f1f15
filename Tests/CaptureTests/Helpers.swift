import CPNG
import CaptureCore
import CaptureFormat
import CaptureX11
import Foundation
import Logging
import TestSupport

/// A decoded PNG: size, IHDR colour type and 8-bit RGB pixels.
struct DecodedPNG {
    let width: Int
    let height: Int
    let colorType: UInt8
    let bitDepth: UInt8
    let rgb: [UInt8]

    func pixel(_ x: Int, _ y: Int) -> RGB {
        let i = (y * width + x) * 3
        return RGB(rgb[i], rgb[i + 1], rgb[i + 2])
    }
}

struct RGB: Equatable, CustomStringConvertible {
    let r: UInt8, g: UInt8, b: UInt8
    init(_ r: UInt8, _ g: UInt8, _ b: UInt8) { self.r = r; self.g = g; self.b = b }
    init(hex: String) {
        let v = UInt32(hex.dropFirst(), radix: 16)!
        self.init(UInt8(v >> 16), UInt8((v >> 8) & 0xff), UInt8(v & 0xff))
    }
    var hex: String { "#" + [r, g, b].map { String(format: "%02x", $0) }.joined() }
    var description: String { hex }
}

/// Decodes a PNG with libpng's simplified read API (which reports errors without longjmp).
func decodePNG(_ data: Data) throws -> DecodedPNG {
    let bytes = [UInt8](data)
    guard bytes.count > 33, bytes[12..<16].elementsEqual("IHDR".utf8) else {
        throw TestSupportError("not a PNG with IHDR first")
    }
    var image = png_image()
    image.version = UInt32(PNG_IMAGE_VERSION)
    let ok = bytes.withUnsafeBytes { png_image_begin_read_from_memory(&image, $0.baseAddress, $0.count) }
    guard ok != 0 else { throw TestSupportError("libpng cannot read the PNG header") }
    image.format = UInt32(PNG_FORMAT_RGB)
    let width = Int(image.width), height = Int(image.height)
    var rgb = [UInt8](repeating: 0, count: width * height * 3)
    let done = rgb.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, Int32(width * 3), nil) }
    guard done != 0 else { throw TestSupportError("libpng cannot decode the PNG") }
    png_image_free(&image)
    return DecodedPNG(width: width, height: height, colorType: bytes[25], bitDepth: bytes[24], rgb: rgb)
}

/// A tiling XBM bitmap with an irregular pattern (odd width, so row strides and byte
/// order mistakes show), tiled over the root by `xsetroot -bitmap`.
struct TilePattern {
    static let width = 13
    static let height = 7
    static func bit(_ x: Int, _ y: Int) -> Bool { (x * 7 + y * 3 + x * y) % 5 < 2 }

    /// The XBM file text (X11 bitmap format: LSB of each byte is the leftmost pixel).
    static var xbm: String {
        var bytes: [String] = []
        let rowBytes = (width + 7) / 8
        for y in 0..<height {
            for b in 0..<rowBytes {
                var v = 0
                for i in 0..<8 where b * 8 + i < width && bit(b * 8 + i, y) { v |= 1 << i }
                bytes.append(String(format: "0x%02x", v))
            }
        }
        return "#define p_width \(width)\n#define p_height \(height)\nstatic unsigned char p_bits[] = {\n"
            + bytes.joined(separator: ", ") + "};\n"
    }

    /// Paints the pattern on the root of `xvfb` with `fg`/`bg`.
    static func paint(_ xvfb: Xvfb, fg: String, bg: String, dir: TempDir) throws {
        let file = dir.file("pattern.xbm")
        try xbm.write(toFile: file, atomically: true, encoding: .utf8)
        try xvfb.run(["xsetroot", "-bitmap", file, "-fg", fg, "-bg", bg])
    }

    /// The colour the root has at root coordinates (x, y).
    static func expected(_ x: Int, _ y: Int, fg: RGB, bg: RGB) -> RGB {
        bit(x % width, y % height) ? fg : bg
    }
}

/// Checks every pixel of `frame` against the tiled pattern at offset (x0, y0); returns the
/// first mismatch as text, or nil.
func firstMismatch(_ frame: DecodedPNG, x0: Int, y0: Int, fg: RGB, bg: RGB) -> String? {
    for y in 0..<frame.height {
        for x in 0..<frame.width {
            let want = TilePattern.expected(x0 + x, y0 + y, fg: fg, bg: bg)
            let got = frame.pixel(x, y)
            if got != want { return "pixel (\(x),\(y)) is \(got), expected \(want)" }
        }
    }
    return nil
}

func testLogger(_ label: String) -> Logger {
    var logger = Logger(label: label, factory: { _ in SwiftLogNoOpLogHandler() })
    logger.logLevel = .critical
    return logger
}

/// Requires the X tools the capture tests use; under CI=true a missing tool fails the test.
func requireXTools(_ tools: [String] = ["Xvfb", "xsetroot", "xrandr"]) throws {
    for tool in tools { try requireTool(tool) }
}

extension FrameCapture {
    var changedFrame: (FrameMetadata, Data)? {
        if case .changed(let meta, let png) = self { return (meta, png) }
        return nil
    }
    var isUnchanged: Bool {
        if case .unchanged = self { return true }
        return false
    }
}
