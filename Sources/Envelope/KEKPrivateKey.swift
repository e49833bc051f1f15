import Crypto
import _CryptoExtras
import Foundation

/// The private half of a KEK, used by admin tools to unwrap DEK records.
///
/// Reads every PEM form `openssl` writes for RSA keys:
/// - `BEGIN ENCRYPTED PRIVATE KEY` (PKCS#8 PBES2, RFC 8018; `openssl genrsa -aes256`, OpenSSL 3's
///   default) through swift-crypto;
/// - `BEGIN RSA PRIVATE KEY` with `Proc-Type: 4,ENCRYPTED` (traditional, AES-256-CBC or
///   DES-EDE3-CBC; `openssl rsa -traditional -aes256|-des3`) through system OpenSSL's
///   `PEM_read_bio_PrivateKey` with a passphrase callback;
/// - unencrypted `BEGIN RSA PRIVATE KEY` (PKCS#1) and `BEGIN PRIVATE KEY` (PKCS#8).
///
/// The passphrase is only read through callbacks and never copied into Swift strings; the
/// intermediate private-key DER is cleared when loading ends; the key itself lives in
/// swift-crypto's BoringSSL object, whose allocator zeroes memory when it is freed.
public final class KEKPrivateKey: Sendable {
    /// The KEK id of the public half (SHA-256 of its SPKI DER).
    public let id: KEKID
    /// Modulus size in bits.
    public let bits: Int
    private let box: RSAPrivateBox
    var key: _RSA.Encryption.PrivateKey { box.key }

    /// Loads a private key from a PEM file.
    ///
    /// - Parameter passphrase: needed for encrypted forms; ignored for unencrypted ones.
    /// - Throws: `EnvelopeError` `.io`, `.invalidKey` (empty, garbage), `.wrongPassphrase` (wrong,
    ///   empty or missing passphrase for an encrypted key), `.unsupportedKey` (a public key, not
    ///   RSA), `.keyTooSmall`.
    public convenience init(pemFile path: String, passphrase: SecretBytes?) throws {
        let data = try readFile(path, what: "private key")
        guard let text = String(data: data, encoding: .utf8) else {
            throw EnvelopeError(.invalidKey, "\(path): private key file is not text (expected PEM)")
        }
        try self.init(pemRepresentation: text, passphrase: passphrase, source: path)
    }

    /// Loads a private key from PEM text; `source` names it in errors. Throws as `init(pemFile:passphrase:)`.
    public init(pemRepresentation: String, passphrase: SecretBytes?, source: String) throws {
        let block = try PEMBlock.first(in: pemRepresentation, source: source)
        let encrypted = block.label == "ENCRYPTED PRIVATE KEY" || block.isTraditionallyEncrypted
        if encrypted, (passphrase?.count ?? 0) == 0 {
            throw EnvelopeError(.wrongPassphrase, "\(source): the private key is encrypted and the passphrase is \(passphrase == nil ? "missing" : "empty")")
        }
        let loaded: _RSA.Encryption.PrivateKey
        switch block.label {
        case "ENCRYPTED PRIVATE KEY":
            let signing: _RSA.Signing.PrivateKey
            do {
                signing = try _RSA.Signing.PrivateKey(encryptedPEMRepresentation: block.text) { (setter: (UnsafeRawBufferPointer) -> Void) in
                    passphrase!.withUnsafeBytes { setter($0) }
                }
            } catch {
                throw EnvelopeError(.wrongPassphrase, "\(source): cannot decrypt the PKCS#8 private key: wrong passphrase (or damaged file)")
            }
            var der = signing.derRepresentation
            defer { der.resetBytes(in: 0..<der.count) }
            loaded = try Self.makeKey(der: der, source: source)
        case "RSA PRIVATE KEY" where block.isTraditionallyEncrypted:
            let (k, errors, badDecrypt) = OpenSSLKey.readPrivateKeyPEM(block.text, passphrase: passphrase)
            guard let k else {
                if badDecrypt {
                    throw EnvelopeError(.wrongPassphrase, "\(source): cannot decrypt the traditional (\(block.headers["DEK-Info"]?.split(separator: ",").first ?? "?")) private key: wrong passphrase (or damaged file)")
                }
                throw EnvelopeError(.invalidKey, "\(source): cannot read the encrypted RSA private key: \(errors)")
            }
            guard k.isRSA else { throw EnvelopeError(.unsupportedKey, "\(source): private key is not RSA") }
            loaded = try k.withPrivateDER { try Self.makeKey(der: $0, source: source) }
        case "RSA PRIVATE KEY", "PRIVATE KEY":
            do {
                loaded = try _RSA.Encryption.PrivateKey(unsafePEMRepresentation: block.text)
            } catch {
                throw EnvelopeError(.invalidKey, "\(source): '\(block.label)' body is not a valid RSA private key")
            }
        case "PUBLIC KEY", "RSA PUBLIC KEY":
            throw EnvelopeError(.unsupportedKey, "\(source): holds a public key ('\(block.label)'); unwrapping needs the private key (keypair.pem)")
        default:
            throw EnvelopeError(.unsupportedKey, "\(source): PEM label '\(block.label)' is not an RSA private key")
        }
        guard loaded.keySizeInBits >= 2048 else {
            throw EnvelopeError(.keyTooSmall, "\(source): RSA key is \(loaded.keySizeInBits) bits; KEKs must be at least 2048 bits")
        }
        box = RSAPrivateBox(key: loaded)
        bits = loaded.keySizeInBits
        id = KEKID(bytes: Array(SHA256.hash(data: loaded.publicKey.derRepresentation)))!
    }

    /// Whether the PEM private key in `path` is encrypted (PKCS#8 PBES2 or traditional
    /// `Proc-Type: 4,ENCRYPTED`), so a passphrase must be asked for before loading it.
    /// - Throws: `EnvelopeError` `.io` or `.invalidKey` when the file is unreadable or not PEM.
    public static func requiresPassphrase(pemFile path: String) throws -> Bool {
        let data = try readFile(path, what: "private key")
        guard let text = String(data: data, encoding: .utf8) else {
            throw EnvelopeError(.invalidKey, "\(path): private key file is not text (expected PEM)")
        }
        let block = try PEMBlock.first(in: text, source: path)
        return block.label == "ENCRYPTED PRIVATE KEY" || block.isTraditionallyEncrypted
    }

    private static func makeKey(der: some DataProtocol, source: String) throws -> _RSA.Encryption.PrivateKey {
        do {
            return try _RSA.Encryption.PrivateKey(unsafeDERRepresentation: der)
        } catch {
            throw EnvelopeError(.unsupportedKey, "\(source): decrypted key is not a usable RSA private key (swift-crypto: \(error))")
        }
    }

    /// Unwraps a DEK record made for this key and checks its key commitment.
    ///
    /// - Returns: an opener holding the DEK (locked memory, zeroized when the opener is freed).
    /// - Throws: `EnvelopeError` `.keyMismatch` (record names another KEK), `.unwrapFailed`
    ///   (RSA-OAEP decoding failed), `.commitmentMismatch` (DEK or record fields changed).
    public func unwrap(_ record: DEKRecord) throws -> BlobOpener {
        guard record.kekID == id else {
            throw EnvelopeError(.keyMismatch, "DEK record \(record.dekID): wrapped to KEK \(record.kekID), but this private key is KEK \(id)")
        }
        var plain: Data
        do {
            plain = try key.decrypt(record.wrappedDEK, padding: .PKCS1_OAEP_SHA256)
        } catch {
            throw EnvelopeError(.unwrapFailed, "DEK record \(record.dekID): RSA-OAEP unwrap failed (wrapped DEK damaged or not made for KEK \(id))")
        }
        defer { plain.resetBytes(in: 0..<plain.count) }
        guard plain.count == Format.dekSize else {
            throw EnvelopeError(.unwrapFailed, "DEK record \(record.dekID): unwrapped key is \(plain.count) bytes, expected \(Format.dekSize)")
        }
        let dek = SecretBytes(copying: plain)
        let expected = DEKCommitment.compute(dek: dek, record: record)
        guard constantTimeEqual(expected, record.commitment) else {
            throw EnvelopeError(.commitmentMismatch, "DEK record \(record.dekID): key commitment does not match the unwrapped DEK and the record's fields")
        }
        return BlobOpener(dekID: record.dekID, kekID: record.kekID, dek: dek)
    }
}

/// The DEK commitment (docs/FORMAT.md): HKDF-SHA256(IKM = DEK, salt = DEK id,
/// info = "CSTS v1 DEK commitment" ‖ record bytes 0 … end of agent id), 32 bytes.
enum DEKCommitment {
    static func compute(dek: SecretBytes, dekID: DEKID, committed: Data) -> [UInt8] {
        let ikm = dek.withUnsafeBytes { SymmetricKey(data: $0) }
        let out = HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, salt: dekID.bytes,
                                         info: Format.commitmentInfo + Array(committed),
                                         outputByteCount: Format.commitmentSize)
        return out.withUnsafeBytes { Array($0) }
    }

    static func compute(dek: SecretBytes, record: DEKRecord) -> [UInt8] {
        compute(dek: dek, dekID: record.dekID,
                committed: DEKRecord.committedBytes(dekID: record.dekID, kekID: record.kekID,
                                                    agentIDBytes: Array(record.agentID.utf8),
                                                    creationTimeMs: record.creationTimeMs,
                                                    wrappedLength: record.wrappedDEK.count))
    }
}
