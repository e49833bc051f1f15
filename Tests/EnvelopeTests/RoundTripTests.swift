import Foundation
import Testing
import TestSupport
@testable import Envelope

@Suite("Envelope round trip")
struct RoundTripTests {
    @Test("seal then open every PEM form openssl writes")
    func roundTripAllForms() throws {
        let tmp = try TempDir("env-rt")
        defer { tmp.remove() }
        let keys = try makeOpenSSLKeySet(in: tmp.path)
        let kek = try KEKPublicKey(pemFile: keys.publicKeyPath)
        #expect(kek.bits == 2048)
        #expect(kek.id.hex == (try keys.opensslKEKID()))
        let session = try DEKSession(kek: kek, agentID: "host-1")
        let plain = Data((0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let blob = try session.seal(plain, kind: .screen, captureTimeMs: 1_700_000_000_123)
        #expect(blob.header.sequence == 0)
        let stream = RecordStream.encode([.dekRecord(session.record), .blob(blob)])
        let records = try RecordStream.parse(stream)
        #expect(records.count == 2)
        guard case .dekRecord(let rec) = records[0], case .blob(let b) = records[1] else {
            Issue.record("wrong record kinds"); return
        }
        #expect(rec == session.record)
        #expect(b.header == blob.header)
        for form in OpenSSLKeyForm.allCases {
            let pass = SecretBytes(copying: Array(keys.passphrase.utf8))
            let key = try KEKPrivateKey(pemFile: keys.privateKeyPath(form), passphrase: form.isEncrypted ? pass : nil)
            #expect(key.id == kek.id, "\(form)")
            let opener = try key.unwrap(rec)
            #expect(try opener.open(b) == plain, "\(form)")
        }
    }
}
