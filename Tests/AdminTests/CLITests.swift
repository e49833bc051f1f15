import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport
@testable import Admin

/// The built `custos` binary, driven as an administrator would.
@Suite("custos CLI (built binary)")
struct CLITests {
    @Test("keys generate / register / list, agents add, captures list, decrypt, export, exit codes")
    func adminSession() async throws {
        try requireTool("openssl")
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-cli")
        defer { tmp.remove() }
        let keys = tmp.file("keys"), db = tmp.file("collector.db")
        let group = try runChecked(["id", "-gn"]).trimmingCharacters(in: .whitespacesAndNewlines)

        // keys generate: passphrase on standard input, never as an argument.
        let gen = try runCommand([custos, "keys", "generate", "--out", keys, "--passphrase-file", "-", "--group", group],
                                 stdin: Data("cli pass phrase\n".utf8))
        #expect(gen.status == 0, "\(gen.stderrString)")
        let id = gen.stdoutString.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id == (try runChecked([custos, "keys", "id", keys + "/publickey.crt"])).trimmingCharacters(in: .whitespacesAndNewlines))
        let pass = tmp.file("pass")
        try Data("cli pass phrase".utf8).write(to: URL(fileURLWithPath: pass))
        try runChecked(["openssl", "pkey", "-in", keys + "/keypair.pem", "-passin", "file:\(pass)", "-noout"])
        try runChecked(["openssl", "pkey", "-pubin", "-in", keys + "/publickey.crt", "-noout"])
        let again = try runCommand([custos, "keys", "generate", "--out", keys, "--passphrase-file", pass])
        #expect(again.status == 2)
        #expect(again.stderrString.contains("exists already"))
        let asArg = try runCommand([custos, "keys", "generate", "--out", tmp.file("k2"), "--passphrase", "x"])
        #expect(asArg.status == 2, "a passphrase argument is refused")

        // keys register / list.
        let reg = try runCommand([custos, "keys", "register", "--db", db, "--public", keys + "/publickey.crt",
                                  "--private", keys + "/keypair.pem"])
        #expect(reg.status == 0, "\(reg.stderrString)")
        #expect(reg.stdoutString == id + "\n")
        let list = try runChecked([custos, "keys", "list", "--db", db])
        #expect(list.contains(id) && list.contains(keys + "/publickey.crt"))

        // agents add prints a token the collector accepts.
        let add = try runCommand([custos, "agents", "add", "--db", db, "--id", "ws-17"])
        #expect(add.status == 0, "\(add.stderrString)")
        let token = add.stdoutString.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.count >= 32)
        let store = try SQLiteStorage(path: db)
        #expect(try await store.authenticate(aid("ws-17"), token: Secret(token)))
        #expect(try await !store.authenticate(aid("ws-17"), token: Secret(token + "x")))
        #expect(try runCommand([custos, "agents", "add", "--db", db, "--id", "ws-17"]).status == 2)

        // The agent's captures arrive (one tampered).
        let captured = try await fillCollector(store, kek: try KEKPublicKey(pemFile: keys + "/publickey.crt"), agent: "ws-17",
                                               baseMs: 1_764_547_200_000, framesPerDEK: 3, chunksPerDEK: 2, sessions: 2,
                                               tamperIndex: 1)
        let bad = try #require(captured.tampered.first)

        // captures list: no key, no content.
        let cl = try runChecked([custos, "captures", "list", "--db", db, "--agent", "ws-17", "--kind", "screen",
                                 "--since", "2025-12-01T00:00:00Z"])
        #expect(cl.components(separatedBy: "<Encrypted>").count - 1 == 6)
        #expect(cl.contains("6 captures"))
        #expect(!cl.contains("keystrokes"))

        // decrypt with a wrong passphrase: exit 1, nothing written.
        let wrong = tmp.file("wrongpass")
        try Data("nope nope".utf8).write(to: URL(fileURLWithPath: wrong))
        let w = try runCommand([custos, "decrypt", "--db", db, "--key", keys + "/keypair.pem", "--passphrase-file", wrong,
                                "--out", tmp.file("out-wrong")])
        #expect(w.status == 1)
        #expect(w.stderrString.contains("wrong passphrase"))
        #expect(!FileManager.default.fileExists(atPath: tmp.file("out-wrong")))

        // decrypt: exit 1 because one blob is tampered, which is named; the rest are written.
        let out = tmp.file("out")
        let d = try runCommand([custos, "decrypt", "--db", db, "--key", keys + "/keypair.pem", "--passphrase-file", pass,
                                "--agent", "ws-17", "--out", out])
        #expect(d.status == 1)
        #expect(d.stderrString.contains("failed: blob \(bad)"))
        #expect(d.stderrString.contains("decrypt: 0/10 items"), "plain progress lines when not a terminal")
        #expect(d.stderrString.contains("decrypt: 10/10 items (1 failed)"))
        #expect(d.stderrString.contains("1 of 10 items failed to decrypt (listed above); the others were written"), "\(d.stderrString)")
        try expectOutputMatches(out, captured, agent: "ws-17", skipping: [bad])
        // Only the tampered blob selected (its capture time, 1 s after the first frame): nothing
        // was written, and the closing line says so instead of "the others were written".
        let only = try runCommand([custos, "decrypt", "--db", db, "--key", keys + "/keypair.pem", "--passphrase-file", pass,
                                   "--since", "1764547201000", "--until", "1764547201001", "--out", tmp.file("out-bad")])
        #expect(only.status == 1 && only.stderrString.contains("failed: blob \(bad)"), "\(only.stderrString)")
        #expect(only.stderrString.contains("1 of 1 item failed to decrypt (listed above); nothing was written but manifest.json"),
                "\(only.stderrString)")
        #expect(!only.stderrString.contains("the others were written"))

        // export of the untampered time range: exit 0, one archive.
        let zip = tmp.file("ws-17.zip")
        let e = try runCommand([custos, "export", "--db", db, "--key", keys + "/keypair.pem", "--passphrase-file", "-",
                                "--agent", "ws-17", "--since", "2025-12-01T00:00:10Z", "--out", zip],
                               stdin: Data("cli pass phrase\n".utf8))
        #expect(e.status == 0, "\(e.stderrString)")
        #expect(FileManager.default.fileExists(atPath: zip))
        let audit = try await allAudit(store).map(\.action)
        #expect(audit.filter { $0 == "captures.decrypt" }.count == 2)
        #expect(audit.filter { $0 == "captures.export" }.count == 1)
        #expect(audit.contains("captures.decrypt.refused"))
    }

    @Test("--db is a SQLite path or a postgres:// URL without a password; listings page with --limit/--after and --before")
    func storageLocationsAndPaging() async throws {
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-db-forms")
        defer { tmp.remove() }
        // A PostgreSQL location where nothing listens: exit 2 naming user@host:port/db and why
        // (PostgresCollectorTests covers a real server); a password in the URL or a refused
        // sslmode is refused before anything is opened, without repeating the password.
        let closed = try freeLocalPort()
        let pg = try runCommand([custos, "agents", "list", "--db", "postgres://custos@127.0.0.1:\(closed)/custos?sslmode=disable"])
        #expect(pg.status == 2)
        #expect(pg.stderrString.contains("custos@127.0.0.1:\(closed)/custos: connect: cannot connect: Connection refused"), "\(pg.stderrString)")
        let prefer = try runCommand([custos, "agents", "list", "--db", "postgres://custos@db/custos?sslmode=prefer"])
        #expect(prefer.status == 2 && prefer.stderrString.contains("--db: sslmode=prefer is not supported"), "\(prefer.stderrString)")
        for command in [["agents", "list"], ["captures", "list"], ["audit", "list"], ["keys", "list"],
                        ["decrypt", "--key", tmp.file("k.pem"), "--out", tmp.file("o")]] {
            let r = try runCommand([custos] + command + ["--db", "postgres://custos:hunter2@db/custos"])
            #expect(r.status == 2, "\(command)")
            #expect(r.stderrString.contains("--db: a password does not belong in the URL") && r.stderrString.contains("--db-password-file"),
                    "\(command): \(r.stderrString)")
            #expect(!r.stderrString.contains("hunter2"))
        }
        let sqlitePassword = try runCommand([custos, "agents", "add", "--db", tmp.file("c.db"), "--db-password-file", tmp.file("pw"),
                                             "--id", "a"])
        #expect(sqlitePassword.status == 2 && sqlitePassword.stderrString.contains("--db-password-file: is for a postgres://"),
                "\(sqlitePassword.stderrString)")
        let missing = try runCommand([custos, "captures", "list", "--db", tmp.file("none.db")])
        #expect(missing.status == 2 && missing.stderrString.contains("\(tmp.file("none.db")): collector database does not exist"))
        #expect(!FileManager.default.fileExists(atPath: tmp.file("none.db")))

        // Paging: 8 captures, 3 at a time, in both orders.
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let db = tmp.file("c.db")
        let store = try SQLiteStorage(path: db)
        _ = try await fillCollector(store, kek: try KEKPublicKey(pemFile: k.publicKey), agent: "pager", baseMs: 1_764_547_200_000)
        let all = try await allCaptures(store)
        await store.close()
        for newest in [false, true] {
            var seen: [String] = [], after: String?
            for _ in 0..<4 {
                let r = try runChecked([custos, "captures", "list", "--db", db, "--limit", "3"] + (newest ? ["--newest-first"] : [])
                                       + (after.map { ["--after", $0] } ?? []))
                let rows = r.split(separator: "\n").filter { $0.contains("<Encrypted>") }
                seen += rows.compactMap { row in all.first { row.contains($0.blobID.hex) }?.blobID.hex }
                after = r.range(of: "--after ").map { String(r[$0.upperBound...].prefix { !$0.isWhitespace }) }
                if after == nil { break }
            }
            let expected = all.map(\.blobID.hex)
            #expect(seen == (newest ? expected.reversed() : expected), "newest first: \(newest)")
        }
        // The audit log, newest first, two at a time.
        for n in 1...3 { _ = try runChecked([custos, "agents", "add", "--db", db, "--id", "agent-\(n)"]) }
        let first = try runChecked([custos, "audit", "list", "--db", db, "--limit", "2"])
        #expect(first.contains("agent=agent-3") && first.contains("agent=agent-2") && !first.contains("agent=agent-1"), "\(first)")
        let before = try #require(first.range(of: "older entries: --before ").map { String(first[$0.upperBound...].prefix { $0.isNumber }) })
        let rest = try runChecked([custos, "audit", "list", "--db", db, "--before", before])
        #expect(rest.contains("agent=agent-1") && !rest.contains("agent=agent-2") && rest.hasSuffix("1 entry\n"), "\(rest)")
    }

    @Test("the capture selection (--agent --kind --since --until) is checked alike by list, decrypt and export")
    func captureSelectionIsValidatedEverywhere() throws {
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-select")
        defer { tmp.remove() }
        for command in [["captures", "list"], ["decrypt", "--out", tmp.file("o")], ["export", "--out", tmp.file("o.zip")]] {
            let extra = command[0] == "captures" ? [] : ["--key", tmp.file("k.pem")]
            let r = try runCommand([custos] + command + ["--db", tmp.file("c.db"), "--kind", "bogus"] + extra)
            #expect(r.status == 2, "\(command): \(r.stderrString)")
            #expect(r.stderrString.contains("--kind bogus: expected screen, keystrokes, generic or activity"), "\(command): \(r.stderrString)")
        }
    }

    @Test("keys generate asks twice on the terminal without echo")
    func promptWithoutEcho() throws {
        try requireTool("script")
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-tty")
        defer { tmp.remove() }
        let dir = tmp.file("k")
        // script(1) gives the command a pseudo-terminal; the two lines are typed into it.
        // Each line is typed after its prompt appeared (TCSAFLUSH drops what was typed before).
        let r = try runCommand(["sh", "-c", "(sleep 2; echo typed-secret-77; sleep 2; echo typed-secret-77; sleep 3) | script -qec '\(custos) keys generate --out \(dir)' /dev/null"],
                               timeout: 60)
        #expect(r.status == 0, "\(r.stdoutString) \(r.stderrString)")
        #expect(r.stdoutString.contains("New passphrase"))
        #expect(r.stdoutString.contains("Repeat the passphrase"))
        #expect(!r.stdoutString.contains("typed-secret-77"), "the passphrase is not echoed")
        let pass = tmp.file("p")
        try Data("typed-secret-77".utf8).write(to: URL(fileURLWithPath: pass))
        try runChecked(["openssl", "pkey", "-in", dir + "/keypair.pem", "-passin", "file:\(pass)", "-noout"])

        let mismatch = try runCommand(["sh", "-c", "(sleep 2; echo first-secret; sleep 2; echo second-secret; sleep 1) | script -qec '\(custos) keys generate --out \(tmp.file("k2"))' /dev/null"],
                                      timeout: 60)
        #expect(mismatch.stdoutString.contains("differ"))
        #expect(!FileManager.default.fileExists(atPath: tmp.file("k2/keypair.pem")))
    }
}

@Suite("custos decrypt interrupted")
struct InterruptTests {
    /// Starts `custos` with `arguments`, sends SIGINT once its first progress line appears, and
    /// returns its exit status and standard error.
    func interrupt(_ custos: String, _ arguments: [String], passphrase: String) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: custos)
        p.arguments = arguments
        let errPipe = Pipe(), inPipe = Pipe()
        p.standardError = errPipe
        p.standardOutput = FileHandle.nullDevice
        p.standardInput = inPipe
        try p.run()
        inPipe.fileHandleForWriting.write(Data((passphrase + "\n").utf8))
        try inPipe.fileHandleForWriting.close()
        var err = Data()
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let chunk = errPipe.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            err.append(chunk)
            if String(decoding: err, as: UTF8.self).contains(" 0/") { kill(p.processIdentifier, SIGINT); break }
        }
        err.append(errPipe.fileHandleForReading.readDataToEndOfFile())
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: err, as: UTF8.self))
    }

    @Test("Ctrl-C during decrypt leaves complete files only; during export no archive")
    func interrupted() async throws {
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-int")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let db = tmp.file("c.db")
        let store = try SQLiteStorage(path: db)
        let captured = try await fillCollector(store, kek: try KEKPublicKey(pemFile: k.publicKey), agent: "h1",
                                               baseMs: 1_764_547_200_000, framesPerDEK: 1500, chunksPerDEK: 0, sessions: 1)
        let out = tmp.file("out")
        let (status, err) = try interrupt(custos, ["decrypt", "--db", db, "--key", k.privateKey, "--passphrase-file", "-",
                                                   "--out", out], passphrase: "correct horse battery staple")
        #expect(status == 130, "\(err)")
        #expect(err.contains("interrupted after"))
        let written = filesUnder(out)
        #expect(!written.contains { $0.contains(".partial") })
        let pngs = written.filter { $0.hasSuffix(".png") }
        #expect(pngs.count < 1500)
        let originals = Dictionary(uniqueKeysWithValues: captured.frames.map {
            (OutputNaming.screen(agent: "h1", meta: $0.meta, timeMs: $0.meta.captureTimeMs), $0.png)
        })
        for p in pngs { #expect(try Data(contentsOf: URL(fileURLWithPath: out + "/" + p)) == originals[p], "\(p) is complete") }
        let manifest = try readManifest(Data(contentsOf: URL(fileURLWithPath: out + "/manifest.json")))
        #expect((manifest["counts"] as? [String: Any])?["interrupted"] as? Bool == true)

        let zip = tmp.file("x.zip")
        let (zs, zerr) = try interrupt(custos, ["export", "--db", db, "--key", k.privateKey, "--passphrase-file", "-",
                                                "--out", zip], passphrase: "correct horse battery staple")
        #expect(zs == 130, "\(zerr)")
        #expect(!filesUnder(tmp.path).contains { $0.hasSuffix(".zip") || $0.contains("x.zip.partial") })
    }
}
