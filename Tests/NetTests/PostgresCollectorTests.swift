import Collector
import CollectorStorage
import CollectorStorageOpen
import CustosBase
import Envelope
import Foundation
import Spool
import Testing
import TestSupport
import Transport
import Wire

/// The built `custos-collector` and `custos` on a real PostgreSQL cluster (issue 14): the
/// collector started with `database=postgres://…` and `database-password-file=` stores an
/// agent's upload, `custos … --db postgres://… --db-password-file …` lists it, and the seed's
/// `SELECT` in `psql` shows the DEK row. Faults: the database down at start, a wrong password,
/// a wrong database name, a password file open to others, `sslmode=verify-full` against a
/// server without TLS. (Storage-level faults of the backend itself — restart mid-ingest, the
/// `LISTEN` connection, TLS modes — are in StorageTests.)
@Suite(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"))
struct PostgresCollectorTests {
    /// One cluster for the tests that do not stop it (its watchdog removes it when the test
    /// process ends).
    static let shared: Result<PostgresCluster, any Error> = Result { try PostgresCluster() }

    /// A PostgreSQL database for one test: a role `custos` owning a fresh database, and a
    /// password file of mode 0640 in `dir`.
    struct Database {
        let cluster: PostgresCluster
        let name: String
        let password: String
        let passwordFile: String
        var url: String { cluster.url(database: name, user: "custos") }
        var db: [String] { ["--db", url, "--db-password-file", passwordFile] }

        static func make(_ cluster: PostgresCluster, in dir: TempDir) async throws -> Database {
            let password = try await offPool { try cluster.createRole("custos") }
            let name = try await cluster.createDatabaseAsync(owner: "custos")
            let file = dir.file("db.password")
            try (password + "\n").write(toFile: file, atomically: true, encoding: .utf8)
            guard chmod(file, 0o640) == 0 else { throw TestSupportError("chmod \(file) failed") }
            return Database(cluster: cluster, name: name, password: password, passwordFile: file)
        }
    }

    /// Starts the built collector on `config` and waits for its port (or its exit).
    static func startCollector(_ config: String, in dir: TempDir) async throws -> (BackgroundProcess, port: Int) {
        let process = try BackgroundProcess(try builtProduct("custos-collector"), ["--config", config],
                                            logPath: dir.file("collector-\(UInt32.random(in: 0...UInt32.max)).log"))
        var port = 0
        _ = try await waitUntil(timeout: 60) {
            let log = process.log
            if let r = log.range(of: "collector.port=") { port = Int(log[r.upperBound...].prefix { $0.isNumber }) ?? 0 }
            return port > 0 || !process.isRunning
        }
        guard port > 0 else { throw TestSupportError("the collector did not listen: \(process.log)") }
        return (process, port)
    }

    /// Runs the built collector on `config`, expecting it to stop by itself; returns its status and log.
    static func collectorExit(_ config: String) async throws -> CommandResult {
        let bin = try builtProduct("custos-collector")
        return try await offPool { try runCommand([bin, "--config", config], timeout: 60) }
    }

    static func client(port: Int, agentID: String, token: String) throws -> CollectorClient {
        let pki = try sharedMaterial.get().pki
        return try CollectorClient(configuration: testTransport(serverURL: "https://127.0.0.1:\(port)", agentID: agentID,
                                                                agentToken: token, pins: [try pki.pin("leaf")], caFile: nil),
                                   logger: LogCapture().logger("transport"))
    }

    /// `custos` with `arguments`, off the concurrency pool.
    static func custos(_ arguments: [String]) async throws -> CommandResult {
        let bin = try builtProduct("custos")
        return try await offPool { try runCommand([bin] + arguments, timeout: 120) }
    }

    /// Records sealed to the shared KEK for `agent`: a DEK record and `count` blobs.
    static func records(_ agent: String, count: Int) throws -> [EnvelopeRecord] {
        let session = try DEKSession(kek: try KEKPublicKey(pemFile: try sharedMaterial.get().kek.publicKey), agentID: agent)
        var out: [EnvelopeRecord] = [.dekRecord(session.record)]
        for i in 0..<count {
            out.append(.blob(try session.seal(randomData(500 + i), kind: i % 2 == 0 ? .screen : .keystrokes,
                                              captureTimeMs: 1_700_000_000_000 + Int64(i))))
        }
        return out
    }

    /// The seed's KEK row, inserted with `psql` verbatim (step 6).
    static func insertSeedKEK(_ db: Database) async throws {
        let kek = try sharedMaterial.get().kek
        try await db.cluster.psqlAsync("insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '\(kek.publicKey)', '\(kek.privateKey)');",
                                       database: db.name)
    }

    /// End to end: `custos agents add` on PostgreSQL (the schema is made), the seed's KEK row by
    /// `psql`, the collector executable stores an upload, `custos captures list` lists it, and
    /// the seed's `SELECT * FROM public.encryption_dek order by creation_time desc` shows the row.
    @Test func theCollectorStoresOnPostgreSQLAndCustosListsIt() async throws {
        let cluster = try Self.shared.get()
        let dir = try TempDir("custos-pg-e2e")
        defer { dir.remove() }
        let db = try await Database.make(cluster, in: dir)
        let add = try await Self.custos(["agents", "add"] + db.db + ["--id", "pg-agent"])
        #expect(add.status == 0, "\(add.stderrString)")
        let token = add.stdoutString.trimmingCharacters(in: .whitespacesAndNewlines)
        try await Self.insertSeedKEK(db)
        let pki = try sharedMaterial.get().pki
        try writeCollectorConfig(dir.file("collector.cfg"), pki: pki, listen: "127.0.0.1:0", database: db.url,
                                 passwordFile: db.passwordFile)

        let (collector, port) = try await Self.startCollector(dir.file("collector.cfg"), in: dir)
        defer { collector.send(SIGTERM); collector.waitExit(timeout: 10) }
        let client = try Self.client(port: port, agentID: "pg-agent", token: token)
        let health = try await client.health()
        #expect(health.status == "ok" && health.activeKEKs == 1, "\(health)")
        #expect(health.storage == HealthResponse.Storage(backend: "postgresql", location: "\(cluster.host):\(cluster.port)/\(db.name)",
                                                         reachable: true))
        let records = try Self.records("pg-agent", count: 3)
        #expect(try await client.upload(stream(records)).results.allSatisfy { $0.status == .stored })
        #expect(try await client.upload(stream(records)).results.allSatisfy { $0.status == .duplicate })
        await client.close()
        #expect(!FileManager.default.fileExists(atPath: dir.file("collector.db")), "a SQLite file was made")

        let list = try await Self.custos(["captures", "list"] + db.db + ["--agent", "pg-agent"])
        #expect(list.status == 0, "\(list.stderrString)")
        #expect(list.stdoutString.contains("3 captures"), "\(list.stdoutString)")
        for r in records.dropFirst() { #expect(list.stdoutString.contains(r.blobID.hex), "\(list.stdoutString)") }

        let rows = try await cluster.psqlAsync("SELECT * FROM public.encryption_dek order by creation_time desc", database: db.name)
        #expect(rows.split(separator: "\n").count == 1 && rows.contains("pg-agent"), "\(rows)")
        #expect(!collector.log.contains(db.password), "the password reached the log")
        collector.send(SIGTERM)
        #expect(collector.waitExit(timeout: 20) == 0, "\(collector.log)")
    }

    /// The collector executable with `blob-dir=`: a directory that is missing, open to others or
    /// another database's is refused at start (exit 1, naming it and what is wrong) instead of
    /// answering 503 at the first large upload; with the right one, the large blob goes to this
    /// collector's blob file and the small one to the row, both read back through the storage of
    /// `custos decrypt --db-blob-dir`; a volume unmounted later (an empty directory in its place)
    /// is still caught at upload time (503, nothing stored), and the retry goes through once it is
    /// back.
    @Test func theCollectorChecksBlobDirAtStartAndAtEachUpload() async throws {
        let cluster = try Self.shared.get()
        let dir = try TempDir("custos-pg-blobdir")
        defer { dir.remove() }
        let db = try await Database.make(cluster, in: dir)
        let add = try await Self.custos(["agents", "add"] + db.db + ["--id", "blob-agent"])
        #expect(add.status == 0, "\(add.stderrString)")
        let token = add.stdoutString.trimmingCharacters(in: .whitespacesAndNewlines)
        try await Self.insertSeedKEK(db)
        let pki = try sharedMaterial.get().pki
        // A relative blob-dir= is relative to the config file's folder, as database= is.
        try writeCollectorConfig(dir.file("collector.cfg"), pki: pki, listen: "127.0.0.1:0", database: db.url,
                                 passwordFile: db.passwordFile, extra: "blob-dir=blobs")
        let blobs = dir.file("blobs")

        let missing = try await Self.collectorExit(dir.file("collector.cfg"))
        #expect(missing.status == 1 && missing.stderrString.contains(blobs) && missing.stderrString.contains("(blob-dir=) does not exist"),
                "\(missing.stderrString)")
        try FileManager.default.createDirectory(atPath: blobs, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        _ = chmod(blobs, 0o777)
        let open = try await Self.collectorExit(dir.file("collector.cfg"))
        #expect(open.status == 1 && open.stderrString.contains("must not be writable by group or others (mode 777"), "\(open.stderrString)")
        _ = chmod(blobs, 0o700)
        try Data("0123456789abcdef0123456789abcdef\n".utf8).write(to: URL(fileURLWithPath: blobs + "/.custos-blobs"))
        let foreign = try await Self.collectorExit(dir.file("collector.cfg"))
        #expect(foreign.status == 1 && foreign.stderrString.contains("belongs to another database"), "\(foreign.stderrString)")
        try FileManager.default.removeItem(atPath: blobs + "/.custos-blobs")
        let none = try await cluster.psqlAsync("SELECT count(*) FROM captures", database: db.name)
        #expect(none.trimmingCharacters(in: .whitespacesAndNewlines) == "0")

        let (collector, port) = try await Self.startCollector(dir.file("collector.cfg"), in: dir)
        defer { collector.send(SIGTERM); collector.waitExit(timeout: 10) }
        let client = try Self.client(port: port, agentID: "blob-agent", token: token)
        let session = try DEKSession(kek: try KEKPublicKey(pemFile: try sharedMaterial.get().kek.publicKey), agentID: "blob-agent")
        let large = try session.seal(randomData(100_000), kind: .screen, captureTimeMs: 1_700_000_000_000)
        let small = try session.seal(randomData(300), kind: .keystrokes, captureTimeMs: 1_700_000_000_001)
        let records: [EnvelopeRecord] = [.dekRecord(session.record), .blob(large), .blob(small)]
        #expect(try await client.upload(stream(records)).results.allSatisfy { $0.status == .stored })
        let files = try FileManager.default.contentsOfDirectory(atPath: blobs).sorted()
        #expect(files.count == 2 && files[0] == ".custos-blobs" && files[1].hasSuffix("-00000001.blobs"), "\(files)")
        let refs = try await cluster.psqlAsync("SELECT blob_id FROM captures WHERE blob_ref IS NOT NULL", database: db.name)
        #expect(refs.trimmingCharacters(in: .whitespacesAndNewlines) == large.header.blobID.hex)
        let location = try StorageLocation(db.url, passwordFile: db.passwordFile)
        try await StorageOpener.withStorage(location, createIfMissing: false, blobDirectory: blobs) { (pg: any CollectorStorage) async throws in
            #expect(try await pg.blob(large.header.blobID) == large.serialized)
            #expect(try await pg.blob(small.header.blobID) == small.serialized)
        }

        // The volume unmounted while the collector runs: its empty mount point is refused.
        try FileManager.default.moveItem(atPath: blobs, toPath: blobs + ".away")
        try FileManager.default.createDirectory(atPath: blobs, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        let later = try session.seal(randomData(90_000), kind: .screen, captureTimeMs: 1_700_000_000_002)
        do {
            let answer = try await client.upload(stream([.dekRecord(session.record), .blob(later)]))
            Issue.record("the upload was answered: \(answer)")
        } catch {
            #expect(error.httpStatus == 503, "\(error)")
        }
        #expect(collector.log.contains("is its volume unmounted"), "\(collector.log)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: blobs).isEmpty, "the mount point was written to")
        try FileManager.default.removeItem(atPath: blobs)
        try FileManager.default.moveItem(atPath: blobs + ".away", toPath: blobs)
        #expect(try await client.upload(stream([.dekRecord(session.record), .blob(later)])).results.allSatisfy { $0.status != .refused })
        let count = try await cluster.psqlAsync("SELECT count(*) FROM captures", database: db.name)
        #expect(count.trimmingCharacters(in: .whitespacesAndNewlines) == "3")
        await client.close()
        collector.send(SIGTERM)
        #expect(collector.waitExit(timeout: 20) == 0, "\(collector.log)")
    }

    /// PostgreSQL down when the collector starts: it says so naming host and port, serves
    /// anyway (health `storage-failing`, uploads 503 with `Retry-After`), retries, and once the
    /// server is up stores the same upload once.
    @Test func postgreSQLDownAtStartIsRetried() async throws {
        let cluster = try await PostgresCluster.make()
        defer { cluster.shutdown() }
        let dir = try TempDir("custos-pg-down")
        defer { dir.remove() }
        let db = try await Database.make(cluster, in: dir)
        let add = try await Self.custos(["agents", "add"] + db.db + ["--id", "pg-down"])
        try #require(add.status == 0, "\(add.stderrString)")
        let token = add.stdoutString.trimmingCharacters(in: .whitespacesAndNewlines)
        try await Self.insertSeedKEK(db)
        // The admin listener too (QA): an account, and admin-listen with its pages.
        let pw = dir.file("admin.pw")
        try "a long admin password\n".write(toFile: pw, atomically: true, encoding: .utf8)
        chmod(pw, 0o600)
        let admin = try await Self.custos(["admins", "add"] + db.db + ["--name", "ann", "--role", "decryptor", "--password-file", pw])
        try #require(admin.status == 0, "\(admin.stderrString)")
        try FileManager.default.createDirectory(atPath: dir.file("dashboard"), withIntermediateDirectories: false)
        try "<!doctype html><title>Custos</title>".write(toFile: dir.file("dashboard/index.html"), atomically: true, encoding: .utf8)
        let adminPort = try freeLocalPort()
        try writeCollectorConfig(dir.file("collector.cfg"), pki: try sharedMaterial.get().pki, listen: "127.0.0.1:0",
                                 database: db.url, passwordFile: db.passwordFile,
                                 extra: "retry-after-seconds=1\nadmin-listen=127.0.0.1:\(adminPort)\ndashboard-dir=dashboard")
        try await cluster.stopAsync()

        let (collector, port) = try await Self.startCollector(dir.file("collector.cfg"), in: dir)
        defer { collector.send(SIGTERM); collector.waitExit(timeout: 10) }
        let log = collector.log
        #expect(log.contains("cannot reach the database at start") && log.contains("127.0.0.1:\(cluster.port)/\(db.name)")
                && log.contains("Connection refused"), "\(log)")
        // The admin listener listens after the storage's first try and answers 503 while the
        // database is down (pages need no database).
        try #require(try await waitUntil(timeout: 30) { collector.log.contains("collector.admin_port=\(adminPort)") }, "\(collector.log)")
        let adminClient = try AdminClient(url: "https://127.0.0.1:\(adminPort)", caFile: try sharedMaterial.get().pki.rootCertificate)
        let downLogin = try await adminClient.login("ann", "a long admin password")
        #expect(downLogin.status == 503 && downLogin.error != nil, "\(downLogin.status) \(downLogin.text)")
        #expect(try await adminClient.get("/").status == 200)
        let client = try Self.client(port: port, agentID: "pg-down", token: token)
        #expect(try await client.health().status == "storage-failing")
        // The agent's own upload loop: its spool keeps every record while the answer is 503.
        let logs = LogCapture()
        let spool = try Spool(directory: dir.file("spool"), maxBytes: 64 << 20, logger: logs.logger("spool"))
        let records = try Self.records("pg-down", count: 4)
        _ = try UploaderTests.spool(records, into: spool)
        let uploader = Uploader(queue: spool, client: try Self.client(port: port, agentID: "pg-down", token: token),
                                configuration: .init(retryableRefusalDelay: .zero), logger: logs.logger("uploader"))
        do {
            let summary = try await uploader.uploadOnce()
            Issue.record("the upload was answered: \(summary)")
        } catch {
            #expect(error.httpStatus == 503 && error.retryAfter == .seconds(1), "\(error)")
        }
        #expect(try spool.stats().totalSpooled.count == 5, "a record was given up")

        try await cluster.startAsync()
        // The retry (0.5 s doubling to 10 s) connects, and reads the KEK rows.
        #expect(try await waitUntil(timeout: 30) { collector.log.contains("the database answers") }, "\(collector.log)")
        #expect(try await waitUntil(timeout: 10) {
            let h = try? await client.health()
            return h?.status == "ok" && h?.activeKEKs == 1
        }, "\(collector.log)")
        try await UploaderTests.drain(spool, uploader: uploader, within: .seconds(30))
        // The admin API works now, with the same listener.
        let upLogin = try await adminClient.login("ann", "a long admin password")
        #expect(upLogin.status == 200, "\(upLogin.status) \(upLogin.text)")
        let captures = try await adminClient.get("/api/v1/captures?agent=pg-down")
        #expect((captures.json?["items"] as? [[String: Any]])?.count == 4, "\(captures.text)")
        #expect(try await client.upload(stream(records)).results.allSatisfy { $0.status == .duplicate })
        await client.close()
        let counts = try await cluster.psqlAsync("SELECT (SELECT count(*) FROM captures) || ' ' || (SELECT count(*) FROM public.encryption_dek);",
                                                 database: db.name)
        #expect(counts.trimmingCharacters(in: .whitespacesAndNewlines) == "4 1", "stored once: \(counts)")
        #expect(collector.isRunning)
        // SIGTERM: the server, then the storage (last in the group's shutdown), stop; exit 0.
        collector.send(SIGTERM)
        #expect(collector.waitExit(timeout: 20) == 0, "\(collector.log)")
    }

    /// The collector refuses to start, with a clear error and exit 1, when PostgreSQL refuses
    /// it for good: a wrong password (naming user@host:port/db, never the password), a wrong
    /// database name, a password file others may read (naming the file and the chmod), and
    /// `sslmode=verify-full` against a server without TLS. `custos` says the same, exit 2.
    @Test func refusalsAtStartAreClear() async throws {
        let cluster = try Self.shared.get()
        let dir = try TempDir("custos-pg-refused")
        defer { dir.remove() }
        let db = try await Database.make(cluster, in: dir)
        let pki = try sharedMaterial.get().pki
        let wrong = "wrong-\(PostgresCluster.newPassword())"
        let wrongFile = dir.file("wrong.password")
        try (wrong + "\n").write(toFile: wrongFile, atomically: true, encoding: .utf8)
        chmod(wrongFile, 0o600)
        let looseFile = dir.file("loose.password")
        try (db.password + "\n").write(toFile: looseFile, atomically: true, encoding: .utf8)
        chmod(looseFile, 0o644)
        let hostPort = "\(cluster.host):\(cluster.port)"
        let cases: [(url: String, file: String, expected: [String])] = [
            (db.url, wrongFile, ["custos@\(hostPort)/\(db.name)", "refused the login", "password file"]),
            (cluster.url(database: "no_such_db", user: "custos"), db.passwordFile,
             ["custos@\(hostPort)/no_such_db", "no such database"]),
            (db.url, looseFile, ["database password file '\(looseFile)'", "others may read or write it (mode 644)",
                                 "chmod o-rwx '\(looseFile)'"]),
            (db.url.replacingOccurrences(of: "sslmode=disable", with: "sslmode=verify-full"), db.passwordFile,
             ["custos@\(hostPort)/\(db.name)", "the server does not offer TLS"]),
        ]
        for (i, c) in cases.enumerated() {
            let config = dir.file("c\(i).cfg")
            try "listen=127.0.0.1:0\ntls-cert=\(pki.chain("leaf"))\ntls-key=\(pki.key("leaf"))\ndatabase=\(c.url)\ndatabase-password-file=\(c.file)\n"
                .write(toFile: config, atomically: true, encoding: .utf8)
            let r = try await Self.collectorExit(config)
            #expect(r.status == 1, "case \(i): \(r.stderrString)")
            let line = r.stderrString.split(separator: "\n").last { $0.hasPrefix("custos-collector: ") }.map(String.init) ?? ""
            for e in c.expected { #expect(line.contains(e), "case \(i): \(e) not in \(r.stderrString)") }
            #expect(!r.stderrString.contains(wrong) && !r.stderrString.contains(db.password), "case \(i): a password was shown")

            let cli = try await Self.custos(["agents", "list", "--db", c.url, "--db-password-file", c.file])
            #expect(cli.status == 2, "case \(i): \(cli.stderrString)")
            for e in c.expected { #expect(cli.stderrString.contains(e), "case \(i): \(e) not in \(cli.stderrString)") }
            #expect(!cli.stderrString.contains(wrong) && !cli.stderrString.contains(db.password))
        }
    }

    /// Retention on PostgreSQL with the built binaries: `custos hold add` holds one agent; two
    /// collectors with `retention-days=5` start on the same database; the expired captures of
    /// the other agent are removed once (one log line and one `retention.expire` audit record
    /// across both: the lease), the held agent's stay.
    @Test func twoCollectorsExpireOnceAndKeepTheHeldAgent() async throws {
        let cluster = try Self.shared.get()
        let dir = try TempDir("custos-pg-retention")
        defer { dir.remove() }
        let db = try await Database.make(cluster, in: dir)
        var tokens: [String: String] = [:]
        for agent in ["pg-old", "pg-held"] {
            let add = try await Self.custos(["agents", "add"] + db.db + ["--id", agent])
            #expect(add.status == 0, "\(add.stderrString)")
            tokens[agent] = add.stdoutString.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let hold = try await Self.custos(["hold", "add"] + db.db + ["--agent", "pg-held", "--until", "2099-01-01", "--reason", "case 9"])
        #expect(hold.status == 0 && hold.stdoutString == "1\n", "\(hold.stderrString)")
        try await Self.insertSeedKEK(db)
        let pki = try sharedMaterial.get().pki
        func config(_ name: String, _ extra: String) throws -> String {
            let path = dir.file(name)
            try writeCollectorConfig(path, pki: pki, listen: "127.0.0.1:0", database: db.url, passwordFile: db.passwordFile,
                                     extra: extra)
            return path
        }

        // Captures from 2023 (Self.records), stored by a collector without retention.
        let (plain, port) = try await Self.startCollector(try config("plain.cfg", ""), in: dir)
        for agent in ["pg-old", "pg-held"] {
            let client = try Self.client(port: port, agentID: agent, token: tokens[agent]!)
            #expect(try await client.upload(stream(try Self.records(agent, count: 4))).results.allSatisfy { $0.status == .stored })
            await client.close()
        }
        plain.send(SIGTERM)
        #expect(plain.waitExit(timeout: 20) == 0, "\(plain.log)")
        func count(_ sql: String) async throws -> String {
            try await cluster.psqlAsync(sql, database: db.name).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(try await count("SELECT count(*) FROM captures") == "8")

        let retention = try config("retention.cfg", "retention-days=5\nretention-interval-minutes=60")
        let (a, _) = try await Self.startCollector(retention, in: dir)
        defer { a.send(SIGTERM); a.waitExit(timeout: 10) }
        let (b, _) = try await Self.startCollector(retention, in: dir)
        defer { b.send(SIGTERM); b.waitExit(timeout: 10) }
        #expect(try await waitUntil(timeout: 60) { (a.log + b.log).contains("retention: expired captures") }, "\(a.log)\n\(b.log)")
        try await Task.sleep(for: .seconds(2))  // both have run at start by now
        #expect(try await count("SELECT count(*) FROM captures WHERE agent_id = 'pg-old'") == "0")
        #expect(try await count("SELECT count(*) FROM captures WHERE agent_id = 'pg-held'") == "4")
        #expect(try await count("SELECT count(*) FROM encryption_dek") == "2", "DEK records stay")
        let lines = (a.log + b.log).components(separatedBy: "\n").filter { $0.contains("retention: expired captures") }
        #expect(lines.count == 1, "\(lines)")
        #expect(lines.first?.contains("retention.captures=4") == true && lines.first?.contains("default=5d") == true, "\(lines)")
        #expect(try await count("SELECT count(*) FROM audit_log WHERE action = 'retention.expire'") == "1")
        #expect(try await count("SELECT count(*) FROM audit_log WHERE action = 'hold.add'") == "1")
        for p in [a, b] {
            p.send(SIGTERM)
            #expect(p.waitExit(timeout: 20) == 0, "\(p.log)")
        }
    }
}
