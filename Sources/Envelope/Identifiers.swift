import Foundation

/// What a sealed blob holds. The raw value is the byte stored in the blob header (docs/FORMAT.md).
public enum CaptureKind: UInt8, Sendable, CaseIterable, Codable {
    /// A screen frame (CaptureFormat frame encoding).
    case screen = 1
    /// A chunk of keystrokes (CaptureFormat keystroke encoding).
    case keystrokes = 2
    /// Any other data (files sealed by `custos seal`, later capture kinds).
    case generic = 3

    /// The lowercase name used on the command line and in config: "screen", "keystrokes", "generic".
    public var name: String {
        switch self {
        case .screen: "screen"
        case .keystrokes: "keystrokes"
        case .generic: "generic"
        }
    }

    /// Parses `name` ("screen", "keystrokes", "generic"); nil for anything else.
    public init?(name: String) {
        guard let kind = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = kind
    }
}

/// Hex encoding helpers shared by the id types.
enum Hex {
    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes lowercase or uppercase hex of exactly `count` bytes; nil otherwise.
    static func decode(_ text: String, count: Int) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count == count * 2 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(count)
        var i = 0
        while i < chars.count {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}

/// The id of a KEK: SHA-256 of the public key's SubjectPublicKeyInfo DER (32 bytes), the value
/// `openssl pkey -pubin -in publickey.crt -outform DER | sha256sum` prints.
public struct KEKID: Hashable, Sendable, CustomStringConvertible {
    /// Byte count of a KEK id.
    public static let byteCount = 32
    /// The 32 id bytes.
    public let bytes: [UInt8]
    /// Lowercase hex, 64 characters.
    public var hex: String { Hex.encode(bytes) }
    public var description: String { hex }
    /// Parses 64 hex characters; nil for anything else.
    public init?(hex: String) {
        guard let b = Hex.decode(hex, count: Self.byteCount) else { return nil }
        bytes = b
    }
    /// Wraps exactly 32 bytes; nil for any other length.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        self.bytes = Array(bytes)
    }
}

/// The random 16-byte id of a DEK (and of its DEK record).
public struct DEKID: Hashable, Sendable, CustomStringConvertible {
    /// Byte count of a DEK id.
    public static let byteCount = 16
    /// The 16 id bytes.
    public let bytes: [UInt8]
    /// Lowercase hex, 32 characters.
    public var hex: String { Hex.encode(bytes) }
    public var description: String { hex }
    /// Parses 32 hex characters; nil for anything else.
    public init?(hex: String) {
        guard let b = Hex.decode(hex, count: Self.byteCount) else { return nil }
        bytes = b
    }
    /// Wraps exactly 16 bytes; nil for any other length.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        self.bytes = Array(bytes)
    }
    /// A fresh id from the system CSPRNG.
    public static func random() -> DEKID { DEKID(bytes: randomBytes(byteCount))! }
}

/// The random 16-byte id of a sealed blob; also its per-blob HKDF salt (docs/FORMAT.md).
public struct BlobID: Hashable, Sendable, CustomStringConvertible {
    /// Byte count of a blob id.
    public static let byteCount = 16
    /// The 16 id bytes.
    public let bytes: [UInt8]
    /// Lowercase hex, 32 characters.
    public var hex: String { Hex.encode(bytes) }
    public var description: String { hex }
    /// Parses 32 hex characters; nil for anything else.
    public init?(hex: String) {
        guard let b = Hex.decode(hex, count: Self.byteCount) else { return nil }
        bytes = b
    }
    /// Wraps exactly 16 bytes; nil for any other length.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        self.bytes = Array(bytes)
    }
    /// A fresh id from the system CSPRNG.
    public static func random() -> BlobID { BlobID(bytes: randomBytes(byteCount))! }
}

/// `count` bytes from the system CSPRNG (`getrandom(2)` via `SystemRandomNumberGenerator`,
/// 8 bytes per call: syscalls are not free in a VM).
func randomBytes(_ count: Int) -> [UInt8] {
    var rng = SystemRandomNumberGenerator()
    var out = [UInt8]()
    out.reserveCapacity(count + 7)
    while out.count < count {
        withUnsafeBytes(of: rng.next()) { out.append(contentsOf: $0) }
    }
    out.removeLast(out.count - count)
    return out
}
