import AdminAuth
import CollectorStorage
import CollectorStorageOpen
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport

/// issue 14 part 6: `custos db migrate --from collector.db --to postgres://…` (the built `custos`)
/// copies an embedded collector — agents with their tokens, the seed's path-only KEK row and a
/// PEM row, DEK records, captures whose blobs sit in blob files and in the table, the audit log,
/// legal holds, dashboard accounts (not their sessions) — into a real PostgreSQL database,
/// verifies it, and resumes; a target holding other data is refused.
@Suite(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"))
struct DBMigrateTests {
    static let adminPassword = "a long reviewer password"
    static let sessionHash = Data(repeating: 7, count: 32)

    /// A SQLite collector with two agents, two KEK rows, 3 DEK records and 60 captures (one in
    /// three of 40 KiB, in blob files), received in 4 batches, 3 audit entries, two legal holds,
    /// and two dashboard accounts (one with TOTP, a last step and failed logins) with a session.
    static func makeSource(_ path: String) async throws -> (tokens: [String: String], captures: [SealedBlob]) {
        let store = try SQLiteStorage(path: path)
        defer { Task { await store.close() } }
        let kek = try sharedMaterial.get().kek
        var tokens: [String: String] = [:]
        for id in ["pc-1", "pc-2"] { tokens[id] = try await store.addAgent(try AgentID(id)).revealed }
        _ = try await store.registerKEK(pathOnlyKEK(kek.publicKey, kek.privateKey))
        let pem = try String(contentsOfFile: kek.publicKey, encoding: .utf8)
        let row = try await store.registerKEK(KEKRegistration(pubDatafile: nil, publicKeyPEM: pem, privDatafile: nil, active: false,
                                                              kekID: try KEKPublicKey(pemFile: kek.publicKey).id))
        #expect(row == 2)
        var captures: [SealedBlob] = []
        for (n, agent) in ["pc-1", "pc-2", "pc-1"].enumerated() {
            let session = try DEKSession(kek: try KEKPublicKey(pemFile: kek.publicKey), agentID: agent)
            var items: [IngestItem] = [ingestItem(session.record)]
            // The first agent's captures name a graphical session (user and display travel too).
            let graphical = n == 0 ? try BlobSession(user: UserName("alice"), display: ":1") : nil
            for i in 0..<20 {
                let size = i % 3 == 0 ? 40 * 1024 : 300 + i
                let blob = try session.seal(randomData(size), kind: i % 2 == 0 ? .screen : .keystrokes,
                                            captureTimeMs: 1_700_000_000_000 + Int64(n * 100 + i), session: graphical)
                captures.append(blob)
                items.append(ingestItem(blob, agent: try AgentID(agent)))
            }
            // Two receive times per session: the copy keeps each capture's own.
            let half = items.count / 2
            _ = try await store.ingest(Array(items[..<half]), receivedAtMs: 1_700_000_500_000 + Int64(n * 2))
            _ = try await store.ingest(Array(items[half...]), receivedAtMs: 1_700_000_500_001 + Int64(n * 2))
        }
        // A legal hold active now (must travel: the copy's retention would ignore it otherwise),
        // and one that ended (the audit log keeps it).
        _ = try await store.addHold(agent: try AgentID("pc-2"), untilMs: Int64(Date().timeIntervalSince1970 * 1000) + 86_400_000,
                                    reason: "case 17", createdBy: "legal")
        _ = try await store.addHold(agent: try AgentID("pc-1"), untilMs: 1_600_000_000_000, reason: "over", createdBy: "legal")
        let hash = await AdminPassword.hash(Secret(adminPassword), cost: 4)
        try await store.addAdmin(AdminAccount(name: try AdminName("ann"), role: .decryptor, passwordHash: hash, totpSecret: nil,
                                              createdAtMs: 1_700_000_000_000))
        try await store.addAdmin(AdminAccount(name: try AdminName("tess@example.org"), role: .auditor, passwordHash: hash,
                                              totpSecret: AdminTOTP.newSecret(), createdAtMs: 1_700_000_000_001,
                                              failedLogins: 2, totpLastStep: 56_666_667))
        try await store.createSession(admin: try AdminName("ann"), tokenHash: sessionHash, nowMs: Int64(Date().timeIntervalSince1970 * 1000))
        for action in ["agents.add", "keys.register", "captures.list"] {
            _ = try await store.appendAudit(actor: "admin", action: action, detail: "before the migration")
        }
        return (tokens, captures)
    }

    static func custos(_ arguments: [String]) async throws -> CommandResult {
        let bin = try builtProduct("custos")
        return try await offPool { try runCommand([bin] + arguments, timeout: 300) }
    }

    @Test func migratesAnEmbeddedCollectorIntoPostgreSQLVerifiesAndResumes() async throws {
        let cluster = try PostgresCollectorTests.shared.get()
        let dir = try TempDir("custos-migrate")
        defer { dir.remove() }
        let source = dir.file("collector.db")
        let (tokens, captures) = try await Self.makeSource(source)
        let blobFiles = try FileManager.default.contentsOfDirectory(atPath: source + ".blobs")
        #expect(!blobFiles.isEmpty, "the source keeps large blobs in blob files")
        let db = try await PostgresCollectorTests.Database.make(cluster, in: dir)
        let to = ["--to", db.url, "--to-password-file", db.passwordFile]

        let first = try await Self.custos(["db", "migrate", "--from", source] + to)
        #expect(first.status == 0, "\(first.stderrString)")
        #expect(first.stderrString.contains("2 agents (2 new), 2 KEK rows (2 new), 3 DEK records (3 new), 60 captures (60 new"),
                "\(first.stderrString)")
        #expect(first.stderrString.contains("verified") && first.stderrString.contains("1 active legal hold (1 new)"),
                "\(first.stderrString)")
        #expect(first.stderrString.contains("2 dashboard accounts (2 new; sessions not copied)"), "\(first.stderrString)")
        #expect(!first.stderrString.contains(db.password))

        // Everything is there, as it was, read back through PostgreSQL.
        let location = try StorageLocation(db.url, passwordFile: db.passwordFile)
        try await StorageOpener.withStorage(location, createIfMissing: false) { pg in
            for (id, token) in tokens {
                #expect(try await pg.authenticate(try AgentID(id), token: Secret(token)), "the token of \(id) works after the move")
            }
            let keks = try await pg.keks()
            #expect(keks.map(\.rowID) == [1, 2] && keks[0].pubDatafile != nil && keks[1].publicKeyPEM != nil && !keks[1].active)
            #expect(try await pg.counts() == (60, 3))
            for blob in captures {
                #expect(try await pg.blob(blob.header.blobID) == blob.serialized, "blob \(blob.header.blobID)")
            }
            let sqlite = try SQLiteStorage(path: source)
            for blob in captures {
                #expect(try await pg.capture(blob.header.blobID) == (try await sqlite.capture(blob.header.blobID)),
                        "the row of \(blob.header.blobID), receive time included")
            }
            // Dashboard accounts as stored (the same bcrypt hash logs in; TOTP secret and step,
            // failed logins), their sessions not: reviewers log in again.
            let accounts = try await pg.admins()
            #expect(accounts == (try await sqlite.admins()) && accounts.count == 2, "\(accounts)")
            #expect(await AdminPassword.verify(Secret(Self.adminPassword), hash: accounts[0].passwordHash))
            #expect(accounts[1].totpLastStep == 56_666_667 && accounts[1].failedLogins == 2)
            let now = Int64(Date().timeIntervalSince1970 * 1000), limits = SessionLimits(idleMs: 3_600_000, maxMs: 3_600_000)
            #expect(try await sqlite.session(tokenHash: Self.sessionHash, nowMs: now, limits: limits) != nil)
            #expect(try await pg.session(tokenHash: Self.sessionHash, nowMs: now, limits: limits) == nil, "no session copied")
            await sqlite.close()
            let audit = try await pg.auditEntries(before: nil, limit: 10)
            // The copy's own record, the source's three, and (oldest) the "started" marker written
            // right after the preflight, which lets an interrupted copy resume.
            #expect(audit.map(\.action) == ["db.migrate", "captures.list", "keys.register", "agents.add", "db.migrate"], "\(audit)")
            #expect(audit.dropFirst().map(\.id) == [4, 3, 2, 1])
            #expect(audit.last?.detail.contains("started") == true, "\(audit)")
            let holds = try await pg.holds(activeAtMs: nil)
            #expect(holds.count == 1 && holds.first?.agentID.rawValue == "pc-2" && holds.first?.reason == "case 17", "\(holds)")
        }
        let rows = try await cluster.psqlAsync("SELECT * FROM public.encryption_dek order by creation_time desc", database: db.name)
        #expect(rows.split(separator: "\n").count == 3, "\(rows)")

        // Again: nothing new, still verified (a resumed copy).
        let again = try await Self.custos(["db", "migrate", "--from", source] + to + ["--quiet"])
        #expect(again.status == 0, "\(again.stderrString)")
        #expect(again.stderrString.contains("60 captures (0 new") && again.stderrString.contains("verified"), "\(again.stderrString)")
        #expect(again.stderrString.contains("2 dashboard accounts (0 new"), "\(again.stderrString)")

        // The old collector goes on (an agent added, an audit record: ids the target's own
        // db.migrate records took): a third run copies what is new and verifies.
        let later = try SQLiteStorage(path: source)
        let lateToken = try await later.addAgent(try AgentID("pc-late")).revealed
        try await later.addAdmin(AdminAccount(name: try AdminName("late"), role: .viewer, passwordHash: "$2b$04$late", totpSecret: nil,
                                              createdAtMs: 1_700_000_000_002))
        _ = try await later.appendAudit(actor: "admin", action: "captures.list", detail: "after the migration")
        await later.close()
        let third = try await Self.custos(["db", "migrate", "--from", source] + to + ["--quiet"])
        #expect(third.status == 0, "\(third.stderrString)")
        #expect(third.stderrString.contains("3 agents (1 new)") && third.stderrString.contains("verified"), "\(third.stderrString)")
        #expect(third.stderrString.contains("3 dashboard accounts (1 new"), "\(third.stderrString)")
        // An account whose credentials were changed on the copy is never overwritten: refused
        // before anything is written, naming it.
        try await StorageOpener.withStorage(location, createIfMissing: false) { (pg: any CollectorStorage) async throws in
            try await pg.setAdminRole(try AdminName("late"), role: .decryptor)
        }
        let clash = try await Self.custos(["db", "migrate", "--from", source] + to + ["--quiet"])
        #expect(clash.status == 2 && clash.stderrString.contains("dashboard account late has another role, password or TOTP secret"),
                "\(clash.stderrString)")
        try await StorageOpener.withStorage(location, createIfMissing: false) { (pg: any CollectorStorage) async throws in
            #expect(try await pg.admin(try AdminName("late"))?.role == .decryptor, "left as it was")
            try await pg.setAdminRole(try AdminName("late"), role: .viewer)
        }
        try await StorageOpener.withStorage(location, createIfMissing: false) { (pg: any CollectorStorage) async throws in
            #expect(try await pg.authenticate(try AgentID("pc-late"), token: Secret(lateToken)))
            let actions = try await pg.auditEntries(before: nil, limit: 100).map(\.detail)
            #expect(actions.filter { $0 == "after the migration" }.count == 1)
        }
        // Made after the move: the next ids follow the copied ones.
        let publicKey = try sharedMaterial.get().kek.publicKey
        try await StorageOpener.withStorage(location, createIfMissing: false) { (pg: any CollectorStorage) async throws in
            #expect(try await pg.registerKEK(pathOnlyKEK(publicKey)) == 3)
            #expect(try await pg.appendAudit(actor: "t", action: "after", detail: "").id > 3)
        }

        // Another collector's database into the same target: refused before anything is written.
        let other = dir.file("other.db")
        let store = try SQLiteStorage(path: other)
        _ = try await store.addAgent(try AgentID("pc-1"))
        _ = try await store.addAgent(try AgentID("intruder"))
        await store.close()
        let before = try await cluster.psqlAsync("SELECT count(*) FROM agents", database: db.name)
        let refused = try await Self.custos(["db", "migrate", "--from", other] + to)
        #expect(refused.status == 2 && refused.stderrString.contains("the target is not empty and is not an earlier copy"),
                "\(refused.stderrString)")
        #expect(try await cluster.psqlAsync("SELECT count(*) FROM agents", database: db.name) == before, "nothing written")

        // The same database, however named, is refused (a symbolic link, `..`).
        let same = try await Self.custos(["db", "migrate", "--from", source, "--to", source])
        #expect(same.status == 2 && same.stderrString.contains("--from and --to name the same database"), "\(same.stderrString)")
        try FileManager.default.createSymbolicLink(atPath: dir.file("link.db"), withDestinationPath: source)
        let linked = try await Self.custos(["db", "migrate", "--from", source, "--to", dir.file("link.db")])
        #expect(linked.status == 2 && linked.stderrString.contains("are the same database"), "\(linked.stderrString)")
        let missing = try await Self.custos(["db", "migrate", "--from", dir.file("nope.db")] + to)
        #expect(missing.status == 2 && missing.stderrString.contains("nope.db"), "\(missing.stderrString)")
    }

    /// SQLite into SQLite works the same (a copy to another disk); a blob file damaged in the
    /// source shows up as a problem, not as a silent hole.
    /// Into PostgreSQL with `--to-blob-dir`: the large blobs land in blob files there (rows with
    /// a `blob_ref`), verified byte for byte; and back out of it with `--from-blob-dir` into
    /// another SQLite file, verified again.
    @Test func migratesIntoAndOutOfABlobDirectory() async throws {
        let cluster = try PostgresCollectorTests.shared.get()
        let dir = try TempDir("custos-migrate-blobdir")
        defer { dir.remove() }
        let source = dir.file("collector.db")
        let (_, captures) = try await Self.makeSource(source)
        let blobs = dir.file("blobs")
        try FileManager.default.createDirectory(atPath: blobs, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        let db = try await PostgresCollectorTests.Database.make(cluster, in: dir)
        // A --to-blob-dir that cannot be used fails before anything is copied (QA: it used to
        // fail at the first large blob, leaving a partial target that a second run refused).
        let open = dir.file("open-to-all"), foreign = dir.file("foreign")
        for (path, mode) in [(open, 0o777), (foreign, 0o700)] as [(String, Int)] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false, attributes: [.posixPermissions: mode])
        }
        _ = chmod(open, 0o777)  // past the umask
        try Data("0123456789abcdef0123456789abcdef\n".utf8).write(to: URL(fileURLWithPath: foreign + "/.custos-blobs"))
        for (bad, expected) in [(dir.file("missing"), "does not exist"), (open, "must not be writable by group or others"),
                                (foreign, "belongs to another database")] {
            let r = try await Self.custos(["db", "migrate", "--from", source, "--to", db.url, "--to-password-file", db.passwordFile,
                                           "--to-blob-dir", bad, "--quiet"])
            #expect(r.status == 2 && r.stderrString.contains("--to-blob-dir: ") && r.stderrString.contains(expected),
                    "\(bad): \(r.stderrString)")
            let rows = try await cluster.psqlAsync(
                "SELECT (SELECT count(*) FROM agents) + (SELECT count(*) FROM captures) + (SELECT count(*) FROM audit_log)", database: db.name)
            #expect(rows.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "\(bad): something was copied")
        }
        let into = try await Self.custos(["db", "migrate", "--from", source, "--to", db.url, "--to-password-file", db.passwordFile,
                                          "--to-blob-dir", blobs, "--quiet"])
        #expect(into.status == 0 && into.stderrString.contains("60 captures") && into.stderrString.contains("verified"),
                "\(into.stderrString)")
        let large = captures.filter { $0.serialized.count >= 32 * 1024 }
        let refs = try await cluster.psqlAsync("SELECT count(*) FROM captures WHERE blob_ref IS NOT NULL AND length(blob) = 0",
                                               database: db.name)
        #expect(refs.trimmingCharacters(in: .whitespacesAndNewlines) == "\(large.count)")
        let files = try FileManager.default.contentsOfDirectory(atPath: blobs)
        #expect(files.contains(".custos-blobs") && files.filter { $0.hasSuffix(".blobs") }.count == 1, "\(files)")
        let location = try StorageLocation(db.url, passwordFile: db.passwordFile)
        try await StorageOpener.withStorage(location, createIfMissing: false, blobDirectory: blobs) { (pg: any CollectorStorage) async throws in
            for blob in captures { #expect(try await pg.blob(blob.header.blobID) == blob.serialized) }
        }
        // custos decrypt reads (and opens) all 60 with --db-blob-dir; without it, the error says where they are.
        let key = try sharedMaterial.get().kek.privateKey
        let pgArgs = ["--db", db.url, "--db-password-file", db.passwordFile, "--key", key]
        let decrypted = try await Self.custos(["decrypt"] + pgArgs + ["--db-blob-dir", blobs, "--out", dir.file("out")])
        // (The fixture's plaintexts are random bytes, not frames: each is opened, then found not decodable.)
        let opened = decrypted.stderrString.components(separatedBy: "decrypted, but the").count - 1
        #expect(opened == 60 && decrypted.stderrString.contains("60/60 items"), "\(decrypted.stderrString)")
        let blind = try await Self.custos(["decrypt"] + pgArgs + ["--out", dir.file("out-blind")])
        #expect(blind.status == 2 && blind.stderrString.contains("keeps large blobs in blob files (its collectors' blob-dir=): pass --db-blob-dir DIR"),
                "\(blind.stderrString)")
        #expect(!FileManager.default.fileExists(atPath: dir.file("out-blind")))
        // --db-blob-dir is checked (its marker) before anything is decrypted: another database's
        // directory, or an empty one where the volume should be mounted.
        let empty = dir.file("empty-mount-point")
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        for (bad, expected) in [(foreign, "belongs to another database"), (empty, "is its volume unmounted")] {
            let r = try await Self.custos(["decrypt"] + pgArgs + ["--db-blob-dir", bad, "--out", dir.file("out-bad")])
            #expect(r.status == 2 && r.stderrString.contains("--db-blob-dir: ") && r.stderrString.contains(expected), "\(r.stderrString)")
            #expect(!FileManager.default.fileExists(atPath: dir.file("out-bad")))
        }
        // Copying it out needs its blob directory too, and says which option names it.
        let noFrom = try await Self.custos(["db", "migrate", "--from", db.url, "--from-password-file", db.passwordFile,
                                            "--to", dir.file("nofrom.db"), "--quiet"])
        #expect(noFrom.status == 2 && noFrom.stderrString.contains("pass --from-blob-dir DIR"), "\(noFrom.stderrString)")
        // Out again, reading through the references.
        let back = try await Self.custos(["db", "migrate", "--from", db.url, "--from-password-file", db.passwordFile,
                                          "--from-blob-dir", blobs, "--to", dir.file("back.db"), "--quiet"])
        #expect(back.status == 0 && back.stderrString.contains("60 captures") && back.stderrString.contains("verified"),
                "\(back.stderrString)")
        // --to-blob-dir with a SQLite target is a usage error naming the option.
        let wrong = try await Self.custos(["db", "migrate", "--from", source, "--to", dir.file("x.db"), "--to-blob-dir", blobs])
        #expect(wrong.status == 2 && wrong.stderrString.contains("--to-blob-dir is for a postgres:// database only"),
                "\(wrong.stderrString)")
        // custos dashboard on this database (QA: it had no --db-blob-dir): without it, refused
        // before serving, saying which option to pass; with it, a large blob's sealed bytes are
        // served whole from its blob file.
        let pages = dir.file("dashboard")
        try FileManager.default.createDirectory(atPath: pages, withIntermediateDirectories: false)
        try "<!doctype html><title>Custos</title>".write(toFile: pages + "/index.html", atomically: true, encoding: .utf8)
        let port = try freeLocalPort()
        let dashboardArgs = ["dashboard", "--db", db.url, "--db-password-file", db.passwordFile, "--dashboard-dir", pages,
                             "--listen", "127.0.0.1:\(port)", "--one-time-login"]
        let blindDashboard = try await Self.custos(dashboardArgs)
        #expect(blindDashboard.status == 2 && blindDashboard.stderrString.contains("pass --db-blob-dir DIR"), "\(blindDashboard.stderrString)")
        let process = try BackgroundProcess(try builtProduct("custos"), dashboardArgs + ["--db-blob-dir", blobs],
                                            logPath: dir.file("dashboard.log"))
        defer { process.send(SIGTERM); _ = process.waitExit(timeout: 10) }
        try #require(try await waitUntil(timeout: 60) { process.log.contains("dashboard: https://") || !process.isRunning }, "\(process.log)")
        func logValue(_ key: String) -> String? {
            process.log.split(whereSeparator: \.isNewline).first { $0.hasPrefix(key) }.map { String($0.dropFirst(key.count)) }
        }
        let cert = try #require(logValue("certificate: ")?.split(separator: " ").first.map(String.init))
        let client = try AdminClient(url: "https://127.0.0.1:\(port)", caFile: cert)
        #expect(try await client.login(try #require(logValue("login: ")), try #require(logValue("password: "))).status == 200)
        let big = try #require(large.first)
        let sealed = try await client.post("/api/v1/sealed", json: ["blobs": [big.header.blobID.hex], "deks": [String]()])
        #expect(sealed.status == 200 && sealed.body == big.serialized && sealed.headers["x-custos-missing"] == "0",
                "\(sealed.status) \(sealed.body.count) bytes, \(big.serialized.count) expected")
        process.send(SIGTERM)
        #expect(process.waitExit(timeout: 30) == 0, "\(process.log)")
    }

    @Test func sqliteToSQLiteAndADamagedSourceBlob() async throws {
        let dir = try TempDir("custos-migrate-sqlite")
        defer { dir.remove() }
        let source = dir.file("collector.db")
        _ = try await Self.makeSource(source)
        let ok = try await Self.custos(["db", "migrate", "--from", source, "--to", dir.file("copy.db"), "--quiet"])
        #expect(ok.status == 0 && ok.stderrString.contains("60 captures") && ok.stderrString.contains("verified"), "\(ok.stderrString)")
        let copy = try SQLiteStorage(path: dir.file("copy.db"))
        let alices = try await copy.captures(CaptureQuery(user: try UserName("alice")), after: nil, limit: 100).items
        await copy.close()
        #expect(alices.count == 20 && alices.allSatisfy { $0.display == ":1" && $0.agentID.rawValue == "pc-1" })
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.file("copy.db.blobs")).count
                == (try FileManager.default.contentsOfDirectory(atPath: source + ".blobs")).count)

        // Truncate one blob file of the source: the copy of its blobs cannot be made.
        let files = try FileManager.default.contentsOfDirectory(atPath: source + ".blobs").filter { !$0.hasPrefix(".") }.sorted()
        let victim = try #require(files.last { (try? FileManager.default.attributesOfItem(atPath: source + ".blobs/" + $0)[.size] as? Int) ?? 0 > 1000 })
        try FileHandle(forWritingTo: URL(fileURLWithPath: source + ".blobs/" + victim)).truncate(atOffset: 100)
        let damaged = try await Self.custos(["db", "migrate", "--from", source, "--to", dir.file("copy2.db")])
        // The rest is copied, each unreadable capture is a problem line, exit 1, and the count line is true.
        let err = damaged.stderrString
        #expect(damaged.status == 1, "\(err)")
        #expect(err.contains("its blob bytes cannot be read in the source") && err.contains(victim), "\(err)")
        #expect(!err.contains("60 of 60 copied") && err.contains("unreadable in the source"), "\(err)")
        let copy2 = try SQLiteStorage(path: dir.file("copy2.db"))
        let copied = try await copy2.counts().captures
        await copy2.close()
        #expect(copied > 0 && copied < 60 && err.contains("captures: \(copied) of 60 copied"), "\(copied) \(err)")
    }

    /// A copy interrupted after its first rows (here: the target's blob directory belongs to
    /// another database, so its first large blob is refused) is resumed by running it again.
    @Test func anInterruptedCopyResumes() async throws {
        let dir = try TempDir("custos-migrate-resume")
        defer { dir.remove() }
        let source = dir.file("collector.db")
        _ = try await Self.makeSource(source)
        let other = try await Self.custos(["db", "migrate", "--from", source, "--to", dir.file("other.db"), "--quiet"])
        #expect(other.status == 0, "\(other.stderrString)")
        let target = dir.file("copy.db")
        try FileManager.default.createDirectory(atPath: target + ".blobs", withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: dir.file("other.db.blobs/.custos-blobs"), toPath: target + ".blobs/.custos-blobs")
        let broken = try await Self.custos(["db", "migrate", "--from", source, "--to", target, "--quiet"])
        #expect(broken.status == 2 && broken.stderrString.contains("belongs to another database"), "\(broken.stderrString)")
        let partial = try SQLiteStorage(path: target)
        #expect(try await partial.agentCredentials().count == 2)
        #expect(try await partial.counts().captures < 60)
        await partial.close()

        try FileManager.default.removeItem(atPath: target + ".blobs")
        let resumed = try await Self.custos(["db", "migrate", "--from", source, "--to", target, "--quiet"])
        #expect(resumed.status == 0 && resumed.stderrString.contains("verified"), "\(resumed.stderrString)")
        let done = try SQLiteStorage(path: target)
        #expect(try await done.counts().captures == 60)
        let marks = try await done.auditEntries(before: nil, limit: 1000).filter { $0.action == "db.migrate" }
        await done.close()
        #expect(marks.count == 2 && marks.contains { $0.detail.hasSuffix(" started") }, "\(marks)")
    }
}
