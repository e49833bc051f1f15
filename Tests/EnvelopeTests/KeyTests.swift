import Foundation
import Testing
import TestSupport
@testable import Envelope

@Suite("KEK public keys")
struct KEKPublicKeyTests {
    @Test("KEK id equals `openssl pkey -pubin -outform DER | sha256sum`, for SPKI and PKCS#1 files")
    func kekIDMatchesOpenSSL() throws {
        let committed = try String(contentsOfFile: fixture("publickey.kekid"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let spki = try KEKPublicKey(pemFile: fixture("publickey.crt"))
        let pkcs1 = try KEKPublicKey(pemFile: fixture("publickey-pkcs1.pem"))
        #expect(spki.id.hex == committed)
        #expect(pkcs1.id == spki.id)
        #expect(spki.bits == 2048)
        try requireTool("openssl")
        let live = try runChecked(["sh", "-c", "openssl pkey -pubin -in '\(fixture("publickey.crt"))' -outform DER | sha256sum"])
        #expect(String(live.prefix(64)) == spki.id.hex)
        let other = try KEKPublicKey(pemFile: fixture("other-publickey.crt"))
        #expect(other.bits == 3072)
        #expect(other.id != spki.id)
        let otherLive = try runChecked(["sh", "-c", "openssl pkey -pubin -in '\(fixture("other-publickey.crt"))' -outform DER | sha256sum"])
        #expect(String(otherLive.prefix(64)) == other.id.hex)
    }

    @Test("a fresh openssl key pair (genrsa -aes256, rsa -pubout) has the id openssl prints")
    func freshKeyID() throws {
        let tmp = try TempDir("env-kekid")
        defer { tmp.remove() }
        let pair = try makeOpenSSLKeyPair(in: tmp.path)
        let kek = try KEKPublicKey(pemFile: pair.publicKey)
        let out = try runChecked(["sh", "-c", "openssl pkey -pubin -in '\(pair.publicKey)' -outform DER | sha256sum"])
        #expect(kek.id.hex == String(out.prefix(64)))
        let priv = try KEKPrivateKey(pemFile: pair.privateKey, passphrase: secret("correct horse battery staple"))
        #expect(priv.id == kek.id)
    }

    @Test("bad KEK files are refused with a clear, specific error", arguments: [
        ("bad-kek/private-pkcs8-encrypted.pem", EnvelopeError.Code.privateKeyGiven),
        ("bad-kek/private-pkcs1.pem", .privateKeyGiven),
        ("keypair-pkcs8-plain.pem", .privateKeyGiven),
        ("bad-kek/rsa1024.pub.pem", .keyTooSmall),
        ("bad-kek/pkcs1-body-spki-label.pem", .invalidKey),
        ("bad-kek/spki-body-pkcs1-label.pem", .invalidKey),
        ("bad-kek/empty.pem", .invalidKey),
        ("bad-kek/garbage.bin", .invalidKey),
        ("bad-kek/bad-base64.pem", .invalidKey),
        ("bad-kek/truncated-spki.pem", .invalidKey),
        ("bad-kek/ec-p256.pub.pem", .unsupportedKey),
        ("bad-kek/certificate.pem", .unsupportedKey),
        ("bad-kek/does-not-exist.pem", .io),
    ])
    func badKEKFiles(file: String, expected: EnvelopeError.Code) throws {
        let path = fixture(file)
        do {
            _ = try KEKPublicKey(pemFile: path)
            Issue.record("\(file) was accepted as a KEK")
        } catch let e as EnvelopeError {
            #expect(e.code == expected, "\(file): \(e)")
            #expect(e.message.contains(path), "message should name the file: \(e.message)")
        }
    }

    @Test("a directory and an unreadable file are I/O errors")
    func unreadable() throws {
        let tmp = try TempDir("env-unreadable")
        defer { tmp.remove() }
        #expect(envelopeErrorCode { _ = try KEKPublicKey(pemFile: tmp.path) } == .io)
    }
}

@Suite("KEK private keys")
struct KEKPrivateKeyTests {
    @Test("every PEM form openssl writes loads with the right passphrase", arguments: fixturePrivateKeys.map(\.file))
    func loadsEveryForm(file: String) throws {
        let encrypted = fixturePrivateKeys.first { $0.file == file }!.encrypted
        let key = try KEKPrivateKey(pemFile: fixture(file), passphrase: encrypted ? secret(fixturePassphrase) : nil)
        #expect(key.id == FixtureKeys.kek.id)
        #expect(key.bits == 2048)
    }

    @Test("wrong, empty and missing passphrases are wrongPassphrase, quickly", arguments: fixturePrivateKeys.filter(\.encrypted).map(\.file))
    func wrongPassphrase(file: String) throws {
        let start = Date()
        for pass in [secret("fixture passphrase 2"), secret(""), secret("x"), nil] as [SecretBytes?] {
            let code = envelopeErrorCode { _ = try KEKPrivateKey(pemFile: fixture(file), passphrase: pass) }
            #expect(code == .wrongPassphrase, "\(file) with \(pass.map { "\($0.count)-byte" } ?? "no") passphrase")
        }
        #expect(Date().timeIntervalSince(start) < 10)
    }

    @Test("wrong passphrase on a fresh key in each encrypted form")
    func wrongPassphraseFresh() throws {
        let tmp = try TempDir("env-wrongpass")
        defer { tmp.remove() }
        let keys = try makeOpenSSLKeySet(in: tmp.path, passphrase: "s3cret-Pass")
        for form in OpenSSLKeyForm.allCases {
            let right = try KEKPrivateKey(pemFile: keys.privateKeyPath(form), passphrase: form.isEncrypted ? secret("s3cret-Pass") : nil)
            #expect(right.id.hex == (try keys.opensslKEKID()), "\(form)")
            if form.isEncrypted {
                #expect(envelopeErrorCode { _ = try KEKPrivateKey(pemFile: keys.privateKeyPath(form), passphrase: secret("s3cret-Pasz")) } == .wrongPassphrase, "\(form)")
            }
        }
        #expect(try KEKPublicKey(pemFile: keys.pkcs1PublicKeyPath).id.hex == (try keys.opensslKEKID()))
    }

    @Test("public keys, small keys and garbage are refused as private keys", arguments: [
        ("publickey.crt", EnvelopeError.Code.unsupportedKey),
        ("publickey-pkcs1.pem", .unsupportedKey),
        ("bad-kek/rsa1024-private.pem", .keyTooSmall),
        ("bad-kek/garbage.bin", .invalidKey),
        ("bad-kek/empty.pem", .invalidKey),
        ("bad-kek/certificate.pem", .unsupportedKey),
        ("nope.pem", .io),
    ])
    func refused(file: String, expected: EnvelopeError.Code) {
        #expect(envelopeErrorCode { _ = try KEKPrivateKey(pemFile: fixture(file), passphrase: secret(fixturePassphrase)) } == expected, "\(file)")
    }

    @Test("error messages never contain the passphrase")
    func noPassphraseInErrors() {
        do {
            _ = try KEKPrivateKey(pemFile: fixture("keypair-trad-des3.pem"), passphrase: secret("hunter2-very-secret"))
        } catch {
            #expect(!"\(error)".contains("hunter2"))
        }
    }
}
