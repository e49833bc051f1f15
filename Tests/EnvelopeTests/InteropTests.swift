import Foundation
import Testing
import TestSupport
@testable import Envelope

@Suite("openssl interop")
struct InteropTests {
    /// RFC 8017 §7.1 with SHA-256 and MGF1-SHA-256: openssl recovers the DEK byte for byte with
    /// mgf1 sha256 and fails with mgf1 sha1, for every private key form openssl writes.
    @Test("openssl pkeyutl unwraps a Custos-wrapped DEK with mgf1 sha256 only")
    func pkeyutlUnwrap() throws {
        try requireTool("openssl")
        let tmp = try TempDir("env-pkeyutl")
        defer { tmp.remove() }
        let keys = try makeOpenSSLKeySet(in: tmp.path)
        let kek = try KEKPublicKey(pemFile: keys.publicKeyPath)
        let session = try DEKSession(kek: kek, agentID: "interop")
        let wrappedPath = tmp.file("wrapped.bin")
        try session.record.wrappedDEK.write(to: URL(fileURLWithPath: wrappedPath))
        #expect(session.record.wrappedDEK.count == 256)
        let dek = session.dek.withUnsafeBytes { Data($0) }
        for form in OpenSSLKeyForm.allCases {
            var args = ["openssl", "pkeyutl", "-decrypt", "-inkey", keys.privateKeyPath(form), "-in", wrappedPath]
            if form.isEncrypted { args += ["-passin", "file:\(keys.passphraseFile)"] }
            let sha256 = args + ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
                                 "-pkeyopt", "rsa_mgf1_md:sha256"]
            let ok = try runCommand(sha256)
            #expect(ok.status == 0, "\(form): \(ok.stderrString)")
            #expect(ok.stdout == dek, "\(form): openssl recovered different bytes")
            let sha1 = args + ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
                               "-pkeyopt", "rsa_mgf1_md:sha1"]
            let bad = try runCommand(sha1)
            #expect(bad.status != 0, "\(form): mgf1 sha1 must fail")
            #expect(bad.stdout != dek)
        }
    }

    /// The reverse direction: a DEK wrapped by `openssl pkeyutl -encrypt` (OAEP SHA-256/MGF1-SHA-256)
    /// in a DEK record is unwrapped by Custos (commitment computed over the same record fields).
    @Test("Custos unwraps a DEK that openssl pkeyutl wrapped")
    func opensslWrapCustosUnwrap() throws {
        try requireTool("openssl")
        let tmp = try TempDir("env-pkeyutl-enc")
        defer { tmp.remove() }
        let dek = SecretBytes.random(count: 32)
        try dek.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: tmp.file("dek.bin"))) }
        try runChecked(["openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", fixture("publickey.crt"),
                        "-in", tmp.file("dek.bin"), "-out", tmp.file("wrapped.bin"),
                        "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"])
        let wrapped = try Data(contentsOf: URL(fileURLWithPath: tmp.file("wrapped.bin")))
        let dekID = DEKID.random()
        let committed = DEKRecord.committedBytes(dekID: dekID, kekID: FixtureKeys.kek.id, agentIDBytes: Array("x".utf8),
                                                 creationTimeMs: 5, wrappedLength: wrapped.count)
        let record = DEKRecord(dekID: dekID, kekID: FixtureKeys.kek.id, agentID: "x", creationTimeMs: 5, wrappedDEK: wrapped,
                               commitment: Data(DEKCommitment.compute(dek: dek, dekID: dekID, committed: committed)))
        let parsed = try DEKRecord(parsing: record.serialized)
        let opener = try FixtureKeys.privateKey.unwrap(parsed)
        #expect(opener.dek.withUnsafeBytes { Array($0) } == dek.withUnsafeBytes { Array($0) })
    }
}
