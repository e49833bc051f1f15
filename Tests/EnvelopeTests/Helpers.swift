import Foundation
import Testing
import TestSupport
@testable import Envelope

/// Path of a file in Tests/EnvelopeTests/Fixtures (copied into the test bundle).
func fixture(_ name: String) -> String {
    if let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) {
        return url.appendingPathComponent(name).path
    }
    return packageRoot + "/Tests/EnvelopeTests/Fixtures/" + name
}

/// The passphrase of the fixture keys (Fixtures/pass).
let fixturePassphrase = "fixture passphrase 1"

func secret(_ s: String) -> SecretBytes { SecretBytes(copying: Array(s.utf8)) }

/// Private key fixtures by form.
let fixturePrivateKeys: [(file: String, encrypted: Bool)] = [
    ("keypair.pem", true),                 // PKCS#8 PBES2 (openssl genrsa -aes256)
    ("keypair-trad-aes256.pem", true),     // traditional AES-256-CBC
    ("keypair-trad-des3.pem", true),       // traditional DES-EDE3-CBC
    ("keypair-pkcs1-plain.pem", false),    // PKCS#1 unencrypted
    ("keypair-pkcs8-plain.pem", false),    // PKCS#8 unencrypted
]

/// Runs `body` and returns the `EnvelopeError` code it threw, or nil if it did not throw.
func envelopeErrorCode(_ body: () throws -> Void) -> EnvelopeError.Code? {
    do {
        try body()
        return nil
    } catch let e as EnvelopeError {
        return e.code
    } catch {
        Issue.record("unexpected error type \(type(of: error)): \(error)")
        return nil
    }
}

/// The fixture KEK and a private key loaded once per test process (RSA key parsing is cheap,
/// but PBES2 key derivation is not).
enum FixtureKeys {
    static let kek: KEKPublicKey = try! KEKPublicKey(pemFile: fixture("publickey.crt"))
    static let privateKey: KEKPrivateKey = try! KEKPrivateKey(pemFile: fixture("keypair-pkcs1-plain.pem"), passphrase: nil)
    static let otherKEK: KEKPublicKey = try! KEKPublicKey(pemFile: fixture("other-publickey.crt"))
    static let otherPrivateKey: KEKPrivateKey = try! KEKPrivateKey(pemFile: fixture("other-keypair.pem"), passphrase: nil)
}
