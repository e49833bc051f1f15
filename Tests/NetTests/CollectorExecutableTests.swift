import Collector
import CollectorStorage
import Foundation
import Synchronization
import Testing
import TestSupport
import Transport
import Wire

@Suite struct CollectorExecutableTests {
    @Test func sampleConfigMatchesTheSchema() throws {
        let path = packageRoot + "/collector.cfg.sample"
        let config = try CollectorConfiguration(file: path)
        #expect(config.listenHost == "0.0.0.0" && config.listenPort == 8443)
        // The packaged collector's state directory (packaging: custos-collector's StateDirectory).
        #expect(config.database == .sqlite(path: "/var/lib/custos-collector/collector.db"))
        #expect(config.retention.keepsEverything && config.retentionInterval == .seconds(3600), "retention is opt-in")
        #expect(config.maxRequestBytes == WireAPI.defaultMaxRequestBytes)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        for key in CollectorConfiguration.schema {
            #expect(text.contains("\(key.name)="), "collector.cfg.sample lacks \(key.name)")
            if let d = key.defaultValue { #expect(text.contains(d), "collector.cfg.sample lacks the default of \(key.name)") }
        }
    }

    @Test func badConfigNamesTheKey() throws {
        let dir = try TempDir("custos-collector-cfg")
        defer { dir.remove() }
        try "listen=nowhere\ntls-cert=a\ntls-key=b\n".write(toFile: dir.file("c.cfg"), atomically: true, encoding: .utf8)
        #expect { try CollectorConfiguration(file: dir.file("c.cfg")) } throws: {
            "\($0)".contains("listen") && "\($0)".contains("c.cfg:1")
        }
        try "listen=127.0.0.1:0\n".write(toFile: dir.file("d.cfg"), atomically: true, encoding: .utf8)
        #expect { try CollectorConfiguration(file: dir.file("d.cfg")) } throws: { "\($0)".contains("tls-cert") }
    }

    /// `blob-dir=` resolves against the config file's folder, goes with a postgres:// database
    /// only, and is absent by default (blobs stay in the table).
    @Test func blobDirIsForPostgreSQL() throws {
        let dir = try TempDir("custos-collector-blobdir")
        defer { dir.remove() }
        let pg = "tls-cert=a\ntls-key=b\ndatabase=postgres://custos@db.example.org/custos?sslmode=disable\n"
        try (pg + "blob-dir=blobs\n").write(toFile: dir.file("a.cfg"), atomically: true, encoding: .utf8)
        #expect(try CollectorConfiguration(file: dir.file("a.cfg")).blobDirectory == dir.file("blobs"))
        try pg.write(toFile: dir.file("b.cfg"), atomically: true, encoding: .utf8)
        #expect(try CollectorConfiguration(file: dir.file("b.cfg")).blobDirectory == nil)
        try "tls-cert=a\ntls-key=b\ndatabase=c.db\nblob-dir=/srv/blobs\n".write(toFile: dir.file("c.cfg"), atomically: true, encoding: .utf8)
        #expect { try CollectorConfiguration(file: dir.file("c.cfg")) } throws: {
            "\($0)".contains("blob-dir") && "\($0)".contains("c.cfg:4") && "\($0)".contains("postgres:// database only")
        }
    }

    /// The built `custos-collector` serves HTTPS from a config file and re-reads `encryption_kek` on SIGHUP.
    @Test func executableServesAndReloadsKEKsOnSIGHUP() async throws {
        try requireTool("sqlite3")
        let binary = try builtProduct("custos-collector")
        let dir = try TempDir("custos-collector-exe")
        defer { dir.remove() }
        let (pki, kek) = try sharedMaterial.get()
        try writeCollectorConfig(dir.file("collector.cfg"), pki: pki, listen: "127.0.0.1:0", extra: "kek-poll-seconds=3600")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--config", dir.file("collector.cfg")]
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        let output = DataBox()
        err.fileHandleForReading.readabilityHandler = { h in
            let d = h.availableData
            if d.isEmpty { h.readabilityHandler = nil; return }
            output.data.withLock { $0.append(d) }
        }
        try process.run()
        defer {
            if process.isRunning { process.terminate() }
            for _ in 0..<100 where process.isRunning { usleep(50_000) }
        }
        var port = 0
        for _ in 0..<300 where port == 0 {
            let text = String(decoding: output.data.withLock { $0 }, as: UTF8.self)
            if let r = text.range(of: "collector.port=") {
                port = Int(text[r.upperBound...].prefix { $0.isNumber }) ?? 0
            }
            if port == 0 { try await Task.sleep(for: .milliseconds(100)) }
        }
        try #require(port > 0, "no port in: \(String(decoding: output.data.withLock { $0 }, as: UTF8.self))")

        let token = try runChecked([try builtProduct("custos"), "agents", "add", "--db", dir.file("collector.db"), "--id", "exe-agent"])
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let client = try CollectorClient(configuration: testTransport(
            serverURL: "https://127.0.0.1:\(port)", agentID: "exe-agent", agentToken: token,
            pins: [try pki.pin("leaf")], caFile: nil), logger: LogCapture().logger("t"))
        #expect(try await client.health().activeKEKs == 0)

        try runChecked(["sqlite3", "-cmd", ".timeout 10000", dir.file("collector.db"),
                        "insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '\(kek.publicKey)', '\(kek.privateKey)');"])
        let journal = try runChecked(["sqlite3", "-cmd", ".timeout 10000", dir.file("collector.db"), "pragma journal_mode;"])
        #expect(journal.trimmingCharacters(in: .whitespacesAndNewlines) == "wal")
        // The database the collector created is owner-only, and so are its -wal and -shm.
        for suffix in ["", "-wal", "-shm"] {
            let mode = try FileManager.default.attributesOfItem(atPath: dir.file("collector.db") + suffix)[.posixPermissions] as? Int
            #expect(mode == 0o600, "collector.db\(suffix) has mode \(String(mode ?? 0, radix: 8))")
        }
        kill(process.processIdentifier, SIGHUP)
        var active = 0
        for _ in 0..<50 where active == 0 {
            try await Task.sleep(for: .milliseconds(100))
            active = try await client.health().activeKEKs
        }
        #expect(active == 1)
        await client.close()
        process.terminate()
        for _ in 0..<100 where process.isRunning { try await Task.sleep(for: .milliseconds(50)) }
        #expect(!process.isRunning)
        #expect(String(decoding: output.data.withLock { $0 }, as: UTF8.self).contains("SIGHUP"))
    }
}
