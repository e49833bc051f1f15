import COpenSSL
import Foundation

/// A freshly generated KEK pair, as PEM text ready to be written to `keypair.pem` and
/// `publickey.crt` (`custos keys generate`).
///
/// Neither field is secret: the private key is encrypted under the passphrase. The plaintext
/// private key lived only in an OpenSSL `EVP_PKEY`, freed (and cleansed) before this value exists.
public struct GeneratedKeyPair: Sendable {
    /// `-----BEGIN ENCRYPTED PRIVATE KEY-----`: PKCS#8 EncryptedPrivateKeyInfo (RFC 5208 §6) with
    /// PBES2 (RFC 8018 §6.2), PBKDF2-HMAC-SHA256, AES-256-CBC — the form `openssl genrsa -aes256`
    /// writes under OpenSSL 3.
    public let encryptedPrivateKeyPEM: String
    /// `-----BEGIN PUBLIC KEY-----`: SubjectPublicKeyInfo (RFC 5280 §4.1), the form
    /// `openssl rsa -pubout` writes.
    public let publicKeyPEM: String
    /// The KEK id of the public key (SHA-256 of the SPKI DER).
    public let id: KEKID
    /// Modulus size in bits.
    public let bits: Int
}

/// RSA KEK generation through system OpenSSL (libcrypto 3).
///
/// swift-crypto can generate RSA keys but cannot write an encrypted PKCS#8 PEM; OpenSSL's
/// `PEM_write_bio_PKCS8PrivateKey` with `EVP_aes_256_cbc()` is the exact code path behind
/// `openssl genrsa -aes256`, so the file is byte-format identical to what that command writes.
public enum KeyGeneration {
    /// Smallest passphrase accepted, in bytes (what `openssl genrsa` requires when prompting).
    public static let minimumPassphraseBytes = 4
    /// Key sizes accepted, in bits.
    public static let allowedBits: Set<Int> = [2048, 3072, 4096]

    /// Generates an RSA key pair (public exponent 65537) and encodes it.
    ///
    /// - Parameters:
    ///   - bits: modulus size, one of `allowedBits`.
    ///   - passphrase: protects the private key; at least `minimumPassphraseBytes` bytes. Passed to
    ///     OpenSSL as a pointer into the `SecretBytes` (never copied into a Swift string).
    /// - Throws: `EnvelopeError` `.invalidArgument` (bits or passphrase length), `.internalError`
    ///   (OpenSSL failure, with OpenSSL's error text, which never contains key material).
    public static func generateRSA(bits: Int = 2048, passphrase: SecretBytes) throws -> GeneratedKeyPair {
        guard allowedBits.contains(bits) else {
            throw EnvelopeError(.invalidArgument, "key generation: \(bits) bits is not allowed (expected one of \(allowedBits.sorted()))")
        }
        guard passphrase.count >= minimumPassphraseBytes else {
            throw EnvelopeError(.invalidArgument, "key generation: the passphrase is \(passphrase.count) bytes; at least \(minimumPassphraseBytes) are required")
        }
        guard passphrase.count <= Int(Int32.max) else {
            throw EnvelopeError(.invalidArgument, "key generation: the passphrase is too long")
        }
        ERR_clear_error()
        let key = try generate(bits: bits)
        let privatePEM = try memoryBIOText(what: "PEM_write_bio_PKCS8PrivateKey") { bio in
            passphrase.withUnsafeBytes { raw in
                PEM_write_bio_PKCS8PrivateKey(bio, key.pointer, EVP_aes_256_cbc(),
                                              raw.baseAddress?.assumingMemoryBound(to: CChar.self),
                                              Int32(raw.count), nil, nil)
            }
        }
        let publicPEM = try memoryBIOText(what: "PEM_write_bio_PUBKEY") { bio in
            PEM_write_bio_PUBKEY(bio, key.pointer)
        }
        // Derive the id exactly as KEKPublicKey does, from the PEM just written.
        let kek = try KEKPublicKey(pemRepresentation: publicPEM, source: "generated public key")
        return GeneratedKeyPair(encryptedPrivateKeyPEM: privatePEM, publicKeyPEM: publicPEM,
                                id: kek.id, bits: kek.bits)
    }

    /// `EVP_PKEY_keygen` for RSA with `bits` (OpenSSL 3 `EVP_RSA_gen` without its variadic helper).
    private static func generate(bits: Int) throws -> OpenSSLKey {
        guard let ctx = EVP_PKEY_CTX_new_from_name(nil, "RSA", nil) else {
            throw EnvelopeError(.internalError, "key generation: EVP_PKEY_CTX_new_from_name(RSA) failed: \(drainOpenSSLErrors())")
        }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_keygen_init(ctx) == 1, EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, Int32(bits)) == 1 else {
            throw EnvelopeError(.internalError, "key generation: RSA keygen setup failed: \(drainOpenSSLErrors())")
        }
        var pkey: OpaquePointer? = nil
        guard EVP_PKEY_generate(ctx, &pkey) == 1, let pkey else {
            throw EnvelopeError(.internalError, "key generation: EVP_PKEY_generate failed: \(drainOpenSSLErrors())")
        }
        return OpenSSLKey(takingOwnership: pkey)
    }

    /// Runs `write` on a fresh memory BIO and returns what it wrote as text.
    private static func memoryBIOText(what: String, _ write: (OpaquePointer) -> Int32) throws -> String {
        guard let bio = BIO_new(BIO_s_mem()) else {
            throw EnvelopeError(.internalError, "key generation: BIO_new failed: \(drainOpenSSLErrors())")
        }
        defer { BIO_free(bio) }
        guard write(bio) == 1 else {
            throw EnvelopeError(.internalError, "key generation: \(what) failed: \(drainOpenSSLErrors())")
        }
        var raw: UnsafeMutablePointer<CChar>? = nil
        // BIO_get_mem_data is a macro over BIO_ctrl(BIO_CTRL_INFO).
        let n = withUnsafeMutablePointer(to: &raw) { p in
            BIO_ctrl(bio, BIO_CTRL_INFO, 0, UnsafeMutableRawPointer(p))
        }
        guard n > 0, let raw else {
            throw EnvelopeError(.internalError, "key generation: \(what) wrote nothing")
        }
        return String(decoding: UnsafeRawBufferPointer(start: raw, count: Int(n)), as: UTF8.self)
    }
}
