import Foundation

/// What a sealed blob holds. The raw value is the byte stored in the blob header (docs/FORMAT.md).
public enum CaptureKind: UInt8, Sendable, CaseIterable, Codable {
    /// A screen frame (CaptureFormat frame encoding).
    case screen = 1
    /// A chunk of keystrokes (CaptureFormat keystroke encoding).
    case keystrokes = 2
    /// Any other data (files sealed by `custos seal`).
    case generic = 3
    /// A timeline of focus changes and idle/active periods (CaptureFormat `ActivityChunk`).
    case activity = 4

    /// The lowercase name used on the command line and in config: "screen", "keystrokes",
    /// "generic", "activity".
    public var name: String {
        switch self {
        case .screen: "screen"
        case .keystrokes: "keystrokes"
        case .generic: "generic"
        case .activity: "activity"
        }
    }

    /// Parses `name` ("screen", "keystrokes", "generic", "activity"); nil for anything else.
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

/// What distinguishes one kind of fixed-length id from another: its byte count.
public protocol IdentifierKind: Sendable {
    /// How many bytes an id of this kind has.
    static var byteCount: Int { get }
}

/// A fixed-length binary id, shown as lowercase hex. `KEKID`, `DEKID` and `BlobID` are this type
/// with different kinds, so they cannot be mixed up, and share one implementation.
public struct FixedLengthID<Kind: IdentifierKind>: Hashable, Sendable, CustomStringConvertible {
    /// Byte count of an id of this kind.
    public static var byteCount: Int { Kind.byteCount }
    /// The id bytes (`byteCount` of them).
    public let bytes: [UInt8]
    /// Lowercase hex, `2 × byteCount` characters.
    public var hex: String { Hex.encode(bytes) }
    public var description: String { hex }
    /// Parses `2 × byteCount` hex characters; nil for anything else.
    public init?(hex: String) {
        guard let b = Hex.decode(hex, count: Self.byteCount) else { return nil }
        bytes = b
    }
    /// Wraps exactly `byteCount` bytes; nil for any other length.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        self.bytes = Array(bytes)
    }
    /// A fresh id from the system CSPRNG.
    public static func random() -> Self { Self(bytes: randomBytes(byteCount))! }
}

/// Kind of `KEKID`: 32 bytes.
public enum KEKIDKind: IdentifierKind { public static let byteCount = 32 }
/// Kind of `DEKID`: 16 bytes.
public enum DEKIDKind: IdentifierKind { public static let byteCount = 16 }
/// Kind of `BlobID`: 16 bytes.
public enum BlobIDKind: IdentifierKind { public static let byteCount = 16 }

/// The id of a KEK: SHA-256 of the public key's SubjectPublicKeyInfo DER (32 bytes), the value
/// `openssl pkey -pubin -in publickey.crt -outform DER | sha256sum` prints.
public typealias KEKID = FixedLengthID<KEKIDKind>
/// The random 16-byte id of a DEK (and of its DEK record).
public typealias DEKID = FixedLengthID<DEKIDKind>
/// The random 16-byte id of a sealed blob; also its per-blob HKDF salt (docs/FORMAT.md).
public typealias BlobID = FixedLengthID<BlobIDKind>

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
