import CaptureFormat
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport
@testable import Admin

/// Checks that `out` holds exactly the decrypted originals of `captured`.
func expectOutputMatches(_ out: String, _ captured: Captured, agent: String, skipping: Set<String> = []) throws {
    for f in captured.frames where !skipping.contains(f.blobID) {
        let path = out + "/" + OutputNaming.screen(agent: agent, meta: f.meta, timeMs: f.meta.captureTimeMs)
        let written = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(written == f.png, "frame \(f.blobID) at \(path)")
    }
    // keystrokes.jsonl: one line per chunk, in capture order, with the exact text.
    let kept = captured.chunks.filter { !skipping.contains($0.blobID) }
    let lines = try String(contentsOfFile: out + "/keystrokes.jsonl", encoding: .utf8).split(separator: "\n")
    let parsed = try lines.map { try JSONDecoder().decode(OutputNaming.JSONLine.self, from: Data($0.utf8)) }
        .filter { $0.agent == agent }
    #expect(parsed.count == kept.count)
    for (line, c) in zip(parsed, kept) {
        #expect(line.blobId == c.blobID)
        #expect(line.text == c.chunk.text)
        #expect(line.windowTitle == c.chunk.windowTitle)
        #expect(line.wmClass == c.chunk.wmClass)
        #expect(line.startMs == c.chunk.startMs)
        #expect(line.time == OutputNaming.iso(c.chunk.startMs))
    }
    // One readable text file per window holding each chunk's text on its own line.
    for c in kept {
        let path = out + "/" + OutputNaming.window(agent: agent, title: c.chunk.windowTitle, wmClass: c.chunk.wmClass)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.contains("# window: \(c.chunk.windowTitle)\n"))
        #expect(text.contains("\n\(c.chunk.text)\n"), "chunk \(c.blobID) in \(path)")
    }
}

@Suite("custos decrypt / export")
struct DecryptTests {
    @Test("round trip through a collector database with openssl keys in every PEM form")
    func everyPEMForm() async throws {
        let tmp = try TempDir("adm-forms")
        defer { tmp.remove() }
        let keys = try makeOpenSSLKeySet(in: tmp.path)
        let kek = try KEKPublicKey(pemFile: keys.publicKeyPath)
        let store = try SQLiteStorage(path: tmp.file("collector.db"))
        let captured = try await fillCollector(store, kek: kek, agent: "host-a", baseMs: 1_764_547_200_000)
        for form in OpenSSLKeyForm.allCases {
            let out = tmp.file("out-\(form.rawValue)")
            let report = try await DecryptJob.run(input: .database(.sqlite(path: tmp.file("collector.db"))), keyFile: keys.privateKeyPath(form),
                                            passphrase: form.isEncrypted ? secret(keys.passphrase) : nil,
                                            options: DecryptOptions(output: .directory(out), agentID: aid("host-a")),
                                            actor: "tester", log: { _ in }, progressStyle: .quiet)
            #expect(report.selected == 8, "\(form)")
            #expect(report.decrypted == 8, "\(form)")
            #expect(report.failures.isEmpty, "\(form): \(report.failures)")
            #expect(report.deksUnwrapped == 2, "each DEK unwrapped once (\(form))")
            #expect(report.screens == 4 && report.keystrokeChunks == 4 && report.keystrokeWindows == 2)
            try expectOutputMatches(out, captured, agent: "host-a")
            let manifest = try readManifest(Data(contentsOf: URL(fileURLWithPath: out + "/manifest.json")))
            #expect((manifest["counts"] as? [String: Any])?["decrypted"] as? Int == 8)
            #expect(manifest["kekID"] as? String == kek.id.hex)
            // Nothing but the named output: no leftovers, no temp files.
            #expect(!filesUnder(out).contains { $0.contains(".partial") })
        }
    }

    @Test("keys from custos keys generate; per-agent keys side by side; export archive with manifest")
    func generatedKeysAndExport() async throws {
        try requireTool("unzip")
        let tmp = try TempDir("adm-gen")
        defer { tmp.remove() }
        let pairA = try KeyFiles.generate(in: tmp.file("keys-a"), passphrase: secret("pass-A-123"))
        let pairB = try KeyFiles.generate(in: tmp.file("keys-b"), passphrase: secret("pass-B-456"))
        let db = tmp.file("collector.db")
        let store = try SQLiteStorage(path: db)
        for (dir, _) in [("keys-a", pairA), ("keys-b", pairB)] {
            _ = try await KEKRows.register(store, publicKey: tmp.file("\(dir)/publickey.crt"),
                                           privateKey: tmp.file("\(dir)/keypair.pem"))
        }
        #expect(try await store.keks().filter(\.active).count == 2)
        let a = try await fillCollector(store, kek: try KEKPublicKey(pemFile: tmp.file("keys-a/publickey.crt")),
                                        agent: "host-a", baseMs: 1_764_547_200_000)
        let b = try await fillCollector(store, kek: try KEKPublicKey(pemFile: tmp.file("keys-b/publickey.crt")),
                                        agent: "host-b", baseMs: 1_764_547_200_300, sessions: 1)

        // Decrypt B's captures with B's key: A's are left out (named), B's all come out.
        let outB = tmp.file("out-b")
        let rb = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: tmp.file("keys-b/keypair.pem"),
                                    passphrase: secret("pass-B-456"), options: DecryptOptions(output: .directory(outB)),
                                    actor: "tester", log: { _ in }, progressStyle: .quiet)
        #expect(rb.selected == 12 && rb.decrypted == 4 && rb.failures.isEmpty)
        #expect(rb.otherKEKs == [pairA.id.hex: 8])
        try expectOutputMatches(outB, b, agent: "host-b")

        // Export A's into one zip.
        let zip = tmp.file("export-a.zip")
        let ra = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: tmp.file("keys-a/keypair.pem"),
                                    passphrase: secret("pass-A-123"),
                                    options: DecryptOptions(output: .archive(zip), agentID: aid("host-a")),
                                    actor: "tester", log: { _ in }, progressStyle: .quiet)
        #expect(ra.decrypted == 8 && ra.failures.isEmpty)
        let listing = try runChecked(["unzip", "-Z1", zip])
        #expect(listing.contains("manifest.json") && listing.contains("keystrokes.jsonl"))
        let unpacked = tmp.file("unpacked")
        try runChecked(["unzip", "-q", zip, "-d", unpacked])
        try expectOutputMatches(unpacked, a, agent: "host-a")
        let manifest = try readManifest(Data(contentsOf: URL(fileURLWithPath: unpacked + "/manifest.json")))
        #expect(manifest["operation"] as? String == "export")
        let counts = try #require(manifest["counts"] as? [String: Any])
        #expect(counts["screens"] as? Int == 4 && counts["keystrokeChunks"] as? Int == 4)
        let files = try #require(manifest["files"] as? [[String: Any]])
        #expect(files.count == filesUnder(unpacked).count - 1)  // every file but the manifest itself
        for f in files {
            let path = unpacked + "/" + (f["path"] as! String)
            #expect(sha256Hex(try Data(contentsOf: URL(fileURLWithPath: path))) == f["sha256"] as? String)
        }
        #expect(!filesUnder(tmp.path).contains { $0.contains(".partial") })
        // Never overwritten.
        await #expect(throws: AdminError.self) {
            _ = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: tmp.file("keys-a/keypair.pem"), passphrase: secret("pass-A-123"),
                                   options: DecryptOptions(output: .archive(zip)), actor: "t", log: { _ in }, progressStyle: .quiet)
        }
    }

    @Test("frames in blob files: a copy of the database with its .blobs directory decrypts; without it, frames fail by name and keystrokes still decrypt")
    func blobFilesTravelWithTheDatabase() async throws {
        try requireTool("sqlite3")
        let tmp = try TempDir("adm-blobfiles")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let db = tmp.file("collector.db")
        let store = try SQLiteStorage(path: db)
        // 128×96 frames with stored (uncompressed) deflate: ~37 KiB each, so in blob files.
        let captured = try await fillCollector(store, kek: try KEKPublicKey(pemFile: k.publicKey), agent: "h2",
                                               baseMs: 1_764_547_200_000, frameSize: 128)
        #expect(captured.frames.allSatisfy { $0.png.count >= SQLiteStorage.blobFileMinBytes })
        #expect(FileManager.default.fileExists(atPath: db + ".blobs/00000001.blobs"))

        // The admin's copy: the database by .backup, then its blob directory beside it.
        let copy = tmp.file("copy.db")
        try runChecked(["sqlite3", db, ".backup '\(copy)'"])
        try runChecked(["cp", "-a", db + ".blobs", copy + ".blobs"])
        func decrypt(_ database: String, into out: String) async throws -> DecryptReport {
            try await DecryptJob.run(input: .database(.sqlite(path: database)), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                               options: DecryptOptions(output: .directory(out), agentID: aid("h2")),
                               actor: "tester", log: { _ in }, progressStyle: .quiet)
        }
        let full = try await decrypt(copy, into: tmp.file("out-copy"))
        #expect(full.decrypted == 8 && full.failures.isEmpty, "\(full.failures)")
        try expectOutputMatches(tmp.file("out-copy"), captured, agent: "h2")

        // Without the blob files: each frame fails naming the missing file, the chunks decrypt.
        try FileManager.default.removeItem(atPath: copy + ".blobs")
        let partial = try await decrypt(copy, into: tmp.file("out-partial"))
        #expect(partial.screens == 0 && partial.keystrokeChunks == 4)
        #expect(partial.failures.count == 4)
        #expect(partial.failures.allSatisfy { $0.reason.contains(copy + ".blobs/00000001.blobs") }, "\(partial.failures)")
    }

    @Test("wrong passphrase: clear error, nothing written, refusal audited")
    func wrongPassphrase() async throws {
        let tmp = try TempDir("adm-wp")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let db = tmp.file("c.db")
        let store = try SQLiteStorage(path: db)
        _ = try await fillCollector(store, kek: try KEKPublicKey(pemFile: k.publicKey), agent: "h1", baseMs: 1_000_000_000_000, sessions: 1)
        let out = tmp.file("out")
        do {
            _ = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: k.privateKey, passphrase: secret("not the passphrase"),
                                   options: DecryptOptions(output: .directory(out)), actor: "mallory", log: { _ in }, progressStyle: .quiet)
            Issue.record("decrypt succeeded with a wrong passphrase")
        } catch let e as AdminError {
            #expect(e.code == .wrongPassphrase)
            #expect(e.exitCode == 1)
            #expect(e.message.contains("wrong passphrase"))
            #expect(e.message.contains(k.privateKey))
        }
        #expect(!FileManager.default.fileExists(atPath: out))
        let audit = try await allAudit(store)
        #expect(audit.contains { $0.action == "captures.decrypt.refused" && $0.actor == "mallory" && $0.detail.contains("wrong-passphrase") })
    }

    @Test("a key that matches no DEK names the KEK ids the data needs")
    func wrongKey() async throws {
        let tmp = try TempDir("adm-wk")
        defer { tmp.remove() }
        let right = try makeOpenSSLKeyPair(in: tmp.path, name: "right")
        let wrong = try makeOpenSSLKeyPair(in: tmp.path, name: "wrong")
        let db = tmp.file("c.db")
        let store = try SQLiteStorage(path: db)
        let rightKEK = try KEKPublicKey(pemFile: right.publicKey)
        _ = try await fillCollector(store, kek: rightKEK, agent: "h1", baseMs: 1_000_000_000_000, sessions: 1)
        let out = tmp.file("out")
        do {
            _ = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: wrong.privateKey, passphrase: secret("correct horse battery staple"),
                                   options: DecryptOptions(output: .directory(out)), actor: "t", log: { _ in }, progressStyle: .quiet)
            Issue.record("decrypt succeeded with the wrong key")
        } catch let e as AdminError {
            #expect(e.code == .keyMismatch)
            #expect(e.exitCode == 1)
            #expect(e.message.contains(rightKEK.id.hex), "names the KEK id the data needs: \(e.message)")
            #expect(e.message.contains("4 items"))
        }
        #expect(!FileManager.default.fileExists(atPath: out))
    }

    @Test("one tampered blob among many: reported by id, skipped, the rest decrypted; audit records who/what/how many")
    func tamperedBlobAndAudit() async throws {
        let tmp = try TempDir("adm-tamper")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let db = tmp.file("c.db")
        let store = try SQLiteStorage(path: db)
        let kek = try KEKPublicKey(pemFile: k.publicKey)
        let captured = try await fillCollector(store, kek: kek, agent: "h1", baseMs: 1_764_547_200_000,
                                               framesPerDEK: 10, chunksPerDEK: 4, sessions: 2, tamperIndex: 3)
        let bad = try #require(captured.tampered.first)
        let out = tmp.file("out")
        var lines: [String] = []
        let report = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                                        options: DecryptOptions(output: .directory(out), agentID: aid("h1"),
                                                                sinceMs: 1_764_547_200_000, untilMs: 1_764_547_300_000),
                                        actor: "auditor", log: { lines.append($0) }, progressStyle: .quiet)
        #expect(report.selected == 28)
        #expect(report.decrypted == 27)
        #expect(report.failures.map(\.blobID) == [bad])
        #expect(report.failures.first?.reason.contains("authentication failed") == true)
        try expectOutputMatches(out, captured, agent: "h1", skipping: [bad])
        let pngs = filesUnder(out).filter { $0.hasSuffix(".png") }
        #expect(pngs.count == 19)

        let audit = try await allAudit(store)
        let start = try #require(audit.first { $0.action == "captures.decrypt" })
        let done = try #require(audit.first { $0.action == "captures.decrypt.done" })
        #expect(start.actor == "auditor" && done.actor == "auditor")
        #expect(start.id < done.id)
        #expect(start.detail.contains("agent=h1"))
        #expect(start.detail.contains("since=2025-12-01T00:00:00.000Z"))
        #expect(start.detail.contains("selected=28"))
        #expect(done.detail.contains("decrypted=27") && done.detail.contains("failed=1"))
        #expect(abs(start.atMs - Int64(Date().timeIntervalSince1970 * 1000)) < 600_000, "the audit time is now (within the run)")
    }

    @Test("output directory not writable: clear error, no plaintext anywhere")
    func unwritableOutput() async throws {
        let tmp = try TempDir("adm-ro")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let db = tmp.file("c.db")
        let store = try SQLiteStorage(path: db)
        _ = try await fillCollector(store, kek: try KEKPublicKey(pemFile: k.publicKey), agent: "h1", baseMs: 1_000_000_000_000, sessions: 1)
        try Data("x".utf8).write(to: URL(fileURLWithPath: tmp.file("plainfile")))
        var targets = [tmp.file("plainfile/out")]
        if geteuid() != 0 {  // root ignores permission bits
            try FileManager.default.createDirectory(atPath: tmp.file("ro"), withIntermediateDirectories: false,
                                                    attributes: [.posixPermissions: 0o500])
            targets.append(tmp.file("ro/out"))
        }
        for out in targets {
            do {
                _ = try await DecryptJob.run(input: .database(.sqlite(path: db)), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                                       options: DecryptOptions(output: .directory(out)), actor: "t", log: { _ in }, progressStyle: .quiet)
                Issue.record("decrypt into \(out) succeeded")
            } catch let e as AdminError {
                #expect(e.code == .io)
                #expect(e.exitCode == 2)
                #expect(e.message.contains(tmp.path), "names the path: \(e.message)")
            }
        }
        // Nothing was decrypted, so no audit record claims a decrypt.
        #expect(try await allAudit(store).allSatisfy { $0.action != "captures.decrypt" })
    }

    @Test("a record-stream export decrypts without any collector database")
    func recordStreamInput() async throws {
        let tmp = try TempDir("adm-rs")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let store = try SQLiteStorage(path: tmp.file("scratch.db"))
        let captured = try await fillCollector(store, kek: try KEKPublicKey(pemFile: k.publicKey), agent: "h9",
                                               baseMs: 1_764_547_200_000, sessions: 2)
        let file = tmp.file("export.csts")
        try RecordStream.encode(captured.records).write(to: URL(fileURLWithPath: file))
        let out = tmp.file("out")
        let r = try await DecryptJob.run(input: .recordStream(file), keyFile: k.privateKey, passphrase: secret("correct horse battery staple"),
                                   options: DecryptOptions(output: .directory(out)), actor: "t", log: { _ in }, progressStyle: .quiet)
        #expect(r.decrypted == 8 && r.failures.isEmpty && r.deksUnwrapped == 2)
        try expectOutputMatches(out, captured, agent: "h9")
    }

    @Test("an aborted archive leaves nothing behind")
    func abortedArchive() throws {
        let tmp = try TempDir("adm-abort")
        defer { tmp.remove() }
        let sink = try ZipSink(path: tmp.file("x.zip"))
        _ = try sink.add(Data(repeating: 7, count: 100_000), at: "a/b.png", compress: false)
        #expect(filesUnder(tmp.path).count == 1)  // the hidden partial file
        sink.abort()
        #expect(filesUnder(tmp.path).isEmpty)
    }

    @Test("progress: plain lines when not a terminal")
    func progressLines() {
        var text = ""
        let p = ProgressReporter(label: "decrypt", style: .lines) { text += $0 }
        p.start(total: 100)
        for _ in 0..<100 { p.advance(failed: 0) }
        p.finish()
        let lines = text.split(separator: "\n")
        #expect(lines.first == "decrypt: 0/100 items")
        #expect(lines.last == "decrypt: 100/100 items")
        #expect(lines.count >= 3 && lines.count <= 12)
        var bar = ""
        let b = ProgressReporter(label: "export", style: .bar) { bar += $0 }
        b.start(total: 4)
        for _ in 0..<4 { b.advance(failed: 1) }
        b.finish()
        #expect(bar.contains("\rexport [##############################] 100% 4/4 (1 failed)"))
    }

    @Test("time arguments and file names")
    func parsingAndNaming() throws {
        #expect(try parseTime("2025-12-01T00:00:00Z") == 1_764_547_200_000)
        #expect(try parseTime("2025-12-01T01:00:00.5+01:00") == 1_764_547_200_500)
        #expect(try parseTime("2025-12-01") == 1_764_547_200_000)
        #expect(try parseTime("1764547200000") == 1_764_547_200_000)
        // Years 1...9999 only, refused naming the option when it is parsed.
        for far in ["99999-01-01", "99999999999999999"] {
            #expect { _ = try parseTime(far, field: "--until") } throws: {
                "\($0)".contains("--until '\(far)': outside the years 1 to 9999")
            }
        }
        let now = Date(timeIntervalSince1970: 1_764_547_200)
        #expect(try parseTime("2h", now: now) == 1_764_547_200_000 - 7_200_000)
        #expect(throws: AdminError.self) { try parseTime("yesterday") }
        // An impossible date is refused, not moved to another day (QA: 2027-02-30 became 2 March).
        for bad in ["2027-02-30", "2027-02-29T12:00:00Z", "2025-04-31"] {
            #expect(throws: AdminError.self, "\(bad)") { try parseTime(bad) }
        }
        #expect(try parseTime("2028-02-29") == 1_835_395_200_000, "a leap day is a date")
        let meta = FrameMetadata(monitor: 1, monitorName: "HDMI/2", x: 0, y: 0, width: 1, height: 1, captureTimeMs: 0)
        #expect(OutputNaming.screen(agent: "../etc", meta: meta, timeMs: 1_764_547_200_123)
                == "_etc/screens/_etc_mon1-HDMI_2_2025-12-01T00-00-00.123Z.png")
        #expect(OutputNaming.window(agent: "h", title: "", wmClass: "") == "h/keystrokes/no-class_untitled.txt")
        #expect(OutputNaming.component(String(repeating: "é", count: 100)).utf8.count <= 80)
        // Bidi controls and other controls are removed (SafeText.fileNameComponent), not kept.
        #expect(OutputNaming.component("invoice\u{202E}fdp.exe") == "invoicefdp.exe")
        #expect(OutputNaming.component("\u{2066}a\u{200F}b\u{1B}[31m\u{7}") == "ab[31m")
        #expect(OutputNaming.component("..") == "_")
        #expect(OutputNaming.component("../../etc/passwd") == "_.._etc_passwd")
    }
}
