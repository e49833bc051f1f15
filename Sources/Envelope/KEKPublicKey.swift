import Crypto
import _CryptoExtras
import Foundation

/// A KEK: the RSA public key DEKs are wrapped to (RSA-OAEP, SHA-256, MGF1-SHA-256; RFC 8017 §7.1).
///
/// Accepts PEM `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo, RFC 5280 §4.1; what `openssl rsa -pubout`
/// writes) and `BEGIN RSA PUBLIC KEY` (PKCS#1 RSAPublicKey, RFC 8017 §A.1.1), RSA only, ≥ 2048 bits.
public struct KEKPublicKey: Sendable {
    /// SHA-256 of the SPKI DER (`openssl pkey -pubin -in F -outform DER | sha256sum`).
    public let id: KEKID
    /// Modulus size in bits (≥ 2048).
    public let bits: Int
    /// The SubjectPublicKeyInfo DER.
    public let spkiDER: Data
    private let box: RSAPublicBox
    var key: _RSA.Encryption.PublicKey { box.key }

    /// Loads a KEK from a PEM file.
    ///
    /// - Throws: `EnvelopeError` `.io` (missing/unreadable), `.invalidKey` (empty, garbage, bad
    ///   base64, a PKCS#1 body under an SPKI label or the reverse), `.privateKeyGiven`,
    ///   `.unsupportedKey` (not RSA, certificate, other labels), `.keyTooSmall` (< 2048 bits).
    public init(pemFile path: String) throws {
        let data = try readFile(path, what: "KEK")
        guard let text = String(data: data, encoding: .utf8) else {
            throw EnvelopeError(.invalidKey, "\(path): KEK file is not text (expected a PEM public key)")
        }
        try self.init(pemRepresentation: text, source: path)
    }

    /// Loads a KEK from PEM text; `source` names it in errors (a path, or e.g. "collector registry").
    /// - Throws: as `init(pemFile:)`.
    public init(pemRepresentation: String, source: String) throws {
        let block = try PEMBlock.first(in: pemRepresentation, source: source)
        let parsed: OpenSSLKey
        switch block.label {
        case "PUBLIC KEY":
            guard let k = OpenSSLKey.spki(block.der) else {
                if OpenSSLKey.pkcs1Public(block.der) != nil {
                    throw EnvelopeError(.invalidKey, "\(source): 'BEGIN PUBLIC KEY' holds a PKCS#1 RSAPublicKey body; expected SubjectPublicKeyInfo (use the label 'RSA PUBLIC KEY' or `openssl rsa -RSAPublicKey_in -pubout`)")
                }
                throw EnvelopeError(.invalidKey, "\(source): 'BEGIN PUBLIC KEY' body is not a valid SubjectPublicKeyInfo")
            }
            parsed = k
        case "RSA PUBLIC KEY":
            guard let k = OpenSSLKey.pkcs1Public(block.der) else {
                if OpenSSLKey.spki(block.der) != nil {
                    throw EnvelopeError(.invalidKey, "\(source): 'BEGIN RSA PUBLIC KEY' holds a SubjectPublicKeyInfo body; expected PKCS#1 RSAPublicKey (use the label 'PUBLIC KEY')")
                }
                throw EnvelopeError(.invalidKey, "\(source): 'BEGIN RSA PUBLIC KEY' body is not a valid PKCS#1 RSAPublicKey")
            }
            parsed = k
        case "PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "EC PRIVATE KEY":
            throw EnvelopeError(.privateKeyGiven, "\(source): holds a private key ('\(block.label)') where the public KEK belongs; give the public key (`openssl rsa -in keypair.pem -pubout -out publickey.crt`)")
        default:
            throw EnvelopeError(.unsupportedKey, "\(source): PEM label '\(block.label)' is not an RSA public key (expected 'PUBLIC KEY' or 'RSA PUBLIC KEY')")
        }
        guard parsed.isRSA else {
            throw EnvelopeError(.unsupportedKey, "\(source): public key is not RSA (OpenSSL key type \(parsed.baseID)); the KEK must be RSA")
        }
        let bits = parsed.bits
        guard bits >= 2048 else {
            throw EnvelopeError(.keyTooSmall, "\(source): RSA key is \(bits) bits; the KEK must be at least 2048 bits")
        }
        let spki = try parsed.spkiDER()
        do {
            box = RSAPublicBox(key: try _RSA.Encryption.PublicKey(derRepresentation: spki))
        } catch {
            throw EnvelopeError(.unsupportedKey, "\(source): swift-crypto refused the \(bits)-bit RSA key (modulus must be a multiple of 8 bits): \(error)")
        }
        self.bits = bits
        spkiDER = spki
        id = KEKID(bytes: Array(SHA256.hash(data: spki)))!
    }

    /// RSA-OAEP(SHA-256, MGF1-SHA-256) encryption of `secret` (RFC 8017 §7.1.1), no label.
    func wrap(_ secret: SecretBytes) throws -> Data {
        do {
            return try secret.withUnsafeBytes { try key.encrypt($0, padding: .PKCS1_OAEP_SHA256) }
        } catch {
            throw EnvelopeError(.internalError, "RSA-OAEP wrap to KEK \(id) failed: \(error)")
        }
    }
}

/// Holds a swift-crypto RSA public key, which is not marked `Sendable`.
///
/// `@unchecked Sendable`: the key is a `let` never mutated after init; BoringSSL RSA objects are
/// safe for concurrent use (BoringSSL `rsa.h`: "RSA objects are thread-safe for concurrent
/// operations"), and encryption uses only the public part.
struct RSAPublicBox: @unchecked Sendable {
    let key: _RSA.Encryption.PublicKey
}

/// Holds a swift-crypto RSA private key, which is not marked `Sendable`.
///
/// `@unchecked Sendable`: the key is a `let` never mutated after init; BoringSSL guards the
/// lazily built blinding and Montgomery state of an `RSA` with its own lock, so concurrent
/// decryptions are safe (BoringSSL `rsa.h`).
struct RSAPrivateBox: @unchecked Sendable {
    let key: _RSA.Encryption.PrivateKey
}
