import CollectorStorage
import CollectorStorageSQLite
import Crypto
import CustosBase
import Envelope
import Foundation
import GRDB
import Testing
import TestSupport

/// A `collector.db` made by the first collector (`Collector.SQLiteCollectorStore`, removed when
/// the collector moved onto the storage seam: migrations v1 and v2-blob-files, recorded by
/// GRDB in `grdb_migrations`), built here with its own SQL and blob files, opens in
/// ``SQLiteStorage`` with everything readable and gains v3.
@Suite struct LegacyDatabaseTests {
    /// The first collector's schema, verbatim: its `v1` and `v2-blob-files` migrations.
    static let firstCollectorSchema = """
        CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY);
        CREATE TABLE encryption_kek (
            id INTEGER PRIMARY KEY,
            active BOOLEAN NOT NULL DEFAULT 1,
            priv_encrypted BOOLEAN NOT NULL DEFAULT 1,
            pub_datafile TEXT NOT NULL,
            priv_datafile TEXT,
            kek_id TEXT,
            created_at TEXT DEFAULT CURRENT_TIMESTAMP
        );
        CREATE TABLE encryption_dek (
            dek_id TEXT PRIMARY KEY NOT NULL,
            kek_id TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            creation_time INTEGER NOT NULL,
            record BLOB NOT NULL,
            received_at INTEGER NOT NULL
        );
        CREATE INDEX encryption_dek_agent ON encryption_dek(agent_id, creation_time);
        CREATE TABLE captures (
            blob_id TEXT PRIMARY KEY NOT NULL,
            agent_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            dek_id TEXT NOT NULL,
            kek_id TEXT NOT NULL,
            sequence INTEGER NOT NULL,
            capture_time INTEGER NOT NULL,
            size INTEGER NOT NULL,
            blob BLOB NOT NULL,
            received_at INTEGER NOT NULL
        );
        CREATE INDEX captures_time ON captures(capture_time, sequence);
        CREATE INDEX captures_agent_time ON captures(agent_id, capture_time);
        CREATE TABLE agents (
            agent_id TEXT PRIMARY KEY NOT NULL,
            token_hash BLOB NOT NULL,
            created_at INTEGER NOT NULL
        );
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL
        );
        INSERT INTO grdb_migrations (identifier) VALUES ('v1');
        ALTER TABLE captures ADD COLUMN blob_file INTEGER;
        ALTER TABLE captures ADD COLUMN blob_offset INTEGER;
        CREATE INDEX captures_blob_file ON captures(blob_file, blob_offset);
        CREATE TABLE blob_store (id TEXT NOT NULL);
        INSERT INTO grdb_migrations (identifier) VALUES ('v2-blob-files');
        """

    @Test func aDatabaseOfTheFirstCollectorOpensWithEverythingReadable() async throws {
        try requireTool("sqlite3")
        let dir = try TempDir("custos-legacy-db")
        defer { dir.remove() }
        let path = dir.file("collector.db")
        let a = agent("legacy-host")
        let d = dek(a, time: 1_700_000_000_000, kek: kekID(5))
        let small = blob(d, kind: .keystrokes, time: 1_700_000_000_100, size: 300, sequence: 0)
        let large = blob(d, kind: .screen, time: 1_700_000_000_100, size: 90_000, sequence: 1)
        let larger = blob(d, kind: .screen, time: 1_700_000_000_200, size: 200_000, sequence: 2)
        let token = "legacy-token-0123456789abcdefghijklmnopqrstuv"
        let storeID = "legacy-store-id"
        let kekRow: Int64 = 1
        // What the first collector wrote, as it wrote it: ids as lowercase hex text, large blobs
        // in blob file 1 (its row's blob empty), small ones inline, the token as its SHA-256.
        do {
            let queue = try DatabaseQueue(path: path)
            try await queue.write { db in
                try db.execute(sql: Self.firstCollectorSchema)
                try db.execute(sql: "INSERT INTO blob_store (id) VALUES (?)", arguments: [storeID])
                try db.execute(sql: "INSERT INTO agents (agent_id, token_hash, created_at) VALUES (?, ?, ?)",
                               arguments: [a.rawValue, Data(SHA256.hash(data: Data(token.utf8))), 1_700_000_000_000])
                try db.execute(sql: """
                    INSERT INTO encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile, kek_id)
                    VALUES (?, ?, ?, ?, ?)
                    """, arguments: [true, true, "/etc/custos/keys/publickey.crt", "/etc/custos/keys/keypair.pem", kekID(5).hex])
                try db.execute(sql: """
                    INSERT INTO encryption_dek (dek_id, kek_id, agent_id, creation_time, record, received_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """, arguments: [d.dekID.hex, d.kekID.hex, a.rawValue, d.creationTimeMs, d.record, 1_700_000_001_000])
                for (b, file, offset) in [(small, nil, nil), (large, 1, 0), (larger, 1, large.bytes.count)] as [(StoredBlob, Int?, Int?)] {
                    try db.execute(sql: """
                        INSERT INTO captures (blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, blob,
                                              blob_file, blob_offset, received_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """, arguments: [b.blobID.hex, a.rawValue, b.kind.name, b.dekID.hex, b.kekID.hex, b.sequence,
                                         b.captureTimeMs, b.bytes.count, file == nil ? b.bytes : Data(), file, offset,
                                         1_700_000_001_000])
                }
                try db.execute(sql: "INSERT INTO audit_log (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                               arguments: [1_700_000_002_000, "admin", "agents.add", "legacy-host"])
            }
            try queue.close()
        }
        let blobs = path + ".blobs"
        try FileManager.default.createDirectory(atPath: blobs, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        try Data((storeID + "\n").utf8).write(to: URL(fileURLWithPath: blobs + "/.custos-blobs"))
        try (large.bytes + larger.bytes).write(to: URL(fileURLWithPath: blobs + "/00000001.blobs"))
        for file in [".custos-blobs", "00000001.blobs"] {
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: blobs + "/" + file)
        }
        // And the seed's statement, by the sqlite3 CLI.
        _ = try runChecked(["sqlite3", path, "insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '/etc/custos/keys/publickey.crt', '/etc/custos/keys/keypair.pem');"])

        let s = try SQLiteStorage(path: path)
        #expect(try await s.authenticate(a, token: Secret(token)), "the old token still works")
        #expect(s.blobDirectory == blobs)
        #expect(try await s.agents().map(\.id) == [a])
        let keks = try await s.keks()
        #expect(keks.map(\.rowID) == [kekRow, kekRow + 1], "row ids kept by the v3 table rebuild")
        #expect(keks[0].kekID == kekID(5) && keks[0].pubDatafile == "/etc/custos/keys/publickey.crt" && keks[0].active)
        #expect(keks[0].privDatafile == "/etc/custos/keys/keypair.pem" && keks[0].publicKeyPEM == nil && keks[0].createdAt != nil)
        #expect(keks[1].kekID == nil && keks[1].privEncrypted)
        #expect(try await s.dekRecords(agent: a, after: nil, limit: 10) == [d])
        let listed = try await s.captures(CaptureQuery(agentID: a), after: nil, limit: 10)
        #expect(listed.items == [small, large, larger].map { info($0, receivedAtMs: 1_700_000_001_000) }.sorted(by: listingOrder))
        for b in [small, large, larger] { #expect(try await s.blob(b.blobID) == b.bytes) }
        #expect(try await s.counts() == (3, 1))
        let audit = try await s.auditEntries(before: nil, limit: 10)
        #expect(audit.map(\.action) == ["agents.add"] && audit.first?.detail == "legacy-host")
        let migrations = try await s.pool.read { db in try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations") }
        #expect(migrations == ["v1", "v2-blob-files", "v3", "v4-retention", "v5-hold-removal", "v6-admins", "v7-admin-hardening", "v8-sessions"])

        // The same blob directory and marker: a new large blob goes after the old ones in file 1.
        let newer = blob(d, time: 1_700_000_000_300, size: 50_000, sequence: 3)
        #expect(try await s.ingest([.blob(newer), .blob(large)], receivedAtMs: 2) == [.stored, .duplicate])
        let fileSize = try FileManager.default.attributesOfItem(atPath: s.blobDirectory + "/00000001.blobs")[.size] as? Int
        #expect(fileSize == large.bytes.count + larger.bytes.count + newer.bytes.count)
        await s.close()
    }
}
