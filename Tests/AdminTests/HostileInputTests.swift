import CaptureFormat
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport
@testable import Admin

/// Bytes that must never reach the administrator's terminal raw from a value: ESC, BEL, CR.
/// (LF is checked by counting lines: a value with a newline would add one.)
private func rawControls(_ text: String) -> [UInt8] {
    Array(text.utf8).filter { $0 == 0x1B || $0 == 0x07 || $0 == 0x0D }
}

/// Every path under `dir` (files, directories and links), relative to it.
private func everythingUnder(_ dir: String) -> [String] {
    ((try? FileManager.default.subpathsOfDirectory(atPath: dir)) ?? []).sorted()
}

/// A collector database with one agent's captures (2 frames, 2 keystroke chunks) sealed to a
/// fresh openssl key pair. The store is closed when this returns.
private func collectorWithCaptures(in tmp: TempDir, agent: String = "h1") async throws
    -> (db: String, key: (privateKey: String, publicKey: String, passphraseFile: String), captured: Captured) {
    let k = try makeOpenSSLKeyPair(in: tmp.path)
    let db = tmp.file("c.db")
    let store = try SQLiteStorage(path: db)
    let captured = try await fillCollector(store, kek: try KEKPublicKey(pemFile: k.publicKey), agent: agent,
                                           baseMs: 1_764_547_200_000, sessions: 1)
    return (db, k, captured)
}

@Suite("custos against a tampered database and hostile names")
struct HostileInputTests {
    @Test("captures list, keys list, agents list and decrypt print a tampered database's values escaped: no raw ESC/BEL/CR, no extra rows; a row no collector writes stops them with an error naming it")
    func tamperedDatabaseReachesNoTerminal() async throws {
        try requireTool("sqlite3")
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-inject")
        defer { tmp.remove() }
        let (db, k, _) = try await collectorWithCaptures(in: tmp, agent: "ws-1")
        _ = try await registerKEK(db: db, publicKey: k.publicKey, privateKey: k.privateKey)

        // 1. The stolen-database adversary edits rows with the sqlite3 CLI, within what a row may
        //    hold: free text (a path), another agent's id, another KEK's id.
        let nth = { (n: Int) in "(select blob_id from captures order by capture_time, blob_id limit 1 offset \(n))" }
        let otherKEK = String(repeating: "ab", count: 32)
        try runChecked(["sqlite3", db, """
            update captures set agent_id = 'ws-9' where blob_id = \(nth(1));
            update captures set kek_id = '\(otherKEK)' where blob_id = \(nth(3));
            update encryption_kek set pub_datafile = '/x'||char(27)||']0;K'||char(7)||char(10)||'9  yes  fake';
            """])

        let list = try runCommand([custos, "captures", "list", "--db", db])
        #expect(list.status == 0, "\(list.stderrString)")
        let out = list.stdoutString
        #expect(rawControls(out).isEmpty, "raw control bytes in: \(out.debugDescription)")
        let lineCount = out.split(separator: "\n", omittingEmptySubsequences: false).count
        #expect(lineCount == 7, "header, 4 rows, the count line and the final newline: \(out)")
        #expect(out.contains("ws-9") && out.contains(String(otherKEK.prefix(16))))
        #expect(out.contains("4 captures"))

        let keys = try runCommand([custos, "keys", "list", "--db", db])
        #expect(keys.status == 0, "\(keys.stderrString)")
        #expect(rawControls(keys.stdoutString).isEmpty, "\(keys.stdoutString.debugDescription)")
        #expect(keys.stdoutString.split(separator: "\n").count == 2, "header and one row: \(keys.stdoutString)")
        #expect(keys.stdoutString.contains(#"/x\u{1B}]0;K\u{7}\u{A}9  yes  fake"#))

        // decrypt: the row sealed to "another KEK" is named in a note; the row whose header no
        // longer matches fails by blob id; the summary and errors go to stderr.
        let d = try runCommand([custos, "decrypt", "--db", db, "--key", k.privateKey, "--passphrase-file", k.passphraseFile,
                                "--out", tmp.file("out")])
        #expect(d.status == 1, "\(d.stderrString)")
        #expect(rawControls(d.stderrString).isEmpty, "\(d.stderrString.debugDescription)")
        #expect(d.stderrString.contains("sealed to other KEKs and are left out: \(otherKEK)"), "\(d.stderrString)")
        #expect(d.stderrString.contains("header does not match"))
        #expect(rawControls(d.stdoutString).isEmpty)

        // 2. Values no collector writes (an agent id with ESC/BEL, a kind with CR): the storage
        //    refuses the row by name instead of listing it, and that message is escaped too.
        try runChecked(["sqlite3", db, """
            update captures set agent_id = char(27)||']0;X'||char(7) where blob_id = \(nth(0));
            insert into agents (agent_id, token_hash, created_at) values (char(27)||'[8m'||'hidden'||char(13)||'ws-0', x'00', 0);
            """])
        for command in [["captures", "list"], ["agents", "list"],
                        ["decrypt", "--key", k.privateKey, "--passphrase-file", k.passphraseFile, "--out", tmp.file("out-2")]] {
            let r = try runCommand([custos] + command + ["--db", db])
            #expect(r.status == 2, "\(command): \(r.stderrString)")
            #expect(rawControls(r.stdoutString).isEmpty && rawControls(r.stderrString).isEmpty,
                    "\(command): \(r.stdoutString.debugDescription) \(r.stderrString.debugDescription)")
            let (table, value) = command[0] == "agents" ? ("agents", #"\u{1B}[8mhidden\u{D}ws-0"#) : ("captures", #"\u{1B}]0;X\u{7}"#)
            #expect(r.stderrString.contains("\(db): \(table) row") && r.stderrString.contains("column agent_id holds '\(value)'"),
                    "\(command): \(r.stderrString)")
        }
        #expect(!FileManager.default.fileExists(atPath: tmp.file("out-2")), "nothing written before the selection was read")
    }

    @Test("decrypt and export name files with SafeText.fileNameComponent: no U+202E, no controls, no '..', nothing outside")
    func hostileNamesStayInside() async throws {
        try requireTool("python3")
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-names")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let agent = "../\u{202E}gpj.exe\u{1B}"
        let session = try DEKSession(kek: try KEKPublicKey(pemFile: k.publicKey), agentID: agent)
        var records: [EnvelopeRecord] = [.dekRecord(session.record)]
        let t: Int64 = 1_764_547_200_000
        let meta = FrameMetadata(monitor: 0, monitorName: "\u{202E}../../x\u{7}", x: 0, y: 0, width: 8, height: 6, captureTimeMs: t)
        records.append(.blob(try session.seal(FramePayload.encode(meta, png: makePNG(width: 8, height: 6, seed: 1)),
                                              kind: .screen, captureTimeMs: t)))
        let chunk = KeystrokeChunk(windowTitle: "../../\u{202E}txt.exe\n", wmClass: "a/../b\u{200F}\u{2066}", startMs: t + 1,
                                   endMs: t + 2, keys: [Keystroke(timeMs: t + 1, text: KeyToken.literal("x"))])
        records.append(.blob(try session.seal(chunk.encoded(), kind: .keystrokes, captureTimeMs: t + 1)))
        records.append(.blob(try session.seal(Data("raw".utf8), kind: .generic, captureTimeMs: t + 2)))
        let sealed = tmp.file("hostile.csts")
        try RecordStream.encode(records).write(to: URL(fileURLWithPath: sealed))
        let before = everythingUnder(tmp.path)

        func check(_ names: [String], _ what: String) {
            #expect(!names.isEmpty, "\(what): nothing written")
            for name in names {
                #expect(!name.unicodeScalars.contains { SafeText.needsEscape($0) }, "\(what): \(name.debugDescription)")
                #expect(!name.split(separator: "/").contains { $0 == ".." || $0 == "." || $0.hasPrefix(".") },
                        "\(what): \(name.debugDescription)")
            }
        }

        let out = tmp.file("out")
        let d = try runCommand([custos, "decrypt", "--in", sealed, "--key", k.privateKey, "--passphrase-file", k.passphraseFile,
                                "--out", out])
        #expect(d.status == 0, "\(d.stderrString)")
        let written = everythingUnder(out)
        check(written, "decrypt")
        #expect(written.filter { $0.hasSuffix(".png") || $0.hasSuffix(".txt") || $0.hasSuffix(".bin") }.count == 3, "\(written)")
        #expect(written.contains("_gpj.exe/screens/_gpj.exe_mon0-_.._x_2025-12-01T00-00-00.000Z.png"), "\(written)")
        // The window file's header shows the hostile title escaped, on one line.
        let txt = try #require(written.first { $0.hasSuffix(".txt") })
        let header = String(decoding: try Data(contentsOf: URL(fileURLWithPath: out + "/" + txt)), as: UTF8.self)
            .split(separator: "\n").prefix(3).map(String.init)
        #expect(header == [#"# agent: ../\u{202E}gpj.exe\u{1B}"#, #"# window: ../../\u{202E}txt.exe\u{A}"#,
                           #"# WM_CLASS: a/../b\u{200F}\u{2066}"#], "\(header)")

        let zip = tmp.file("hostile.zip")
        let e = try runCommand([custos, "export", "--in", sealed, "--key", k.privateKey, "--passphrase-file", k.passphraseFile,
                                "--out", zip])
        #expect(e.status == 0, "\(e.stderrString)")
        let listing = try runChecked(["python3", "-c", "import json,sys,zipfile; print(json.dumps(zipfile.ZipFile(sys.argv[1]).namelist()))", zip])
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(listing.utf8)) as? [String])
        check(entries, "export")
        #expect(entries.count == 5, "3 captures, keystrokes.jsonl, manifest.json: \(entries)")

        // Nothing appeared next to the outputs (a "../" that escaped would land here).
        let after = everythingUnder(tmp.path).filter { !$0.hasPrefix("out") && $0 != "hostile.zip" }
        #expect(after == before, "\(Set(after).subtracting(before))")
    }

    @Test("decrypt --out DIR refuses a symbolic link planted for a subdirectory; nothing is written outside")
    func plantedDirectoryLink() async throws {
        let tmp = try TempDir("adm-link-dir")
        defer { tmp.remove() }
        let (db, k, _) = try await collectorWithCaptures(in: tmp)
        let out = tmp.file("out"), outside = tmp.file("outside")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: false)
        try FileManager.default.createSymbolicLink(atPath: out + "/h1", withDestinationPath: outside)
        do {
            _ = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                                   options: DecryptOptions(output: .directory(out)), actor: "t", log: { _ in }, progressStyle: .quiet)
            Issue.record("decrypt wrote through a planted link")
        } catch let e as AdminError {
            #expect(e.exitCode == 2)
            #expect(e.message.contains(out + "/h1: is a symbolic link"), "\(e.message)")
            #expect(e.message.contains("Nothing was written outside \(out)"), "\(e.message)")
        }
        #expect(everythingUnder(outside).isEmpty, "written outside: \(everythingUnder(outside))")

        // The same through the real executable: exit 2, the link named on stderr.
        let r = try runCommand([try builtProduct("custos"), "decrypt", "--db", db, "--key", k.privateKey,
                                "--passphrase-file", k.passphraseFile, "--out", out])
        #expect(r.status == 2, "\(r.stderrString)")
        #expect(r.stderrString.contains("custos: \(out)/h1: is a symbolic link; refusing to write through it"), "\(r.stderrString)")
        #expect(everythingUnder(outside).isEmpty)
    }

    @Test("decrypt --out DIR refuses a symbolic link planted at a file name; the target is never created")
    func plantedFileLink() async throws {
        let tmp = try TempDir("adm-link-file")
        defer { tmp.remove() }
        let (db, k, captured) = try await collectorWithCaptures(in: tmp)
        let out = tmp.file("out"), outside = tmp.file("outside")
        let window = OutputNaming.window(agent: "h1", title: captured.chunks[0].chunk.windowTitle,
                                         wmClass: captured.chunks[0].chunk.wmClass)
        let frame = OutputNaming.screen(agent: "h1", meta: captured.frames[0].meta, timeMs: captured.frames[0].meta.captureTimeMs)
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: false)
        for (planted, target) in [(window, outside + "/stolen-keys.txt"), (frame, outside + "/stolen.png")] {
            try? FileManager.default.removeItem(atPath: out)
            let folder = out + "/" + (planted as NSString).deletingLastPathComponent
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try FileManager.default.createSymbolicLink(atPath: out + "/" + planted, withDestinationPath: target)
            do {
                _ = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                                       options: DecryptOptions(output: .directory(out)), actor: "t", log: { _ in }, progressStyle: .quiet)
                Issue.record("decrypt wrote through a planted link at \(planted)")
            } catch let e as AdminError {
                #expect(e.code == .usage)
                #expect(e.message.contains("\(out)/\(planted): is a symbolic link"), "\(e.message)")
            }
            #expect(!FileManager.default.fileExists(atPath: target), "\(target) was created through the link")
        }
        #expect(everythingUnder(outside).isEmpty)
    }

    @Test("decrypt --out DIR: group/other-writable DIR refused, another user's DIR refused, a 0755 DIR tightened to 0700 and said so, a DIR that is a link refused")
    func outputDirectoryModes() async throws {
        let tmp = try TempDir("adm-modes")
        defer { tmp.remove() }
        let (db, k, _) = try await collectorWithCaptures(in: tmp)
        func decrypt(_ out: String) async throws -> [String] {
            var notes: [String] = []
            _ = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                                   options: DecryptOptions(output: .directory(out)), actor: "t", log: { notes.append($0) },
                                   progressStyle: .quiet)
            return notes
        }
        func mode(_ path: String) throws -> Int {
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            guard let m = attributes[.posixPermissions] as? Int else { throw TestSupportError("\(path): no mode") }
            return m
        }

        // Writable by others: refused, with why and how to fix; nothing written into it.
        let open = tmp.file("open")
        try FileManager.default.createDirectory(atPath: open, withIntermediateDirectories: false)
        try FileManager.default.setAttributes([.posixPermissions: 0o777], ofItemAtPath: open)
        do {
            _ = try await decrypt(open)
            Issue.record("decrypt into a 0777 directory succeeded")
        } catch let e as AdminError {
            #expect(e.exitCode == 2)
            #expect(e.message.contains("\(open): output directory has mode 0777: group or others can write it"), "\(e.message)")
            #expect(e.message.contains("chmod 700"), "\(e.message)")
        }
        #expect(everythingUnder(open).isEmpty)
        #expect(try mode(open) == 0o777, "a refused DIR is left as it was")

        // Another user's directory: refused.
        let foreign: String
        if geteuid() == 0 {
            foreign = tmp.file("foreign")
            try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: false,
                                                    attributes: [.posixPermissions: 0o700])
            #expect(chown(foreign, 65534, 65534) == 0)  // nobody
        } else {
            foreign = "/"  // root's, and we are not root
        }
        do {
            _ = try await decrypt(foreign)
            Issue.record("decrypt into another user's directory succeeded")
        } catch let e as AdminError {
            #expect(e.message.contains("\(foreign): output directory is owned by "), "\(e.message)")
            #expect(e.message.contains("not by you"), "\(e.message)")
            #expect(e.message.contains("chown it to yourself"), "\(e.message)")
        }
        if geteuid() == 0 { #expect(everythingUnder(foreign).isEmpty) }

        // 0755, ours: tightened to 0700, and said so.
        let loose = tmp.file("loose")
        try FileManager.default.createDirectory(atPath: loose, withIntermediateDirectories: false)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: loose)
        let notes = try await decrypt(loose)
        #expect(try mode(loose) == 0o700)
        #expect(notes.contains("note: \(loose): output directory had mode 0755; tightened to 0700 so only you can read the decrypted captures"),
                "\(notes)")
        #expect(filesUnder(loose).contains("manifest.json"))

        // A new DIR is made 0700 with no note.
        let fresh = tmp.file("new/sub")
        #expect(try await decrypt(fresh).isEmpty)
        #expect(try mode(fresh) == 0o700)

        // DIR itself a link: refused (the link could be replaced between check and use).
        let link = tmp.file("link")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: tmp.file("outside"))
        try FileManager.default.createDirectory(atPath: tmp.file("outside"), withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        do {
            _ = try await decrypt(link)
            Issue.record("decrypt through a link as DIR succeeded")
        } catch let e as AdminError {
            #expect(e.message.contains("\(link): output directory is a symbolic link"), "\(e.message)")
        }
        #expect(everythingUnder(tmp.file("outside")).isEmpty)

        // The real executable says so too.
        let loose2 = tmp.file("loose2")
        try FileManager.default.createDirectory(atPath: loose2, withIntermediateDirectories: false)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: loose2)
        let r = try runCommand([try builtProduct("custos"), "decrypt", "--db", db, "--key", k.privateKey,
                                "--passphrase-file", k.passphraseFile, "--quiet", "--out", loose2])
        #expect(r.status == 0, "\(r.stderrString)")
        #expect(r.stderrString.contains("had mode 0755; tightened to 0700"), "\(r.stderrString)")
    }

    @Test("export --out FILE.zip never writes through a link planted at FILE.zip")
    func exportRefusesPlantedLink() async throws {
        let tmp = try TempDir("adm-zip-link")
        defer { tmp.remove() }
        let (db, k, _) = try await collectorWithCaptures(in: tmp)
        let outside = tmp.file("outside")
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: false)
        let victim = outside + "/existing.txt"
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: victim))
        let dangling = tmp.file("dangling.zip"), existing = tmp.file("existing.zip")
        try FileManager.default.createSymbolicLink(atPath: dangling, withDestinationPath: outside + "/new.zip")
        try FileManager.default.createSymbolicLink(atPath: existing, withDestinationPath: victim)
        for zip in [dangling, existing] {
            do {
                _ = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                                       options: DecryptOptions(output: .archive(zip)), actor: "t", log: { _ in }, progressStyle: .quiet)
                Issue.record("export wrote through \(zip)")
            } catch let e as AdminError {
                #expect(e.exitCode == 2)
                #expect(e.message.contains("\(zip): is a symbolic link; export never writes through one"), "\(e.message)")
            }
        }
        #expect(everythingUnder(outside) == ["existing.txt"])
        #expect(try Data(contentsOf: URL(fileURLWithPath: victim)) == Data("keep me".utf8))
        #expect(!everythingUnder(tmp.path).contains { $0.contains(".partial") })

        // An archive folder that others can write (no sticky bit) is refused too.
        let shared = tmp.file("shared")
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: false)
        try FileManager.default.setAttributes([.posixPermissions: 0o777], ofItemAtPath: shared)
        do {
            _ = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                                   options: DecryptOptions(output: .archive(shared + "/x.zip")), actor: "t", log: { _ in },
                                   progressStyle: .quiet)
            Issue.record("export into a world-writable folder succeeded")
        } catch let e as AdminError {
            #expect(e.message.contains("\(shared): the folder of the archive has mode 0777"), "\(e.message)")
        }
        #expect(everythingUnder(shared).isEmpty)
    }

    @Test("open --out FILE and seal --out FILE never write through a link planted at FILE")
    func openAndSealRefusePlantedLink() throws {
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-open-link")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let plain = tmp.file("plain.txt"), sealed = tmp.file("sealed.custos")
        try Data("secret words".utf8).write(to: URL(fileURLWithPath: plain))
        let target = tmp.file("elsewhere.txt")
        let planted = tmp.file("planted")
        try FileManager.default.createSymbolicLink(atPath: planted, withDestinationPath: target)

        let s = try runCommand([custos, "seal", "--kek", k.publicKey, "--agent", "a1", "--in", plain, "--out", planted])
        #expect(s.status == 2, "\(s.stderrString)")
        #expect(s.stderrString.contains("\(planted): is a symbolic link; custos never writes through one"), "\(s.stderrString)")
        #expect(!FileManager.default.fileExists(atPath: target))

        let ok = try runCommand([custos, "seal", "--kek", k.publicKey, "--agent", "a1", "--in", plain, "--out", sealed])
        #expect(ok.status == 0, "\(ok.stderrString)")
        let o = try runCommand([custos, "open", "--key", k.privateKey, "--passphrase-file", k.passphraseFile,
                                "--in", sealed, "--out", planted])
        #expect(o.status == 2, "\(o.stderrString)")
        #expect(o.stderrString.contains("\(planted): is a symbolic link; custos never writes through one"), "\(o.stderrString)")
        #expect(!FileManager.default.fileExists(atPath: target), "plaintext written through the link")

        let good = tmp.file("opened.txt")
        let g = try runCommand([custos, "open", "--key", k.privateKey, "--passphrase-file", k.passphraseFile,
                                "--in", sealed, "--out", good])
        #expect(g.status == 0, "\(g.stderrString)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: good)) == Data("secret words".utf8))
        let mode = try FileManager.default.attributesOfItem(atPath: good)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }
}
