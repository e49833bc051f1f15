import CaptureFormat
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import TestSupport
import Testing
@testable import Admin

/// Captures of several users' sessions on one agent (sealed session blobs): `captures list`
/// shows and filters by user, `decrypt` writes each user's captures under a folder named after
/// the user and `--user` selects one; plain blobs keep the agent's folder.
@Suite("Per-user captures")
struct SessionDecryptTests {
    @Test("list and filter by user; decrypt into <agent>/users/<user>/; --user decrypts one user's captures only")
    func perUser() async throws {
        let tmp = try TempDir("adm-users")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let dbPath = tmp.file("c.db")
        let store = try SQLiteStorage(path: dbPath)
        let session = try DEKSession(kek: try KEKPublicKey(pemFile: k.publicKey), agentID: "term-srv")
        let t0: Int64 = 1_764_547_200_000
        var items = [ingestItem(session.record)]
        var stream = session.record.serialized  // the same records as a file, for `custos open`
        var frames: [String: (FrameMetadata, Data)] = [:]
        for (i, (user, display)) in [("alice", ":1"), ("bob", ":2"), ("CORP\\carol", ":3")].enumerated() {
            let s = try BlobSession(user: UserName(user), display: display)
            let meta = FrameMetadata(monitor: 0, monitorName: "screen", x: 0, y: 0, width: 8, height: 6, captureTimeMs: t0 + Int64(i))
            let png = makePNG(width: 8, height: 6, seed: UInt8(i))
            let frame = try session.seal(FramePayload.encode(meta, png: png), kind: .screen, captureTimeMs: t0 + Int64(i), session: s)
            items.append(ingestItem(frame))
            stream += frame.serialized
            frames[user] = (meta, png)
            let chunk = KeystrokeChunk(windowTitle: "Terminal", wmClass: "xterm.XTerm", startMs: t0 + 10 + Int64(i),
                                       endMs: t0 + 10 + Int64(i), keys: [Keystroke(timeMs: t0 + 10 + Int64(i), text: user.prefix(1).description)])
            items.append(ingestItem(try session.seal(chunk.encoded(), kind: .keystrokes, captureTimeMs: t0 + 10 + Int64(i), session: s)))
        }
        // A capture of an older agent: no session.
        items.append(ingestItem(try session.seal(Data("raw".utf8), kind: .generic, captureTimeMs: t0 + 50)))
        #expect(try await store.ingest(items, receivedAtMs: t0).allSatisfy { $0 == .stored })
        let stored = try await allCaptures(store)
        #expect(stored.filter { $0.user?.rawValue == "alice" }.map(\.display) == [":1", ":1"])
        #expect(stored.filter { $0.user == nil }.count == 1)

        // The listing names the user and display, and --user selects (the CLI, as a reviewer runs it).
        let custos = try builtProduct("custos")
        let listed = try runChecked([custos, "captures", "list", "--db", dbPath, "--user", "bob"])
        let rows = listed.split(separator: "\n").filter { $0.contains("term-srv") }
        #expect(rows.count == 2 && rows.allSatisfy { $0.contains(" bob ") && $0.contains(" :2 ") }, "\(listed)")
        #expect(!listed.contains("alice"))
        #expect(listed.split(separator: "\n").first?.contains("USER") == true)

        let out = tmp.file("out")
        let r = try await DecryptJob.run(input: .database(.sqlite(path: dbPath)), keyFile: k.privateKey,
                                         passphrase: secret("correct horse battery staple"),
                                         options: DecryptOptions(output: .directory(out)), actor: "t", log: { _ in },
                                         progressStyle: .quiet)
        #expect(r.failures.isEmpty && r.decrypted == 7, "\(r)")
        for (user, folder) in [("alice", "users/alice/"), ("bob", "users/bob/"), ("CORP\\carol", "users/CORP_carol~")] {
            let (meta, png) = try #require(frames[user])
            let path = out + "/" + OutputNaming.screen(agent: "term-srv", user: try UserName(user), meta: meta, timeMs: meta.captureTimeMs)
            #expect(path.hasPrefix(out + "/term-srv/\(folder)"), "\(path)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == png)
            let userFolder = out + "/" + OutputNaming.folder(agent: "term-srv", user: try UserName(user))
            #expect(FileManager.default.fileExists(atPath: userFolder + "/keystrokes/xterm.XTerm_Terminal.txt"))
        }
        // Users apart from the agent's own folders, and never two in one folder: a user called
        // `screens`, and a name that sanitises like another one (`CORP:carol` vs `CORP\carol`).
        #expect(OutputNaming.folder(agent: "term-srv", user: try UserName("screens")) == "term-srv/users/screens")
        let carols = try ["CORP\\carol", "CORP:carol", "CORP_carol"].map { OutputNaming.folder(agent: "a", user: try UserName($0)) }
        #expect(Set(carols).count == 3 && carols[2] == "a/users/CORP_carol", "\(carols)")
        // A name that would leave its folder is no user name: refused by the CLI, never a folder.
        let refused = try runCommand([custos, "captures", "list", "--db", dbPath, "--user", "../etc"])
        #expect(refused.status != 0 && refused.stderrString.contains("--user"), "\(refused.stderrString)")
        #expect(FileManager.default.fileExists(atPath: out + "/term-srv/other"))  // the sessionless blob
        let jsonl = try String(contentsOfFile: out + "/keystrokes.jsonl", encoding: .utf8)
        #expect(jsonl.contains("\"display\":\":1\"") && jsonl.contains("\"user\":\"alice\""))

        let onlyBob = tmp.file("bob")
        let rb = try await DecryptJob.run(input: .database(.sqlite(path: dbPath)), keyFile: k.privateKey,
                                          passphrase: secret("correct horse battery staple"),
                                          options: DecryptOptions(output: .directory(onlyBob), user: try UserName("bob")), actor: "t",
                                          log: { _ in }, progressStyle: .quiet)
        #expect(rb.decrypted == 2 && rb.selected == 2)
        let names = try FileManager.default.contentsOfDirectory(atPath: onlyBob + "/term-srv/users")
        #expect(names == ["bob"], "\(names)")

        // `custos open` of a file of such records: the same per-user folders.
        let file = tmp.file("sealed.csts")
        try stream.write(to: URL(fileURLWithPath: file))
        let opened = tmp.file("opened")
        let o = try runCommand([custos, "open", "--key", k.privateKey, "--passphrase-file", k.passphraseFile, "--in", file,
                                "--out", opened + "/"])
        #expect(o.status == 0, "\(o.stderrString)")
        for (user, folder) in [("alice", "users/alice/"), ("bob", "users/bob/"), ("CORP\\carol", "users/CORP_carol~")] {
            let (meta, png) = try #require(frames[user])
            let path = opened + "/" + OutputNaming.screen(agent: "term-srv", user: try UserName(user), meta: meta, timeMs: meta.captureTimeMs)
            #expect(path.hasPrefix(opened + "/term-srv/\(folder)"), "\(path)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == png)
        }
    }
}
