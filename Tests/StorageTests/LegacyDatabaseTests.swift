import Collector
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import GRDB
import Testing
import TestSupport

/// A `collector.db` made by today's collector (`Collector.SQLiteCollectorStore`, migrations v1 and
/// v2-blob-files) opens in ``SQLiteStorage`` with everything readable, gains v3, and the old
/// store still opens it afterwards (both run side by side until the collector moves onto the seam).
@Suite struct LegacyDatabaseTests {
    @Test func aDatabaseOfTheFirstCollectorOpensWithEverythingReadable() async throws {
        let dir = try TempDir("custos-legacy-db")
        defer { dir.remove() }
        let path = dir.file("collector.db")
        let a = agent("legacy-host")
        let d = dek(a, time: 1_700_000_000_000, kek: kekID(5))
        let small = blob(d, kind: .keystrokes, time: 1_700_000_000_100, size: 300, sequence: 0)
        let large = blob(d, kind: .screen, time: 1_700_000_000_100, size: 90_000, sequence: 1)
        let larger = blob(d, kind: .screen, time: 1_700_000_000_200, size: 200_000, sequence: 2)
        let token: String
        let kekRow: Int64
        do {
            let old = try SQLiteCollectorStore(path: path)
            token = try old.addAgent(id: a.rawValue)
            kekRow = try old.registerKEK(pubDatafile: "/etc/custos/keys/publickey.crt", privDatafile: "/etc/custos/keys/keypair.pem",
                                         privEncrypted: true, active: true, kekID: kekID(5).hex)
            let items: [Collector.IngestItem] = [.dek(dekID: d.dekID.hex, kekID: d.kekID.hex, agentID: a.rawValue,
                                                      creationTimeMs: d.creationTimeMs, record: d.record)]
                + [small, large, larger].map { b -> Collector.IngestItem in
                    .blob(blobID: b.blobID.hex, agentID: a.rawValue, kind: b.kind.name, dekID: b.dekID.hex, kekID: b.kekID.hex,
                          sequence: b.sequence, captureTimeMs: b.captureTimeMs, blob: b.bytes)
                }
            #expect(try await old.ingest(items, receivedAtMs: 1_700_000_001_000) == [.stored, .stored, .stored, .stored])
            try old.appendAudit(actor: "admin", action: "agents.add", detail: "legacy-host")
        }  // the old store is released: its connections close
        _ = try runChecked(["sqlite3", path, "insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '/etc/custos/keys/publickey.crt', '/etc/custos/keys/keypair.pem');"])

        let s = try SQLiteStorage(path: path)
        #expect(try await s.authenticate(a, token: Secret(token)), "the old token still works")
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
        #expect(migrations == ["v1", "v2-blob-files", "v3"])

        // The same blob directory and marker: a new large blob goes after the old ones in file 1.
        let newer = blob(d, time: 1_700_000_000_300, size: 50_000, sequence: 3)
        #expect(try await s.ingest([.blob(newer), .blob(large)], receivedAtMs: 2) == [.stored, .duplicate])
        let fileSize = try FileManager.default.attributesOfItem(atPath: s.blobDirectory + "/00000001.blobs")[.size] as? Int
        #expect(fileSize == large.bytes.count + larger.bytes.count + newer.bytes.count)
        await s.close()

        // The old store opens the migrated file (GRDB ignores the migration it does not know).
        let old = try SQLiteCollectorStore(path: path)
        #expect(try old.blob(blobID: newer.blobID.hex) == newer.bytes)
        #expect(try old.listKEKs().map(\.rowID) == [kekRow, kekRow + 1])
        #expect(try old.listCaptures(CaptureFilter()).count == 4)
    }
}
