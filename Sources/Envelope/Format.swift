import Foundation

/// Constants and byte helpers for the record format in docs/FORMAT.md.
enum Format {
    /// `CSTS`, bytes 0–3 of every record (docs/ARCHITECTURE.md, "The record stream").
    static let magic: [UInt8] = [0x43, 0x53, 0x54, 0x53]
    /// Format version, byte 4.
    static let version: UInt8 = 1
    /// Size of the common prefix: magic (4), version (1), record type (1), total length (4).
    static let prefixSize = 10
    /// Record type byte (offset 5).
    enum RecordType: UInt8 {
        case dekRecord = 1, blob = 2
        /// A sealed blob whose header also names the graphical session it was captured in
        /// (user name and display; docs/FORMAT.md "Sealed session blob").
        case sessionBlob = 3
    }
    /// Algorithm suite 1: RSA-OAEP (SHA-256, MGF1-SHA-256) wrap of a 32-byte DEK; HKDF-SHA256
    /// per-blob key and nonce; AES-256-GCM with a 16-byte tag; HKDF-SHA256 key commitment.
    static let suiteV1: UInt8 = 1
    static let dekSize = 32
    static let tagSize = 16
    static let nonceSize = 12
    static let commitmentSize = 32
    static let maxAgentIDBytes = 255
    /// Fixed part of a DEK record besides agent id and wrapped key: prefix 10, suite 1, DEK id 16,
    /// KEK id 32, time 8, agent id length 1, wrapped length 2, commitment 32.
    static let dekRecordFixedSize = 10 + 1 + 16 + 32 + 8 + 1 + 2 + 32
    /// Fixed header part of a blob besides agent id: prefix 10, suite 1, blob id 16, KEK id 32,
    /// DEK id 16, kind 1, sequence 8, capture time 8, agent id length 1.
    static let blobHeaderFixedSize = 10 + 1 + 16 + 32 + 16 + 1 + 8 + 8 + 1
    /// HKDF `info` for the per-blob AES key and nonce.
    static let blobKeyInfo = Array("CSTS v1 blob key+nonce".utf8)
    /// HKDF `info` prefix for the DEK commitment; the DEK record's bytes before the wrapped key follow.
    static let commitmentInfo = Array("CSTS v1 DEK commitment".utf8)
    /// Largest total record length the u32 length field can carry.
    static let maxRecordSize = Int(UInt32.max)

    static func checkAgentID(_ agentID: String, field: String) throws -> [UInt8] {
        let bytes = Array(agentID.utf8)
        guard (1...maxAgentIDBytes).contains(bytes.count) else {
            throw EnvelopeError(.invalidArgument,
                                "\(field): agent id must be 1–\(maxAgentIDBytes) UTF-8 bytes, got \(bytes.count)")
        }
        return bytes
    }
}

/// Appends big-endian integers and byte runs to a growing buffer.
struct ByteWriter {
    var data: Data
    init(capacity: Int) { data = Data(capacity: capacity) }
    mutating func u8(_ v: UInt8) { data.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.bigEndian) { data.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.bigEndian) { data.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.bigEndian) { data.append(contentsOf: $0) } }
    mutating func bytes(_ b: some Sequence<UInt8>) { data.append(contentsOf: b) }
    /// Writes the common 10-byte prefix for a record of `totalLength` bytes.
    mutating func prefix(_ type: Format.RecordType, totalLength: Int) {
        bytes(Format.magic)
        u8(Format.version)
        u8(type.rawValue)
        u32(UInt32(totalLength))
    }
}

/// Reads big-endian fields from a zero-based `Data`, throwing `truncated` past the end.
struct ByteReader {
    let data: Data
    var offset = 0
    let what: String
    init(_ data: Data, what: String) {
        self.data = data.startIndex == 0 ? data : Data(data)
        self.what = what
    }
    var remaining: Int { data.count - offset }
    mutating func take(_ n: Int, _ field: String) throws -> Data {
        guard n >= 0, remaining >= n else {
            throw EnvelopeError(.truncated, "\(what): input ends inside field '\(field)' at byte \(offset) (needs \(n) bytes, \(remaining) left)")
        }
        defer { offset += n }
        return data.subdata(in: offset..<offset + n)
    }
    mutating func u8(_ field: String) throws -> UInt8 { try take(1, field)[0] }
    mutating func u16(_ field: String) throws -> UInt16 {
        try take(2, field).reduce(0) { $0 << 8 | UInt16($1) }
    }
    mutating func u32(_ field: String) throws -> UInt32 {
        try take(4, field).reduce(0) { $0 << 8 | UInt32($1) }
    }
    mutating func u64(_ field: String) throws -> UInt64 {
        try take(8, field).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Reads and checks the 10-byte prefix; returns the record type and declared total length.
    /// Throws `truncated` when the data is shorter than the declared length.
    mutating func prefix(available: Int? = nil) throws -> (Format.RecordType, Int) {
        let available = available ?? data.count
        guard remaining >= Format.prefixSize else {
            if remaining >= 4, Array(data.prefix(4)) != Format.magic {
                throw EnvelopeError(.malformed, "\(what): bad magic (expected 'CSTS')")
            }
            throw EnvelopeError(.truncated, "\(what): \(remaining) bytes is shorter than the 10-byte record prefix")
        }
        let magic = try take(4, "magic")
        guard Array(magic) == Format.magic else {
            throw EnvelopeError(.malformed, "\(what): bad magic \(Hex.encode(magic)) (expected 43535453 'CSTS')")
        }
        let version = try u8("version")
        guard version == Format.version else {
            throw EnvelopeError(.unsupportedVersion, "\(what): format version \(version) (this build reads version \(Format.version))")
        }
        let typeByte = try u8("record type")
        guard let type = Format.RecordType(rawValue: typeByte) else {
            throw EnvelopeError(.malformed, "\(what): unknown record type \(typeByte) (expected 1 = DEK record, 2 = sealed blob or 3 = sealed session blob)")
        }
        let length = Int(try u32("length"))
        guard length >= Format.prefixSize else {
            throw EnvelopeError(.malformed, "\(what): record length \(length) is shorter than its prefix")
        }
        guard available >= length else {
            throw EnvelopeError(.truncated, "\(what): record declares \(length) bytes but only \(available) are present")
        }
        return (type, length)
    }
}

/// Constant-time comparison of two byte runs of equal length.
func constantTimeEqual(_ a: some Collection<UInt8>, _ b: some Collection<UInt8>) -> Bool {
    guard a.count == b.count else { return false }
    var diff: UInt8 = 0
    for (x, y) in zip(a, b) { diff |= x ^ y }
    return diff == 0
}
