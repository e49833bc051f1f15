import Crypto
import Foundation
import Synchronization

/// When to replace a DEK. A nil limit is not checked.
public struct RotationPolicy: Sendable, Equatable {
    /// Rotate after this many blobs.
    public var maxBlobs: Int?
    /// Rotate after this many plaintext bytes.
    public var maxBytes: Int?
    /// Rotate after this many seconds.
    public var maxAge: TimeInterval?

    public init(maxBlobs: Int? = nil, maxBytes: Int? = nil, maxAge: TimeInterval? = nil) {
        self.maxBlobs = maxBlobs
        self.maxBytes = maxBytes
        self.maxAge = maxAge
    }
}

/// The per-blob AES-256-GCM key and nonce: HKDF-SHA256(IKM = DEK, salt = blob id,
/// info = "CSTS v1 blob key+nonce"), 44 bytes = 32-byte key ‖ 12-byte nonce (docs/FORMAT.md).
enum BlobKey {
    static func derive(dek: SecretBytes, blobID: BlobID) -> (SymmetricKey, AES.GCM.Nonce) {
        let ikm = dek.withUnsafeBytes { SymmetricKey(data: $0) }
        let okm = HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, salt: blobID.bytes, info: Format.blobKeyInfo,
                                         outputByteCount: 32 + Format.nonceSize)
        return okm.withUnsafeBytes { raw in
            (SymmetricKey(data: UnsafeRawBufferPointer(rebasing: raw[0..<32])),
             try! AES.GCM.Nonce(data: UnsafeRawBufferPointer(rebasing: raw[32..<(32 + Format.nonceSize)])))
        }
    }
}

/// A live DEK on the agent: a fresh random 32-byte DEK (locked memory, zeroized in `deinit`),
/// wrapped to a KEK at init, that seals blobs with AES-256-GCM (NIST SP 800-38D) under per-blob
/// HKDF-SHA256 keys.
///
/// Thread-safe: `seal` may be called from any thread; sequence numbers are unique and increase.
public final class DEKSession: Sendable {
    let dek: SecretBytes
    /// The DEK record to send once before any blob sealed here.
    public let record: DEKRecord
    /// When the DEK was made.
    public let createdAt: Date
    private let agentIDBytes: [UInt8]
    private struct Counters { var sequence: UInt64 = 0; var blobs = 0; var bytes = 0 }
    private let counters = Mutex(Counters())

    /// Makes a fresh DEK and its DEK record.
    ///
    /// - Parameters:
    ///   - kek: the public key to wrap the DEK to.
    ///   - agentID: 1–255 UTF-8 bytes, written in the DEK record and each blob header.
    ///   - now: creation time (record field `creation time`, ms since 1970 UTC).
    /// - Throws: `EnvelopeError.invalidArgument` for a bad agent id; `.internalError` if RSA fails.
    public init(kek: KEKPublicKey, agentID: String, now: Date = Date()) throws {
        agentIDBytes = try Format.checkAgentID(agentID, field: "agent id")
        dek = SecretBytes.random(count: Format.dekSize)
        createdAt = now
        let dekID = DEKID.random()
        let timeMs = Int64((now.timeIntervalSince1970 * 1000).rounded(.down))
        let wrapped = try kek.wrap(dek)
        let committed = DEKRecord.committedBytes(dekID: dekID, kekID: kek.id, agentIDBytes: agentIDBytes,
                                                 creationTimeMs: timeMs, wrappedLength: wrapped.count)
        let commitment = DEKCommitment.compute(dek: dek, dekID: dekID, committed: committed)
        record = DEKRecord(dekID: dekID, kekID: kek.id, agentID: agentID, creationTimeMs: timeMs,
                           wrappedDEK: wrapped, commitment: Data(commitment))
    }

    /// Seals `plaintext` as one blob under this DEK with a fresh random blob id.
    ///
    /// - Parameters:
    ///   - plaintext: the bytes to protect (at most 4 GiB minus the header).
    ///   - kind: what they are (in the authenticated header).
    ///   - captureTimeMs: capture time, ms since 1970-01-01 UTC (in the authenticated header).
    ///   - session: the graphical session (user, display) it comes from: a sealed session blob
    ///     (record type 3) names it in the authenticated header; nil: a plain sealed blob (type 2).
    /// - Throws: `EnvelopeError.invalidArgument` when the blob would not fit the u32 length field.
    public func seal(_ plaintext: Data, kind: CaptureKind, captureTimeMs: Int64, session: BlobSession? = nil) throws -> SealedBlob {
        let headerLength = BlobHeader.length(agentIDBytes: agentIDBytes.count, session: session)
        guard plaintext.count <= Format.maxRecordSize - headerLength - Format.tagSize else {
            throw EnvelopeError(.invalidArgument, "seal: \(plaintext.count) bytes exceed the largest blob (\(Format.maxRecordSize - headerLength - Format.tagSize) bytes)")
        }
        let sequence = counters.withLock { c in
            defer { c.sequence += 1; c.blobs += 1; c.bytes += plaintext.count }
            return c.sequence
        }
        let header = BlobHeader(blobID: BlobID.random(), kekID: record.kekID, dekID: record.dekID,
                                agentID: record.agentID, kind: kind, sequence: sequence, captureTimeMs: captureTimeMs,
                                session: session)
        let aad = header.serialized(agentIDBytes: agentIDBytes, ciphertextLength: plaintext.count)
        let (key, nonce) = BlobKey.derive(dek: dek, blobID: header.blobID)
        let total = headerLength + plaintext.count + Format.tagSize
        // One output buffer; header, ciphertext and tag are written into it in place.
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: total, alignment: 16)
        var out = Data(bytesNoCopy: buffer, count: total, deallocator: .custom { p, _ in p.deallocate() })
        do {
            let sealer = try OpenSSLGCMSealer()
            try aad.withUnsafeBytes { aadBytes in
                buffer.copyMemory(from: aadBytes.baseAddress!, byteCount: headerLength)
                try key.withUnsafeBytes { k in
                    try nonce.withUnsafeBytes { n in
                        try plaintext.withUnsafeBytes { p in
                            try sealer.seal(key: k, nonce: n, aad: aadBytes, plaintext: p,
                                            ciphertext: buffer + headerLength, tag: buffer + headerLength + plaintext.count)
                        }
                    }
                }
            }
        } catch let e as EnvelopeError {
            out.resetBytes(in: 0..<total)
            throw EnvelopeError(e.code, "seal of blob \(header.blobID): \(e.message)")
        }
        return SealedBlob(header: header, serialized: out, headerLength: headerLength)
    }

    /// Number of blobs sealed so far.
    public var blobsSealed: Int { counters.withLock { $0.blobs } }
    /// Plaintext bytes sealed so far.
    public var bytesSealed: Int { counters.withLock { $0.bytes } }

    /// Whether any limit of `policy` is reached (blobs ≥ maxBlobs, bytes ≥ maxBytes, or age ≥ maxAge).
    public func needsRotation(_ policy: RotationPolicy, now: Date) -> Bool {
        let (blobs, bytes) = counters.withLock { ($0.blobs, $0.bytes) }
        if let m = policy.maxBlobs, blobs >= m { return true }
        if let m = policy.maxBytes, bytes >= m { return true }
        if let m = policy.maxAge, now.timeIntervalSince(createdAt) >= m { return true }
        return false
    }
}

/// Opens blobs sealed under one DEK (the admin side). Holds the unwrapped DEK in locked memory,
/// zeroized when the opener is freed. Thread-safe.
public final class BlobOpener: Sendable {
    /// The DEK this opener holds.
    public let dekID: DEKID
    /// The KEK the DEK was wrapped to.
    public let kekID: KEKID
    let dek: SecretBytes

    init(dekID: DEKID, kekID: KEKID, dek: SecretBytes) {
        self.dekID = dekID
        self.kekID = kekID
        self.dek = dek
    }

    /// Authenticates and decrypts `blob`.
    ///
    /// - Returns: the plaintext.
    /// - Throws: `EnvelopeError` `.keyMismatch` (blob names another KEK), `.dekMismatch` (blob
    ///   names another DEK), `.authenticationFailed` (any header or ciphertext byte changed).
    public func open(_ blob: SealedBlob) throws -> Data {
        let h = blob.header
        guard h.kekID == kekID else {
            throw EnvelopeError(.keyMismatch, "blob \(h.blobID): sealed for KEK \(h.kekID), but this DEK belongs to KEK \(kekID)")
        }
        guard h.dekID == dekID else {
            throw EnvelopeError(.dekMismatch, "blob \(h.blobID): sealed under DEK \(h.dekID), but this opener holds DEK \(dekID)")
        }
        let (key, nonce) = BlobKey.derive(dek: dek, blobID: h.blobID)
        let s = blob.serialized
        let tagStart = s.count - Format.tagSize
        do {
            let box = try AES.GCM.SealedBox(nonce: nonce, ciphertext: s[blob.headerLength..<tagStart],
                                            tag: s[tagStart...])
            return try AES.GCM.open(box, using: key, authenticating: s[0..<blob.headerLength])
        } catch {
            throw EnvelopeError(.authenticationFailed, "blob \(h.blobID) (agent \(h.agentID), sequence \(h.sequence)): authentication failed, header or ciphertext was changed")
        }
    }
}
