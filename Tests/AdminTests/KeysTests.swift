import CollectorStorage
import CollectorStorageSQLite
import Envelope
import Foundation
import Testing
import TestSupport
@testable import Admin

@Suite("custos keys / agents / captures list")
struct KeysTests {
    @Test("keys generate writes what openssl genrsa -aes256 and openssl rsa -pubout write, 0440/0444, never overwrites")
    func generateMatchesOpenSSL() throws {
        try requireTool("openssl")
        let tmp = try TempDir("adm-keygen")
        defer { tmp.remove() }
        let dir = tmp.file("keys")
        let group = try runChecked(["id", "-gn"]).trimmingCharacters(in: .whitespacesAndNewlines)
        let pair = try KeyFiles.generate(in: dir, passphrase: secret("s3cret pass"), group: group)
        let priv = dir + "/keypair.pem", pub = dir + "/publickey.crt"
        let pass = tmp.file("pass")
        try Data("s3cret pass".utf8).write(to: URL(fileURLWithPath: pass))

        // openssl reads both files; the private key is PKCS#8 PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC.
        let text = try runChecked(["openssl", "pkey", "-in", priv, "-passin", "file:\(pass)", "-noout", "-text"])
        #expect(text.contains("Private-Key: (2048 bit, 2 primes)"))
        let asn1 = try runChecked(["openssl", "asn1parse", "-in", priv])
        for oid in [":PBES2", ":PBKDF2", ":hmacWithSHA256", ":aes-256-cbc"] { #expect(asn1.contains(oid), "\(oid)") }
        #expect(try String(contentsOfFile: priv, encoding: .utf8).hasPrefix("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"))
        let derived = try runChecked(["openssl", "rsa", "-in", priv, "-passin", "file:\(pass)", "-pubout"])
        #expect(derived == (try String(contentsOfFile: pub, encoding: .utf8)), "publickey.crt is what openssl rsa -pubout writes")
        let sha = try runChecked(["sh", "-c", "openssl pkey -pubin -in '\(pub)' -outform DER | sha256sum"])
        #expect(String(sha.prefix(64)) == pair.id.hex)
        // A wrong passphrase does not open it.
        #expect(try runCommand(["openssl", "pkey", "-in", priv, "-passin", "pass:wrong-one", "-noout"]).status != 0)
        // An OAEP-SHA256 wrap by Envelope's KEK comes back with openssl pkeyutl and this key.
        let kek = try KEKPublicKey(pemFile: pub)
        #expect(kek.id == pair.id)

        // Modes, group.
        let pa = try FileManager.default.attributesOfItem(atPath: priv)
        let pb = try FileManager.default.attributesOfItem(atPath: pub)
        #expect((pa[.posixPermissions] as? Int) == 0o440)
        #expect((pb[.posixPermissions] as? Int) == 0o444)
        #expect((pa[.groupOwnerAccountName] as? String) == group)

        // Never overwrites, and leaves the old files untouched.
        let before = try Data(contentsOf: URL(fileURLWithPath: priv))
        #expect(throws: AdminError.self) { _ = try KeyFiles.generate(in: dir, passphrase: secret("other pass")) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: priv)) == before)
        // Too short a passphrase, and an unknown group.
        #expect(throws: AdminError.self) { _ = try KeyFiles.generate(in: tmp.file("k2"), passphrase: secret("abc")) }
        #expect(throws: AdminError.self) {
            _ = try KeyFiles.generate(in: tmp.file("k3"), passphrase: secret("abcdef"), group: "no-such-group-xyz")
        }
        #expect(!FileManager.default.fileExists(atPath: tmp.file("k3/keypair.pem")))
    }

    @Test("keys register inserts the row the seed's SQL inserts; keys list shows it")
    func registerLikeSeed() async throws {
        try requireTool("sqlite3")
        let tmp = try TempDir("adm-reg")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        // The seed's statement, by the sqlite3 CLI, into a database the collector schema made.
        let seedDB = tmp.file("seed.db"), ourDB = tmp.file("ours.db")
        try await SQLiteStorage(path: seedDB).close()
        try runChecked(["sqlite3", seedDB, "insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '\(k.publicKey)', '\(k.privateKey)');"])
        let (row, id) = try await registerKEK(db: ourDB, publicKey: k.publicKey, privateKey: k.privateKey)
        #expect(row == 1)
        #expect(id == (try KEKPublicKey(pemFile: k.publicKey)).id.hex)
        let q = "select id, active, priv_encrypted, pub_datafile, priv_datafile from encryption_kek;"
        #expect(try runChecked(["sqlite3", ourDB, q]) == (try runChecked(["sqlite3", seedDB, q])))
        // Besides the seed's columns, the row holds the public key itself: a collector on another
        // host needs no file.
        let pem = try runChecked(["sqlite3", ourDB, "select pub_pem from encryption_kek;"])
        #expect(try KEKPublicKey(pemRepresentation: pem, source: "pub_pem").id.hex == id)
        #expect(try runChecked(["sqlite3", seedDB, "select pub_pem is null from encryption_kek;"]) == "1\n")
        let ours = try SQLiteStorage(path: ourDB)
        defer { Task { await ours.close() } }
        let audit = try await allAudit(ours)
        #expect(audit.count == 1 && audit[0].action == "keys.register" && audit[0].detail.contains("kek=\(id)"))
        // Registering the same active KEK twice is refused.
        await #expect(throws: AdminError.self) { _ = try await registerKEK(db: ourDB, publicKey: k.publicKey, privateKey: k.privateKey) }
        // A private key where the public belongs is refused, naming the file.
        do {
            _ = try await registerKEK(db: ourDB, publicKey: k.privateKey, privateKey: nil)
            Issue.record("registered a private key as KEK")
        } catch let e as AdminError { #expect(e.message.contains(k.privateKey)) }

        let table = KEKRows.table(try await ours.keks()).description
        let lines = table.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines[1].contains(id) && lines[1].contains(k.publicKey) && lines[1].contains(k.privateKey))
        #expect(lines[1].hasPrefix("1 ") && lines[1].contains("yes"))
        // Unreadable files show as such.
        let missing = KEKRows.table([KEKRow(rowID: 7, active: false, privEncrypted: true, pubDatafile: "/nonexistent/pub.crt",
                                            privDatafile: "/nonexistent/keypair.pem", publicKeyPEM: nil, kekID: nil,
                                            createdAt: nil)]).description
        #expect(missing.split(separator: "\n")[1].contains("?"))
        #expect(missing.split(separator: "\n")[1].contains("no"))
    }

    @Test("captures list shows agent, kind, time, size and <Encrypted>, never content")
    func capturesList() async throws {
        let tmp = try TempDir("adm-list")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let store = try SQLiteStorage(path: tmp.file("c.db"))
        defer { Task { await store.close() } }
        let captured = try await fillCollector(store, kek: try KEKPublicKey(pemFile: k.publicKey), agent: "host-z",
                                               baseMs: 1_764_547_200_000, sessions: 1)
        let rows = try await allCaptures(store, CaptureQuery(agentID: aid("host-z"), kind: .screen))
        let table = CaptureListing.table(rows).description
        let lines = table.split(separator: "\n")
        #expect(lines.count == 1 + 2 + 1)
        for f in captured.frames {
            let line = try #require(lines.first { $0.contains(f.blobID) })
            #expect(line.contains("host-z") && line.contains("screen") && line.contains("<Encrypted>"))
            #expect(line.contains(OutputNaming.iso(f.meta.captureTimeMs)))
        }
        let every = try await allCaptures(store)
        let all = CaptureListing.table(every).description
        #expect(all.contains("keystrokes"))
        for c in captured.chunks { #expect(!all.contains(c.chunk.text)) }
        #expect(all.hasSuffix("4 captures, \(CaptureListing.byteCount(every.reduce(0) { $0 + $1.size })) sealed"))
    }

    /// `custos agents add --id ..` (and `.`) is refused with a message naming the option and what
    /// is expected, before the database is created; ids name directories on the reviewer's machine.
    @Test("agents add refuses the agent ids . and ..")
    func agentsAddRefusesDotIDs() async throws {
        let tmp = try TempDir("adm-dot-agent")
        defer { tmp.remove() }
        let db = tmp.file("collector.db")
        for id in [".", ".."] {
            let command = try AgentsAddCommand.parse(["--db", db, "--id", id])
            do {
                try await command.run()
                Issue.record("agents add accepted the id \(id)")
            } catch let e as AdminError {
                #expect(e.code == .usage)
                #expect(e.message.contains("--id") && e.message.contains("not '.' or '..'"), "\(e.message)")
            }
        }
        #expect(!FileManager.default.fileExists(atPath: db), "a refused id created the database")
    }
}
