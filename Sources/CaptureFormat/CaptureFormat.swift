import Foundation

// Plaintext payload encodings of captures. Capture encodes them in the agent; the admin CLI
// decodes them after Envelope.open. Foundation only: this module must not link X11 or libpng.
// The byte formats are specified in docs/CAPTURE.md.

/// Errors decoding a capture payload; `description` names the field and what was expected.
/// Never contains payload bytes (frames and keystrokes are plaintext captures).
public struct CaptureFormatError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Where and when one monitor's frame was taken.
///
/// Geometry is in pixels in the X root window's coordinate space; `captureTimeMs` is
/// milliseconds since the Unix epoch (UTC) at which the pixels were read.
public struct FrameMetadata: Codable, Sendable, Equatable {
    /// Index of the monitor in the RandR monitor list (0 is the first; 0 for the whole root).
    public var monitor: Int
    /// RandR monitor name (for example `DP-1`, `screen`), or `root` when RandR is absent.
    public var monitorName: String
    /// Position of the monitor in the root window, in pixels.
    public var x: Int
    public var y: Int
    /// Size of the frame in pixels (equals the PNG's IHDR width and height).
    public var width: Int
    public var height: Int
    /// Capture time in milliseconds since 1970-01-01T00:00:00Z.
    public var captureTimeMs: Int64

    public init(monitor: Int, monitorName: String, x: Int, y: Int, width: Int, height: Int, captureTimeMs: Int64) {
        self.monitor = monitor
        self.monitorName = monitorName
        self.x = x
        self.y = y
        self.width = width
        self.height = height
        self.captureTimeMs = captureTimeMs
    }
}

/// The frame payload: a fixed header, the metadata as JSON, then the PNG (docs/CAPTURE.md).
///
/// ```
/// offset size field
/// 0      4    magic "CFRM"
/// 4      1    version (1)
/// 5      4    metadata length M in bytes, big-endian u32
/// 9      M    FrameMetadata as UTF-8 JSON (sorted keys)
/// 9+M    …    PNG file (ISO/IEC 15948, starts with the 8-byte PNG signature)
/// ```
public enum FramePayload {
    /// The 4-byte magic at the start of every frame payload.
    public static let magic: [UInt8] = Array("CFRM".utf8)
    /// The format version this code writes and reads.
    public static let version: UInt8 = 1
    static let pngSignature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

    /// Encodes `meta` and the PNG bytes `png` into one payload (plaintext, to be sealed).
    public static func encode(_ meta: FrameMetadata, png: Data) -> Data {
        FramedPayload.encode(magic: magic, version: version, json: canonicalJSON(meta), body: png)
    }

    /// Decodes a payload made by `encode`.
    /// - Throws: `CaptureFormatError` naming the field when the magic, version, length,
    ///   metadata JSON or PNG signature is not what the format expects.
    public static func decode(_ data: Data) throws -> (FrameMetadata, png: Data) {
        let (json, png) = try FramedPayload.decode(data, magic: magic, version: version, name: "frame payload")
        let meta: FrameMetadata
        do {
            meta = try JSONDecoder().decode(FrameMetadata.self, from: json)
        } catch {
            throw CaptureFormatError("frame payload: metadata is not FrameMetadata JSON (\(error))")
        }
        guard png.count >= 8, Array(png.prefix(8)) == pngSignature else {
            throw CaptureFormatError("frame payload: image does not start with the PNG signature")
        }
        return (meta, png)
    }
}

/// One key event as text.
///
/// `text` is either the character(s) the key produced under the layout, shift level and
/// group current at the event, or a token in brackets for a key that produces no text
/// (`[Enter]`, `[BackSpace]`, `[Ctrl+c]`, `[F5]`). A literal `[` is written `[[`.
/// The token grammar is in docs/CAPTURE.md and `KeyToken`.
public struct Keystroke: Codable, Sendable, Equatable {
    /// Time of the event in milliseconds since the Unix epoch (UTC).
    public var timeMs: Int64
    /// A character, `[[` for a literal `[`, or a token like `[Enter]`.
    public var text: String
    /// `nil` or `true` for a press, `false` for a release (releases are only recorded on request).
    public var pressed: Bool?
    /// For a marker that stands for keys left out (`[suppressed]`, `[excluded]`): the time of
    /// the last of them (`timeMs` is the first's), ms since the epoch; nil for a key.
    public var untilMs: Int64?
    /// For `[excluded]`: how many key presses it stands for; nil otherwise (a `[suppressed]`
    /// marker does not count them: a password's length is itself a secret).
    public var count: Int?

    public init(timeMs: Int64, text: String, pressed: Bool? = nil, untilMs: Int64? = nil, count: Int? = nil) {
        self.timeMs = timeMs
        self.text = text
        self.pressed = pressed
        self.untilMs = untilMs
        self.count = count
    }

    /// Whether this entry is a marker for keys left out rather than a key.
    public var isMarker: Bool { untilMs != nil }

    /// Whether this is a press (`pressed` is `nil` or `true`).
    public var isPress: Bool { pressed ?? true }
}

/// The keystrokes typed into one focused window, batched so one blob is sealed per chunk.
///
/// Encoded as UTF-8 JSON with sorted keys (docs/CAPTURE.md). Times are milliseconds since the
/// Unix epoch (UTC).
public struct KeystrokeChunk: Codable, Sendable, Equatable {
    /// Title of the focused top-level window (`_NET_WM_NAME`, else `WM_NAME`), "" if none.
    public var windowTitle: String
    /// `WM_CLASS` of the focused window as "instance.class" (ICCCM §4.1.2.5), "" if none.
    public var wmClass: String
    /// Time of the first key, ms since the epoch.
    public var startMs: Int64
    /// Time of the last key, ms since the epoch.
    public var endMs: Int64
    /// The keys in the order the X server delivered them.
    public var keys: [Keystroke]

    public init(windowTitle: String, wmClass: String, startMs: Int64, endMs: Int64, keys: [Keystroke]) {
        self.windowTitle = windowTitle
        self.wmClass = wmClass
        self.startMs = startMs
        self.endMs = endMs
        self.keys = keys
    }

    /// The text of the pressed keys joined in order (releases are left out).
    public var text: String { keys.lazy.filter(\.isPress).map(\.text).joined() }

    /// The chunk as UTF-8 JSON with sorted keys.
    public func encoded() -> Data { canonicalJSON(self) }

    /// Decodes a chunk made by `encoded()`.
    /// - Throws: `CaptureFormatError` when the bytes are not a keystroke chunk's JSON.
    public static func decode(_ data: Data) throws -> KeystrokeChunk {
        do {
            return try JSONDecoder().decode(KeystrokeChunk.self, from: data)
        } catch {
            throw CaptureFormatError("keystroke chunk: not KeystrokeChunk JSON (\(error))")
        }
    }
}

/// The token grammar for keys that produce no text (docs/CAPTURE.md):
///
/// ```
/// token     = "[" *(modifier "+") name "]"
/// modifier  = "Ctrl" / "Alt" / "Super" / "Shift"       ; in this order
/// name      = keysym-name / character
/// ```
/// `keysym-name` is the X keysym name (`XKeysymToString`, X11 `keysymdef.h`) with two
/// renames: `Return` and `KP_Enter` are `Enter`. `character` is the text the key gives
/// without Ctrl/Alt/Super (so Ctrl+Shift+c is `[Ctrl+C]`). `Shift` is listed only with
/// a keysym-name (`[Shift+Tab]`), since a character already shows it.
public enum KeyToken {
    /// Builds a token from modifiers (in grammar order) and a name.
    public static func make(modifiers: [String], name: String) -> String {
        "[" + (modifiers + [name]).joined(separator: "+") + "]"
    }

    /// The text a literal character is recorded as (`[` is doubled).
    public static func literal(_ text: String) -> String {
        text == "[" ? "[[" : text
    }

    /// The marker for keys not recorded while another client held an active keyboard grab (a
    /// password prompt, a screen locker) or a `sensitive-window-class` window had the focus.
    public static let suppressed = "[suppressed]"
    /// The marker for keys dropped while an `exclude-window-*` window had the focus.
    public static let excluded = "[excluded]"
}

/// The framing both binary payloads share: a 4-byte magic, a version byte, a big-endian u32
/// length M, M bytes of metadata JSON, then the body (docs/CAPTURE.md).
enum FramedPayload {
    static func encode(magic: [UInt8], version: UInt8, json: Data, body: some Collection<UInt8>) -> Data {
        var out = Data(capacity: 9 + json.count + body.count)
        out.append(contentsOf: magic)
        out.append(version)
        appendBigEndian(UInt32(json.count), to: &out)
        out.append(json)
        out.append(contentsOf: body)
        return out
    }

    /// The metadata JSON and the body of `data`.
    /// - Throws: ``CaptureFormatError`` starting with `name` when the header is short or its
    ///   magic, version or length is wrong.
    static func decode(_ data: Data, magic: [UInt8], version: UInt8, name: String) throws -> (json: Data, body: Data) {
        let head = [UInt8](data.prefix(9))
        guard head.count == 9 else {
            throw CaptureFormatError("\(name): \(data.count) bytes is shorter than the 9-byte header")
        }
        guard Array(head[0..<4]) == magic else {
            throw CaptureFormatError("\(name): magic is not \"\(String(decoding: magic, as: UTF8.self))\"")
        }
        guard head[4] == version else {
            throw CaptureFormatError("\(name): version \(head[4]) is not supported (expected \(version))")
        }
        let length = Int(head[5]) << 24 | Int(head[6]) << 16 | Int(head[7]) << 8 | Int(head[8])
        guard data.count >= 9 + length else {
            throw CaptureFormatError("\(name): metadata length \(length) exceeds the \(data.count - 9) bytes left")
        }
        let start = data.startIndex
        return (data[(start + 9)..<(start + 9 + length)], Data(data[(start + 9 + length)...]))
    }
}

func canonicalJSON<T: Encodable>(_ value: T) -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    // Encoding plain structs of strings and integers cannot fail.
    return (try? encoder.encode(value)) ?? Data("{}".utf8)
}

func appendBigEndian(_ value: UInt32, to data: inout Data) {
    data.append(UInt8(value >> 24))
    data.append(UInt8((value >> 16) & 0xff))
    data.append(UInt8((value >> 8) & 0xff))
    data.append(UInt8(value & 0xff))
}
