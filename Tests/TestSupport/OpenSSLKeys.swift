import Foundation

/// The PEM forms `openssl` writes for an RSA private key.
public enum OpenSSLKeyForm: String, CaseIterable, Sendable {
    /// `BEGIN ENCRYPTED PRIVATE KEY`, PKCS#8 PBES2 (AES-256-CBC): `openssl genrsa -aes256` (OpenSSL 3 default).
    case pkcs8Encrypted
    /// `BEGIN RSA PRIVATE KEY` + `Proc-Type: 4,ENCRYPTED`, `DEK-Info: AES-256-CBC`: `openssl rsa -traditional -aes256`.
    case traditionalAES256
    /// `BEGIN RSA PRIVATE KEY` + `Proc-Type: 4,ENCRYPTED`, `DEK-Info: DES-EDE3-CBC`: `openssl rsa -traditional -des3`.
    case traditionalDES3
    /// Unencrypted `BEGIN RSA PRIVATE KEY` (PKCS#1): `openssl rsa -traditional`.
    case pkcs1Plain
    /// Unencrypted `BEGIN PRIVATE KEY` (PKCS#8): `openssl pkcs8 -topk8 -nocrypt`.
    case pkcs8Plain

    /// Whether the form needs a passphrase.
    public var isEncrypted: Bool {
        switch self {
        case .pkcs8Encrypted, .traditionalAES256, .traditionalDES3: true
        case .pkcs1Plain, .pkcs8Plain: false
        }
    }
}

/// One RSA key pair made with the `openssl` CLI, in every PEM form, in one directory.
public struct OpenSSLKeySet: Sendable {
    /// Folder holding the files.
    public let directory: String
    /// The passphrase of the encrypted forms (ASCII).
    public let passphrase: String
    /// File holding `passphrase` (no newline), for `-passin file:` and `--passphrase-file`.
    public let passphraseFile: String
    /// `BEGIN PUBLIC KEY` (SPKI), as `openssl rsa -pubout` writes: the KEK file.
    public let publicKeyPath: String
    /// `BEGIN RSA PUBLIC KEY` (PKCS#1), as `openssl rsa -RSAPublicKey_out` writes.
    public let pkcs1PublicKeyPath: String
    /// Modulus size in bits.
    public let bits: Int

    /// Path of the private key in `form`.
    public func privateKeyPath(_ form: OpenSSLKeyForm) -> String { directory + "/key-\(form.rawValue).pem" }
    /// The PBES2 encrypted key, what `openssl genrsa -aes256 -out keypair.pem` makes.
    public var keypairPath: String { privateKeyPath(.pkcs8Encrypted) }

    /// SHA-256 of the public key's SPKI DER as printed by
    /// `openssl pkey -pubin -in publickey.crt -outform DER | sha256sum` (lowercase hex).
    public func opensslKEKID() throws -> String {
        let out = try runChecked(["sh", "-c", "openssl pkey -pubin -in '\(publicKeyPath)' -outform DER | sha256sum"])
        return String(out.prefix(64))
    }
}

/// Makes an RSA key pair of `bits` bits with the `openssl` CLI and writes it in every PEM form
/// (`OpenSSLKeyForm`) plus both public forms, in a new directory under `parent`.
///
/// Commands run (the same as in Tests/EnvelopeTests/Fixtures/README.md):
/// ```
/// openssl genrsa -aes256 -passout file:pass -out key-pkcs8Encrypted.pem BITS
/// openssl rsa -in key-pkcs8Encrypted.pem -passin file:pass -traditional -aes256 -passout file:pass.out -out key-traditionalAES256.pem
/// openssl rsa -in key-pkcs8Encrypted.pem -passin file:pass -traditional -des3   -passout file:pass.out -out key-traditionalDES3.pem
/// openssl rsa -in key-pkcs8Encrypted.pem -passin file:pass -traditional -out key-pkcs1Plain.pem
/// openssl pkcs8 -topk8 -nocrypt -in key-pkcs1Plain.pem -out key-pkcs8Plain.pem
/// openssl rsa -in key-pkcs1Plain.pem -pubout -out publickey.crt
/// openssl rsa -in key-pkcs1Plain.pem -RSAPublicKey_out -out publickey-pkcs1.pem
/// ```
/// - Throws: `TestSupportError` when `openssl` is missing or a command fails.
public func makeOpenSSLKeySet(in parent: String, name: String = "kek", bits: Int = 2048,
                              passphrase: String = "correct horse battery staple") throws -> OpenSSLKeySet {
    try requireTool("openssl")
    let dir = parent + "/" + name
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let pass = dir + "/pass"
    try Data(passphrase.utf8).write(to: URL(fileURLWithPath: pass))
    // openssl reads two lines from one file given to both -passin and -passout: use a copy.
    let passOut = dir + "/pass.out"
    try Data(passphrase.utf8).write(to: URL(fileURLWithPath: passOut))
    func p(_ f: String) -> String { dir + "/" + f }
    let enc = p("key-pkcs8Encrypted.pem"), plain = p("key-pkcs1Plain.pem")
    try runChecked(["openssl", "genrsa", "-aes256", "-passout", "file:\(pass)", "-out", enc, String(bits)])
    try runChecked(["openssl", "rsa", "-in", enc, "-passin", "file:\(pass)", "-traditional", "-aes256",
                    "-passout", "file:\(passOut)", "-out", p("key-traditionalAES256.pem")])
    try runChecked(["openssl", "rsa", "-in", enc, "-passin", "file:\(pass)", "-traditional", "-des3",
                    "-passout", "file:\(passOut)", "-out", p("key-traditionalDES3.pem")])
    try runChecked(["openssl", "rsa", "-in", enc, "-passin", "file:\(pass)", "-traditional", "-out", plain])
    try runChecked(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", plain, "-out", p("key-pkcs8Plain.pem")])
    try runChecked(["openssl", "rsa", "-in", plain, "-pubout", "-out", p("publickey.crt")])
    try runChecked(["openssl", "rsa", "-in", plain, "-RSAPublicKey_out", "-out", p("publickey-pkcs1.pem")])
    return OpenSSLKeySet(directory: dir, passphrase: passphrase, passphraseFile: pass,
                         publicKeyPath: p("publickey.crt"), pkcs1PublicKeyPath: p("publickey-pkcs1.pem"), bits: bits)
}

/// Makes just a PKCS#8 PBES2 key pair the way the README tells admins to
/// (`openssl genrsa -aes256 -out keypair.pem 2048; openssl rsa -in keypair.pem -pubout -out publickey.crt`),
/// faster than `makeOpenSSLKeySet` when other forms are not needed.
/// Returns (keypair.pem, publickey.crt, passphrase file).
public func makeOpenSSLKeyPair(in parent: String, name: String = "kek", bits: Int = 2048,
                               passphrase: String = "correct horse battery staple") throws
    -> (privateKey: String, publicKey: String, passphraseFile: String) {
    try requireTool("openssl")
    let dir = parent + "/" + name
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let pass = dir + "/pass"
    try Data(passphrase.utf8).write(to: URL(fileURLWithPath: pass))
    try runChecked(["openssl", "genrsa", "-aes256", "-passout", "file:\(pass)", "-out", dir + "/keypair.pem", String(bits)])
    try runChecked(["openssl", "rsa", "-in", dir + "/keypair.pem", "-passin", "file:\(pass)", "-pubout",
                    "-out", dir + "/publickey.crt"])
    return (dir + "/keypair.pem", dir + "/publickey.crt", pass)
}
