import CustosBase
import Foundation

/// A DEK record: a DEK wrapped to a KEK with RSA-OAEP, plus a commitment to the DEK
/// (docs/FORMAT.md, "DEK record"). Sent once per DEK; the collector stores it in `encryption_dek`.
public struct DEKRecord: Sendable, Equatable {
    /// Random id of the DEK; also the record's idempotency key.
    public let dekID: DEKID
    /// SHA-256 of the KEK's SPKI DER.
    public let kekID: KEKID
    /// The agent that made the DEK (1–255 UTF-8 bytes).
    public let agentID: String
    /// When the DEK was made, ms since 1970-01-01 UTC.
    public let creationTimeMs: Int64
    /// The DEK, RSA-OAEP(SHA-256, MGF1-SHA-256) encrypted to the KEK (RFC 8017 §7.1); as long as the modulus.
    public let wrappedDEK: Data
    /// 32-byte HKDF-SHA256 commitment to the DEK and the record's fields (docs/FORMAT.md).
    public let commitment: Data

    init(dekID: DEKID, kekID: KEKID, agentID: String, creationTimeMs: Int64, wrappedDEK: Data, commitment: Data) {
        self.dekID = dekID
        self.kekID = kekID
        self.agentID = agentID
        self.creationTimeMs = creationTimeMs
        self.wrappedDEK = wrappedDEK
        self.commitment = commitment
    }

    /// The bytes the commitment covers: the record from its prefix through the agent id.
    static func committedBytes(dekID: DEKID, kekID: KEKID, agentIDBytes: [UInt8], creationTimeMs: Int64,
                               wrappedLength: Int) -> Data {
        var w = ByteWriter(capacity: 128)
        let total = Format.dekRecordFixedSize + agentIDBytes.count + wrappedLength
        w.prefix(.dekRecord, totalLength: total)
        w.u8(Format.suiteV1)
        w.bytes(dekID.bytes)
        w.bytes(kekID.bytes)
        w.u64(UInt64(bitPattern: creationTimeMs))
        w.u8(UInt8(agentIDBytes.count))
        w.bytes(agentIDBytes)
        return w.data
    }

    /// The record's bytes (docs/FORMAT.md), starting with the common 10-byte prefix.
    public var serialized: Data {
        var w = ByteWriter(capacity: Format.dekRecordFixedSize + 255 + wrappedDEK.count)
        w.bytes(Self.committedBytes(dekID: dekID, kekID: kekID, agentIDBytes: Array(agentID.utf8),
                                    creationTimeMs: creationTimeMs, wrappedLength: wrappedDEK.count))
        w.u16(UInt16(wrappedDEK.count))
        w.bytes(wrappedDEK)
        w.bytes(commitment)
        return w.data
    }

    /// Parses exactly one DEK record. No key is needed; nothing is decrypted.
    ///
    /// - Throws: `EnvelopeError` `.truncated` (input shorter than declared), `.malformed`
    ///   (bad magic, wrong record type, lengths that disagree, trailing bytes), `.unsupportedVersion`.
    public init(parsing data: Data) throws {
        var r = ByteReader(data, what: "DEK record")
        let (type, length) = try r.prefix()
        guard type == .dekRecord else {
            throw EnvelopeError(.malformed, "DEK record: record type is \(type.rawValue) (sealed blob), expected 1 (DEK record)")
        }
        guard length == r.data.count else {
            throw EnvelopeError(.malformed, "DEK record: declared length \(length) but \(r.data.count) bytes given (expected exactly one record)")
        }
        let suite = try r.u8("suite")
        guard suite == Format.suiteV1 else {
            throw EnvelopeError(.unsupportedVersion, "DEK record: algorithm suite \(suite) (this build knows suite \(Format.suiteV1))")
        }
        dekID = DEKID(bytes: try r.take(DEKID.byteCount, "dek id"))!
        kekID = KEKID(bytes: try r.take(KEKID.byteCount, "kek id"))!
        creationTimeMs = Int64(bitPattern: try r.u64("creation time"))
        let n = Int(try r.u8("agent id length"))
        let agentBytes = try r.take(n, "agent id")
        guard n >= 1, let agent = String(validating: agentBytes, as: UTF8.self) else {
            throw EnvelopeError(.malformed, "DEK record \(dekID): agent id is empty or not UTF-8")
        }
        agentID = agent
        let w = Int(try r.u16("wrapped DEK length"))
        guard length == Format.dekRecordFixedSize + n + w else {
            throw EnvelopeError(.malformed, "DEK record \(dekID): wrapped DEK length \(w) disagrees with record length \(length)")
        }
        wrappedDEK = try r.take(w, "wrapped DEK")
        commitment = try r.take(Format.commitmentSize, "commitment")
    }
}

/// The authenticated header of a sealed blob (docs/FORMAT.md, "Sealed blob"). Every field, and
/// the prefix before it, is AES-GCM additional authenticated data.
public struct BlobHeader: Sendable, Equatable {
    /// Random id of the blob; its idempotency key and HKDF salt.
    public let blobID: BlobID
    /// KEK the blob's DEK is wrapped to.
    public let kekID: KEKID
    /// DEK the blob is sealed under (names its DEK record).
    public let dekID: DEKID
    /// The agent that sealed it (1–255 UTF-8 bytes).
    public let agentID: String
    /// What the plaintext is.
    public let kind: CaptureKind
    /// Per-DEK sequence number, starting at 0 for the first blob sealed under a DEK.
    public let sequence: UInt64
    /// Capture time, ms since 1970-01-01 UTC.
    public let captureTimeMs: Int64
    /// The graphical session the capture comes from (user name, display), in a sealed session
    /// blob (record type 3); nil in a plain sealed blob (type 2).
    public let session: BlobSession?

    public init(blobID: BlobID, kekID: KEKID, dekID: DEKID, agentID: String, kind: CaptureKind,
                sequence: UInt64, captureTimeMs: Int64, session: BlobSession? = nil) {
        self.blobID = blobID
        self.kekID = kekID
        self.dekID = dekID
        self.agentID = agentID
        self.kind = kind
        self.sequence = sequence
        self.captureTimeMs = captureTimeMs
        self.session = session
    }

    /// The header's length in bytes for `agentIDBytes` and `session`.
    static func length(agentIDBytes: Int, session: BlobSession?) -> Int {
        Format.blobHeaderFixedSize + agentIDBytes + (session.map { 2 + $0.userBytes.count + $0.displayBytes.count } ?? 0)
    }

    /// The header bytes (the AAD) for a blob carrying `ciphertextLength` bytes of ciphertext.
    func serialized(agentIDBytes: [UInt8], ciphertextLength: Int) -> Data {
        let headerLength = Self.length(agentIDBytes: agentIDBytes.count, session: session)
        var w = ByteWriter(capacity: headerLength)
        w.prefix(session == nil ? .blob : .sessionBlob, totalLength: headerLength + ciphertextLength + Format.tagSize)
        w.u8(Format.suiteV1)
        w.bytes(blobID.bytes)
        w.bytes(kekID.bytes)
        w.bytes(dekID.bytes)
        w.u8(kind.rawValue)
        w.u64(sequence)
        w.u64(UInt64(bitPattern: captureTimeMs))
        w.u8(UInt8(agentIDBytes.count))
        w.bytes(agentIDBytes)
        if let session {
            w.u8(UInt8(session.userBytes.count))
            w.bytes(session.userBytes)
            w.u8(UInt8(session.displayBytes.count))
            w.bytes(session.displayBytes)
        }
        return w.data
    }
}

/// The graphical session a capture comes from, as a sealed session blob's header names it:
/// the local user's login name and the display (docs/FORMAT.md "Sealed session blob").
/// Authenticated (part of the AAD) but not encrypted: listings filter by it without a key.
public struct BlobSession: Sendable, Hashable {
    /// The session's user (``UserName``: its one validator).
    public let user: UserName
    /// The display (X11: `:N`), 1-255 UTF-8 bytes without characters `SafeText` would escape.
    public let display: String

    var userBytes: [UInt8] { Array(user.rawValue.utf8) }
    var displayBytes: [UInt8] { Array(display.utf8) }

    /// - Throws: `EnvelopeError.invalidArgument` when `display` is empty, longer than 255
    ///   UTF-8 bytes, or holds a character `SafeText` would escape.
    public init(user: UserName, display: String) throws {
        guard (1...255).contains(display.utf8.count), !display.unicodeScalars.contains(where: SafeText.needsEscape) else {
            throw EnvelopeError(.invalidArgument, "session display must be 1-255 UTF-8 bytes without control characters, found \(SafeText.quoted(display))")
        }
        self.user = user
        self.display = display
    }
}

/// A sealed blob: header, AES-256-GCM ciphertext, 16-byte tag (docs/FORMAT.md).
public struct SealedBlob: Sendable {
    /// The parsed header (authenticated only when the blob is opened).
    public let header: BlobHeader
    /// The whole record, prefix to tag.
    public let serialized: Data
    /// Length of the header (= AAD) in bytes.
    let headerLength: Int

    init(header: BlobHeader, serialized: Data, headerLength: Int) {
        self.header = header
        self.serialized = serialized
        self.headerLength = headerLength
    }

    /// Plaintext length in bytes.
    public var plaintextCount: Int { serialized.count - headerLength - Format.tagSize }

    /// Parses exactly one sealed blob and checks its header's structure; no key is needed and
    /// nothing is authenticated (the collector uses this; `BlobOpener.open` authenticates).
    ///
    /// - Throws: `EnvelopeError` `.truncated`, `.malformed` (bad magic, wrong record type,
    ///   unknown capture kind, lengths that disagree, trailing bytes), `.unsupportedVersion`.
    public init(parsing data: Data) throws {
        var r = ByteReader(data, what: "sealed blob")
        let (type, length) = try r.prefix()
        guard type == .blob || type == .sessionBlob else {
            throw EnvelopeError(.malformed, "sealed blob: record type is \(type.rawValue) (DEK record), expected 2 (sealed blob) or 3 (sealed session blob)")
        }
        guard length == r.data.count else {
            throw EnvelopeError(.malformed, "sealed blob: declared length \(length) but \(r.data.count) bytes given (expected exactly one record)")
        }
        let suite = try r.u8("suite")
        guard suite == Format.suiteV1 else {
            throw EnvelopeError(.unsupportedVersion, "sealed blob: algorithm suite \(suite) (this build knows suite \(Format.suiteV1))")
        }
        let blobID = BlobID(bytes: try r.take(BlobID.byteCount, "blob id"))!
        let kekID = KEKID(bytes: try r.take(KEKID.byteCount, "kek id"))!
        let dekID = DEKID(bytes: try r.take(DEKID.byteCount, "dek id"))!
        let kindByte = try r.u8("kind")
        guard let kind = CaptureKind(rawValue: kindByte) else {
            throw EnvelopeError(.malformed, "sealed blob \(blobID): unknown capture kind \(kindByte) (expected 1, 2, 3 or 4)")
        }
        let sequence = try r.u64("sequence")
        let time = Int64(bitPattern: try r.u64("capture time"))
        let n = Int(try r.u8("agent id length"))
        let agentBytes = try r.take(n, "agent id")
        guard n >= 1, let agent = String(validating: agentBytes, as: UTF8.self) else {
            throw EnvelopeError(.malformed, "sealed blob \(blobID): agent id is empty or not UTF-8")
        }
        var session: BlobSession?
        if type == .sessionBlob {
            func text(_ field: String) throws -> String {
                let count = Int(try r.u8("\(field) length"))
                guard let value = String(validating: try r.take(count, field), as: UTF8.self) else {
                    throw EnvelopeError(.malformed, "sealed blob \(blobID): session \(field) is not UTF-8")
                }
                return value
            }
            let userText = try text("user"), display = try text("display")
            do {
                session = try BlobSession(user: try UserName(userText, field: "session user"), display: display)
            } catch let e as ValueError {
                throw EnvelopeError(.malformed, "sealed blob \(blobID): \(e)")
            } catch let e as EnvelopeError {
                throw EnvelopeError(.malformed, "sealed blob \(blobID): \(e.message)")
            }
        }
        guard r.remaining >= Format.tagSize else {
            throw EnvelopeError(.malformed, "sealed blob \(blobID): record length \(length) leaves no room for the 16-byte tag")
        }
        header = BlobHeader(blobID: blobID, kekID: kekID, dekID: dekID, agentID: agent, kind: kind,
                            sequence: sequence, captureTimeMs: time, session: session)
        serialized = r.data
        headerLength = r.offset
    }
}

/// One record of a record stream (docs/ARCHITECTURE.md, "The record stream").
public enum EnvelopeRecord: Sendable {
    case dekRecord(DEKRecord)
    case blob(SealedBlob)

    /// The record's 16-byte idempotency key: the DEK id of a DEK record, the blob id of a blob.
    public var id: Data {
        switch self {
        case .dekRecord(let r): Data(r.dekID.bytes)
        case .blob(let b): Data(b.header.blobID.bytes)
        }
    }

    /// The record's bytes.
    public var serialized: Data {
        switch self {
        case .dekRecord(let r): r.serialized
        case .blob(let b): b.serialized
        }
    }
}

/// A record stream: records concatenated, each self-delimited by its 10-byte prefix.
public enum RecordStream {
    /// Splits `data` into records and parses each (no key needed).
    ///
    /// An empty input is an empty stream. A stream cut at a record boundary parses as the records
    /// before the cut (the format has no end marker); a cut inside a record throws `.truncated`.
    /// - Throws: `EnvelopeError` from `DEKRecord(parsing:)` / `SealedBlob(parsing:)`, with the
    ///   record's index and byte offset in the message.
    public static func parse(_ data: Data) throws -> [EnvelopeRecord] {
        let data = data.startIndex == 0 ? data : Data(data)
        var records: [EnvelopeRecord] = []
        var offset = 0
        while offset < data.count {
            let head = data.subdata(in: offset..<min(offset + Format.prefixSize, data.count))
            var r = ByteReader(head, what: "record \(records.count) at byte \(offset)")
            let (type, length) = try r.prefix(available: data.count - offset)
            let bytes = data.subdata(in: offset..<offset + length)
            do {
                switch type {
                case .dekRecord: records.append(.dekRecord(try DEKRecord(parsing: bytes)))
                case .blob, .sessionBlob: records.append(.blob(try SealedBlob(parsing: bytes)))
                }
            } catch let e as EnvelopeError {
                throw EnvelopeError(e.code, "record \(records.count) at byte \(offset): \(e.message)")
            }
            offset += length
        }
        return records
    }

    /// Splits a stream whose end may have been cut while it was written (the writer killed
    /// mid-record, a copy cut short): the complete records, and where the cut record starts.
    ///
    /// Only the last record may be cut — a partial prefix, or a length reaching past the end,
    /// after a valid magic, version and type. Anything else that does not parse throws, as
    /// ``parse(_:)`` does.
    /// - Returns: the complete records, and the byte offset and length of the cut tail (nil
    ///   when the stream ends at a record boundary).
    /// - Throws: `EnvelopeError` from `DEKRecord(parsing:)` / `SealedBlob(parsing:)` or a bad prefix.
    public static func parseAllowingTornTail(_ data: Data) throws -> (records: [EnvelopeRecord], tornTail: (offset: Int, bytes: Int)?) {
        let data = data.startIndex == 0 ? data : Data(data)
        var records: [EnvelopeRecord] = []
        var offset = 0
        while offset < data.count {
            let remaining = data.count - offset
            if remaining < Format.prefixSize {
                // A prefix cut short: torn when what is there begins like a prefix.
                let head = Array(data[offset...])
                let magic = Array(Format.magic.prefix(min(4, head.count)))
                guard Array(head.prefix(4)) == magic else {
                    throw EnvelopeError(.malformed, "record \(records.count) at byte \(offset): bad magic (expected 'CSTS')")
                }
                return (records, (offset, remaining))
            }
            let head = data.subdata(in: offset..<offset + Format.prefixSize)
            var r = ByteReader(head, what: "record \(records.count) at byte \(offset)")
            let length: Int
            do {
                (_, length) = try r.prefix(available: remaining)
            } catch let e as EnvelopeError where e.code == .truncated {
                return (records, (offset, remaining))
            }
            let bytes = data.subdata(in: offset..<offset + length)
            let parsed = try parse(bytes)
            records += parsed
            offset += length
        }
        return (records, nil)
    }

    /// Concatenates the records' bytes.
    public static func encode(_ records: [EnvelopeRecord]) -> Data {
        var out = Data(capacity: records.reduce(0) { $0 + $1.serialized.count })
        for r in records { out.append(r.serialized) }
        return out
    }
}
