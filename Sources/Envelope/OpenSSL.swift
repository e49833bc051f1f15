import COpenSSL
import Foundation

/// An `EVP_PKEY*` from system OpenSSL (libcrypto 3), owned by this object and freed in `deinit`
/// (`EVP_PKEY_free` clears private key material).
///
/// Used only where swift-crypto cannot do the job: strict SPKI vs PKCS#1 public key decoding with
/// exact bit counts, and traditional `Proc-Type: 4,ENCRYPTED` private keys.
final class OpenSSLKey {
    let pointer: OpaquePointer

    init(takingOwnership pointer: OpaquePointer) { self.pointer = pointer }
    deinit { EVP_PKEY_free(pointer) }

    /// `EVP_PKEY_RSA` for RSA keys.
    var baseID: Int32 { EVP_PKEY_get_base_id(pointer) }
    var bits: Int { Int(EVP_PKEY_get_bits(pointer)) }
    var isRSA: Bool { baseID == EVP_PKEY_RSA }

    /// Decodes a DER SubjectPublicKeyInfo (`d2i_PUBKEY`); nil unless it parses and uses every byte.
    static func spki(_ der: Data) -> OpenSSLKey? {
        der.withUnsafeBytes { raw -> OpenSSLKey? in
            guard let base = raw.bindMemory(to: UInt8.self).baseAddress else { return nil }
            var p: UnsafePointer<UInt8>? = base
            guard let key = d2i_PUBKEY(nil, &p, raw.count) else { return nil }
            let owned = OpenSSLKey(takingOwnership: key)
            return p == base + raw.count ? owned : nil
        }
    }

    /// Decodes a DER PKCS#1 RSAPublicKey (`d2i_PublicKey(EVP_PKEY_RSA, …)`); nil unless it parses
    /// and uses every byte.
    static func pkcs1Public(_ der: Data) -> OpenSSLKey? {
        der.withUnsafeBytes { raw -> OpenSSLKey? in
            guard let base = raw.bindMemory(to: UInt8.self).baseAddress else { return nil }
            var p: UnsafePointer<UInt8>? = base
            guard let key = d2i_PublicKey(EVP_PKEY_RSA, nil, &p, raw.count) else { return nil }
            let owned = OpenSSLKey(takingOwnership: key)
            return p == base + raw.count ? owned : nil
        }
    }

    /// The SubjectPublicKeyInfo DER of the public part (`i2d_PUBKEY`), what
    /// `openssl pkey -pubout -outform DER` writes.
    func spkiDER() throws -> Data {
        var out: UnsafeMutablePointer<UInt8>? = nil
        let n = i2d_PUBKEY(pointer, &out)
        guard n > 0, let out else { throw EnvelopeError(.internalError, "i2d_PUBKEY failed: \(drainOpenSSLErrors())") }
        defer { CRYPTO_free(out, #fileID, #line) }
        return Data(bytes: out, count: Int(n))
    }

    /// Calls `body` with the private key as DER (`i2d_PrivateKey`: PKCS#1 RSAPrivateKey for RSA)
    /// and clears the DER buffer afterwards (`OPENSSL_clear_free`).
    func withPrivateDER<R>(_ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        var out: UnsafeMutablePointer<UInt8>? = nil
        let n = i2d_PrivateKey(pointer, &out)
        guard n > 0, let out else { throw EnvelopeError(.internalError, "i2d_PrivateKey failed: \(drainOpenSSLErrors())") }
        defer { CRYPTO_clear_free(out, Int(n), #fileID, #line) }
        return try body(UnsafeRawBufferPointer(start: out, count: Int(n)))
    }

    /// Reads a PEM private key with `PEM_read_bio_PrivateKey`, giving OpenSSL `passphrase`
    /// through a callback (never as a C string argument). Returns nil and the OpenSSL error text
    /// on failure; `badDecrypt` tells whether OpenSSL reported a decryption failure.
    static func readPrivateKeyPEM(_ pem: String, passphrase: SecretBytes?) -> (OpenSSLKey?, errors: String, badDecrypt: Bool) {
        ERR_clear_error()
        var pem = pem
        return pem.withUTF8 { utf8 -> (OpenSSLKey?, errors: String, badDecrypt: Bool) in
            guard let bio = BIO_new_mem_buf(utf8.baseAddress, Int32(utf8.count)) else {
                return (nil, "BIO_new_mem_buf failed", false)
            }
            defer { BIO_free(bio) }
            let box = PassphraseBox(passphrase)
            let key = withExtendedLifetime(box) {
                PEM_read_bio_PrivateKey(bio, nil, opensslPassphraseCallback,
                                        Unmanaged.passUnretained(box).toOpaque())
            }
            if let key { return (OpenSSLKey(takingOwnership: key), "", false) }
            let first = ERR_peek_error()
            let lib = ERR_GET_LIB_shim(first), reason = ERR_GET_REASON_shim(first)
            let bad = (lib == ERR_LIB_PEM && (reason == PEM_R_BAD_DECRYPT || reason == PEM_R_BAD_PASSWORD_READ))
                || (lib == ERR_LIB_EVP && reason == EVP_R_BAD_DECRYPT)
                || box.calls > 0
            return (nil, drainOpenSSLErrors(), bad)
        }
    }
}

/// Carries the passphrase into the C callback. Lives only for one `PEM_read_bio_PrivateKey` call.
private final class PassphraseBox {
    let secret: SecretBytes?
    var calls = 0
    init(_ secret: SecretBytes?) { self.secret = secret }
}

/// `pem_password_cb`: copies the passphrase into OpenSSL's buffer (which OpenSSL cleanses after
/// use). Returns -1 (abort) when there is no passphrase or it does not fit.
private func opensslPassphraseCallback(_ buf: UnsafeMutablePointer<CChar>?, _ size: Int32, _ rwflag: Int32,
                                       _ u: UnsafeMutableRawPointer?) -> Int32 {
    guard let buf, let u else { return -1 }
    let box = Unmanaged<PassphraseBox>.fromOpaque(u).takeUnretainedValue()
    box.calls += 1
    guard let secret = box.secret, secret.count > 0, secret.count <= Int(size) else { return -1 }
    return secret.withUnsafeBytes { bytes in
        UnsafeMutableRawPointer(buf).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        return Int32(bytes.count)
    }
}

/// Empties OpenSSL's thread-local error queue into one line of text (no secrets: OpenSSL error
/// strings name libraries, functions and reasons only).
func drainOpenSSLErrors() -> String {
    var parts: [String] = []
    while true {
        let e = ERR_get_error()
        if e == 0 { break }
        var buf = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(e, &buf, buf.count)
        parts.append(String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    return parts.isEmpty ? "no OpenSSL error reported" : parts.joined(separator: "; ")
}

/// One AES-256-GCM encryption with system OpenSSL's EVP interface (NIST SP 800-38D), writing
/// ciphertext and tag straight into the caller's buffer.
///
/// Used for sealing because swift-crypto's `AES.GCM.seal` returns fresh buffers (the sealed box
/// and its combined copy), which made 1 MiB seals 5x slower than `openssl speed` here; opening
/// stays on swift-crypto, so every test round trip crosses two independent implementations.
/// Owns one `EVP_CIPHER_CTX*`, freed in `deinit`.
final class OpenSSLGCMSealer {
    private let ctx: OpaquePointer

    init() throws {
        guard let c = EVP_CIPHER_CTX_new() else {
            throw EnvelopeError(.internalError, "EVP_CIPHER_CTX_new failed: \(drainOpenSSLErrors())")
        }
        ctx = c
    }

    deinit { EVP_CIPHER_CTX_free(ctx) }  // also cleanses the expanded key

    /// Encrypts `plaintext` under `key` (32 bytes) and `nonce` (12 bytes) with `aad`; writes the
    /// ciphertext (same length as `plaintext`) to `ciphertext` and the 16-byte tag to `tag`.
    func seal(key: UnsafeRawBufferPointer, nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer,
              plaintext: UnsafeRawBufferPointer, ciphertext: UnsafeMutableRawPointer, tag: UnsafeMutableRawPointer) throws {
        precondition(key.count == 32 && nonce.count == Format.nonceSize)
        func check(_ ok: Int32, _ what: String) throws {
            guard ok == 1 else { throw EnvelopeError(.internalError, "AES-256-GCM \(what) failed: \(drainOpenSSLErrors())") }
        }
        try check(EVP_EncryptInit_ex2(ctx, AES256GCMCipher.shared.pointer,
                                     key.bindMemory(to: UInt8.self).baseAddress,
                                     nonce.bindMemory(to: UInt8.self).baseAddress, nil), "init")
        var outLength: Int32 = 0
        if aad.count > 0 {
            try check(EVP_EncryptUpdate(ctx, nil, &outLength, aad.bindMemory(to: UInt8.self).baseAddress, Int32(aad.count)), "AAD")
        }
        // EVP lengths are Int32: feed at most 1 GiB per call (GCM is a stream mode, so chunking is exact).
        let chunk = 1 << 30
        var done = 0
        let input = plaintext.bindMemory(to: UInt8.self)
        let output = ciphertext.assumingMemoryBound(to: UInt8.self)
        while done < plaintext.count {
            let n = min(chunk, plaintext.count - done)
            try check(EVP_EncryptUpdate(ctx, output + done, &outLength, input.baseAddress! + done, Int32(n)), "update")
            guard Int(outLength) == n else { throw EnvelopeError(.internalError, "AES-256-GCM update wrote \(outLength) of \(n) bytes") }
            done += n
        }
        try check(EVP_EncryptFinal_ex(ctx, output + done, &outLength), "final")
        try check(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, Int32(Format.tagSize), tag), "get tag")
    }
}

/// The AES-256-GCM `EVP_CIPHER*`, fetched once from the default provider (`EVP_CIPHER_fetch`)
/// instead of an implicit fetch on every seal. Freed in `deinit` (never, for the shared one).
///
/// `@unchecked Sendable`: a fetched `EVP_CIPHER` is immutable and reference-counted; OpenSSL 3
/// documents it as safe to use from many threads at once.
final class AES256GCMCipher: @unchecked Sendable {
    static let shared = AES256GCMCipher()
    let pointer: OpaquePointer

    private init() {
        guard let c = EVP_CIPHER_fetch(nil, "AES-256-GCM", nil) else {
            fatalError("OpenSSL has no AES-256-GCM in its default provider: \(drainOpenSSLErrors())")
        }
        pointer = c
    }

    deinit { EVP_CIPHER_free(pointer) }
}
