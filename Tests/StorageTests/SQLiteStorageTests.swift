import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import GRDB
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// What only the SQLite backend has: its files, pragmas, query plans, blob files, error codes.
@Suite struct SQLiteStorageTests {
    static func open(_ dir: TempDir, busyTimeout: TimeInterval = 10) throws(StorageError) -> SQLiteStorage {
        try SQLiteStorage(path: dir.file("collector.db"), busyTimeout: busyTimeout)
    }

    static func sqlite3(_ dir: TempDir, _ sql: String) throws -> String {
        try requireTool("sqlite3")
        return try runChecked(["sqlite3", "-cmd", ".timeout 10000", dir.file("collector.db"), sql])
    }

    /// The steps of SQLite's plan for `sql` (`EXPLAIN QUERY PLAN`, https://www.sqlite.org/eqp.html).
    static func plan(_ s: SQLiteStorage, _ sql: String, _ arguments: StatementArguments) async throws -> [String] {
        try await s.pool.read { db in
            try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + sql, arguments: arguments).map { $0["detail"] as String }
        }
    }

    /// Every listing page (each filter combination, both orders, first and later pages) and
    /// every DEK page is one index range scan: the index named for its equality filters, and
    /// no temporary B-tree (no sort). Measured on a filled table without `ANALYZE` statistics,
    /// as the collector runs.
    @Test func pagesAreIndexRangesWithoutASort() async throws {
        let dir = try TempDir("custos-sqlite-plan")
        defer { dir.remove() }
        let s = try Self.open(dir)
        let d = [dek(agent("p1"), time: 0), dek(agent("p2"), time: 0)]
        var items: [IngestItem] = d.map { .dek($0) }
        for i in 0..<400 {
            items.append(.blob(blob(d[i % 2], kind: CaptureKind.allCases[i % 3], time: Int64(i / 4), size: 20)))
        }
        _ = try await s.ingest(items, receivedAtMs: 1)
        let cursor = CaptureCursor(captureTimeMs: 50, blobID: blobID(0x80))
        for agentID in [nil, agent("p1")] as [AgentID?] {
            for kind in [nil, CaptureKind.keystrokes] {
                let index = switch (agentID, kind) {
                case (nil, nil): "captures_time_id"
                case (nil, _): "captures_kind_time_id"
                case (_, nil): "captures_agent_time_id"
                case (_, _): "captures_agent_kind_time_id"
                }
                // The cursor (time 50) inside the bounds, and outside them (then the bound is the range).
                for (since, until) in [(nil, nil), (10, nil), (nil, 90), (10, 90), (60, nil), (nil, 40), (60, 90), (10, 40)]
                    as [(Int64?, Int64?)] {
                    for order in [CaptureQuery.Order.ascending, .descending] {
                        for after in [nil, cursor] {
                            let q = CaptureQuery(agentID: agentID, kind: kind, sinceMs: since, untilMs: until, order: order)
                            let (sql, args) = SQLiteStorage.capturePageSQL(q, after: after, limit: 101)
                            let steps = try await Self.plan(s, sql, args)
                            #expect(steps.contains { $0.hasSuffix("USING INDEX \(index)") || $0.contains("USING INDEX \(index) (") },
                                    "\(q) after \(String(describing: after)): \(steps)")
                            #expect(!steps.contains { $0.contains("TEMP B-TREE") || $0.hasPrefix("SCAN captures") && !$0.contains("INDEX") },
                                    "\(q) after \(String(describing: after)): \(steps)")
                            // A later page starts at the cursor when it is the tighter bound.
                            let cursorBounds = after != nil && (order == .ascending ? (since ?? 0) <= 50 : (until ?? .max) > 50)
                            #expect(steps.contains { $0.contains("(capture_time,blob_id)") } == cursorBounds, "\(q): \(steps)")
                        }
                    }
                }
            }
        }
        for agentID in [nil, agent("p1")] as [AgentID?] {
            for start in [nil, (Int64(5), DEKID.random())] as [(Int64, DEKID)?] {
                let (sql, args) = SQLiteStorage.dekPageSQL(agent: agentID, after: start, limit: 10)
                let steps = try await Self.plan(s, sql, args)
                let index = agentID == nil ? "encryption_dek_time_id" : "encryption_dek_agent_time_id"
                #expect(steps.contains { $0.hasSuffix("USING INDEX \(index)") || $0.contains("USING INDEX \(index) (") }, "\(steps)")
                #expect(!steps.contains { $0.contains("TEMP B-TREE") }, "\(steps)")
            }
        }
        // The dashboard's agent pages: a range of the primary key, no sort.
        for after in [nil, agent("p1")] as [AgentID?] {
            let (sql, args) = SQLiteStorage.agentPageSQL(after: after, limit: 101)
            let steps = try await Self.plan(s, sql, args)
            #expect(steps.contains { $0.contains("USING INDEX sqlite_autoindex_agents_1") || $0.contains("USING PRIMARY KEY") }, "\(steps)")
            #expect(!steps.contains { $0.contains("TEMP B-TREE") }, "\(steps)")
            #expect(steps.contains { $0.contains("agent_id>?") } == (after != nil), "\(steps)")
        }
        await s.close()
    }

    /// The file is created 0600 (also through a symlink to a file not yet there, which
    /// `O_CREAT | O_EXCL` refuses and SQLite then created 0644), in WAL mode, written with
    /// synchronous=FULL; small blobs stay in
    /// `captures.blob`, blobs of 32 KiB or more go back to back into blob file 1 (0600) in
    /// `collector.db.blobs/` (0700), beside the database's real path.
    @Test func filesModesPragmasAndBlobPlacement() async throws {
        let dir = try TempDir("custos-sqlite-files")
        defer { dir.remove() }
        try FileManager.default.createDirectory(atPath: dir.file("real"), withIntermediateDirectories: false)
        try FileManager.default.createSymbolicLink(atPath: dir.file("link.db"), withDestinationPath: dir.file("real/collector.db"))
        let s = try SQLiteStorage(path: dir.file("link.db"))
        #expect(s.blobDirectory == dir.file("real/collector.db.blobs"))
        func mode(_ path: String) throws -> Int? { try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int }
        #expect(try mode(dir.file("real/collector.db")) == 0o600)
        #expect(try await s.pool.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") } == 2, "FULL")
        #expect(try await s.pool.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") } == "wal")

        let d = dek(agent("files"), time: 0)
        let sizes = [10, SQLiteStorage.blobFileMinBytes - 1, SQLiteStorage.blobFileMinBytes, 100_000]
        let blobs = sizes.map { blob(d, time: 1, size: $0) }
        _ = try await s.ingest([.dek(d)] + blobs.map { .blob($0) }, receivedAtMs: 1)
        let placed = try await s.pool.read { db in
            try Row.fetchAll(db, sql: "SELECT blob_id, length(blob) AS inline, blob_file, blob_offset FROM captures").reduce(into: [String: [Int64?]]()) {
                $0[$1["blob_id"]] = [$1["inline"], $1["blob_file"], $1["blob_offset"]]
            }
        }
        #expect(placed[blobs[0].blobID.hex] == [10, nil, nil])
        #expect(placed[blobs[1].blobID.hex] == [Int64(sizes[1]), nil, nil])
        #expect(placed[blobs[2].blobID.hex] == [0, 1, 0])
        #expect(placed[blobs[3].blobID.hex] == [0, 1, Int64(sizes[2])])
        let file = s.blobDirectory + "/00000001.blobs"
        #expect(try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int == sizes[2] + sizes[3])
        #expect(try mode(file) == 0o600)
        #expect(try mode(s.blobDirectory) == 0o700)
        #expect(try mode(s.blobDirectory + "/.custos-blobs") == 0o600)
        await s.close()

        // A blob directory of one's own choosing.
        let other = try SQLiteStorage(path: dir.file("other.db"), blobDirectory: dir.file("elsewhere"))
        let d2 = dek(agent("files"), time: 0), big = blob(d2, time: 1, size: 50_000)
        _ = try await other.ingest([.dek(d2), .blob(big)], receivedAtMs: 1)
        #expect(FileManager.default.fileExists(atPath: dir.file("elsewhere/00000001.blobs")))
        #expect(try await other.blob(big.blobID) == big.bytes)
        await other.close()
    }

    /// Rows that do not parse (typed by hand in sqlite3) are `.corrupt` errors naming the
    /// file, table, row and column, with the value escaped; a listing over them throws, no crash.
    @Test func rowsThatDoNotParseAreCorruptErrors() async throws {
        let dir = try TempDir("custos-sqlite-corrupt")
        defer { dir.remove() }
        let s = try Self.open(dir)
        let path = dir.file("collector.db")
        _ = try await s.addAgent(agent("fine"))
        _ = try Self.sqlite3(dir, "insert into agents values ('bad agent' || char(27) || '[31m', x'00', 1)")
        var e = await storageError { _ = try await s.agents() }
        #expect(e?.code == .corrupt)
        #expect(e?.message.contains(path) == true && e?.message.contains("agents row agent_id 'bad agent\\u{1B}[31m'") == true,
                "\(String(describing: e))")
        #expect(e?.message.contains("\u{1b}") == false, "escaped")

        _ = try Self.sqlite3(dir, "insert into encryption_kek (id, pub_datafile, kek_id) values (7, '/k.pem', 'not-hex')")
        e = await storageError { _ = try await s.keks() }
        #expect(e?.code == .corrupt && e?.message.contains("encryption_kek row id 7: column kek_id holds 'not-hex', expected 64 hex digits") == true,
                "\(String(describing: e))")
        _ = try Self.sqlite3(dir, "update encryption_kek set kek_id = null, active = 'maybe' where id = 7")
        #expect(await storageError { _ = try await s.keks() }?.code == .corrupt)
        _ = try Self.sqlite3(dir, "update encryption_kek set active = 'TRUE' where id = 7")
        #expect(try await s.keks().first?.active == true, "boolean text typed by hand reads")

        let d = dek(agent("fine"), time: 0)
        let good = blob(d, time: 1), bad = blob(d, time: 2), later = blob(d, time: 3)
        _ = try await s.ingest([.dek(d), .blob(good), .blob(bad), .blob(later)], receivedAtMs: 1)
        for damage in ["kind = 'video'", "sequence = 'abc'", "dek_id = 'short'", "size = 'big'"] {
            _ = try Self.sqlite3(dir, "update captures set \(damage) where blob_id = '\(bad.blobID.hex)'")
            e = await storageError { _ = try await s.captures(CaptureQuery(), after: nil, limit: 10) }
            #expect(e?.code == .corrupt && e?.message.contains("captures row blob_id '\(bad.blobID.hex)'") == true, "\(String(describing: e))")
            #expect(await storageError { _ = try await s.capture(bad.blobID) }?.code == .corrupt)
            // Pages that do not reach the row are served; so is the row's neighbour.
            #expect(try await s.captures(CaptureQuery(), after: nil, limit: 1).items.map(\.blobID) == [good.blobID])
            #expect(try await s.capture(later.blobID) != nil)
            _ = try await s.ingest([.blob(bad)], receivedAtMs: 1)  // does not crash either (a conflict)
            _ = try Self.sqlite3(dir, "update captures set kind = 'screen', sequence = 0, dek_id = '\(d.dekID.hex)', size = \(bad.bytes.count) where blob_id = '\(bad.blobID.hex)'")
        }
        #expect(try await s.captures(CaptureQuery(), after: nil, limit: 10).items.count == 3)
        _ = try Self.sqlite3(dir, "update encryption_dek set agent_id = '..'")
        #expect(await storageError { _ = try await s.dekRecords(agent: nil, after: nil, limit: 10) }?.code == .corrupt)
        await s.close()
    }

    /// A write that meets another process's lock for longer than the busy timeout is
    /// `.unavailable` (retry later) naming the file; reads go on meanwhile (WAL).
    @Test func aLockedDatabaseIsUnavailable() async throws {
        let dir = try TempDir("custos-sqlite-busy")
        defer { dir.remove() }
        let s = try Self.open(dir, busyTimeout: 0.2)
        _ = try await s.addAgent(agent("first"))
        var config = Configuration()
        config.allowsUnsafeTransactions = true  // the lock outlives one access
        let other = try DatabaseQueue(path: dir.file("collector.db"), configuration: config)
        try other.inDatabase { db in try db.execute(sql: "BEGIN EXCLUSIVE") }
        let e = await storageError { _ = try await s.addAgent(agent("second")) }
        #expect(e?.code == .unavailable && e?.message.contains(dir.file("collector.db")) == true
                && e?.message.contains("locked") == true, "\(String(describing: e))")
        #expect(try await s.agents().map(\.id) == [agent("first")])
        try other.inDatabase { db in try db.execute(sql: "ROLLBACK") }
        _ = try await s.addAgent(agent("second"))
        #expect(try await s.agents().count == 2)
        await s.close()
    }

    /// A blob directory that cannot be written (here a regular file in its place) fails the
    /// whole batch as `.unavailable` naming the directory, after its DEK record and small blob
    /// were inserted: nothing is stored. Once the directory is back the batch goes through.
    @Test func aBlobDirectoryFaultFailsTheWholeBatch() async throws {
        let dir = try TempDir("custos-sqlite-iofault")
        defer { dir.remove() }
        let s = try Self.open(dir)
        try Data("not a directory".utf8).write(to: URL(fileURLWithPath: s.blobDirectory))
        let d = dek(agent("io"), time: 0)
        let batch: [IngestItem] = [.dek(d), .blob(blob(d, time: 1)), .blob(blob(d, time: 2, size: 40_000))]
        let e = await storageError { _ = try await s.ingest(batch, receivedAtMs: 1) }
        #expect(e?.code == .unavailable && e?.message.contains(s.blobDirectory) == true, "\(String(describing: e))")
        #expect(try await s.counts() == (0, 0))
        try FileManager.default.removeItem(atPath: s.blobDirectory)
        #expect(try await s.ingest(batch, receivedAtMs: 2) == [.stored, .stored, .stored])
        await s.close()
    }

    /// A batch refused by the database after its large blob was appended (a trigger refuses
    /// its last item) leaves the blob file as it was; the batch without that item goes through.
    @Test func aRefusedBatchIsCutOffTheBlobFile() async throws {
        let dir = try TempDir("custos-sqlite-abort")
        defer { dir.remove() }
        let s = try Self.open(dir)
        let d = dek(agent("abort"), time: 0)
        let first = blob(d, time: 1, size: 40_000)
        _ = try await s.ingest([.dek(d), .blob(first)], receivedAtMs: 1)
        let file = s.blobDirectory + "/00000001.blobs"
        func size() throws -> Int? { try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int }
        let large = blob(d, time: 2, size: 60_000), refused = blob(d, time: 3)
        _ = try Self.sqlite3(dir, Backend.sqlite.refuseCaptureSQL(refused.blobID))
        let e = await storageError { _ = try await s.ingest([.blob(large), .blob(refused)], receivedAtMs: 2) }
        #expect(e?.code == .failed)
        #expect(try size() == first.bytes.count)
        #expect(try await s.ingest([.blob(large)], receivedAtMs: 3) == [.stored])
        #expect(try size() == first.bytes.count + large.bytes.count)
        #expect(try await s.blob(large.blobID) == large.bytes)
        await s.close()
    }

    /// A blob file cut short: reading a blob past its end is `.corrupt` naming the file; new
    /// blobs go to the next file (the damaged one is never written); the agent's re-sent copy
    /// repairs the row.
    @Test func aCutBlobFileIsCorruptAndTheResentCopyRepairsIt() async throws {
        let dir = try TempDir("custos-sqlite-cut")
        defer { dir.remove() }
        let s = try Self.open(dir)
        let d = dek(agent("cut"), time: 0)
        let first = blob(d, time: 1, size: 40_000), second = blob(d, time: 2, size: 40_000)
        _ = try await s.ingest([.dek(d), .blob(first), .blob(second)], receivedAtMs: 1)
        let file = s.blobDirectory + "/00000001.blobs"
        #expect(truncate(file, 50_000) == 0)
        #expect(try await s.blob(first.blobID) == first.bytes)
        let e = await storageError { _ = try await s.blob(second.blobID) }
        #expect(e?.code == .corrupt && e?.message.contains(file) == true && e?.message.contains("ends at byte 50000") == true,
                "\(String(describing: e))")
        let third = blob(d, time: 3, size: 40_000)
        #expect(try await s.ingest([.blob(second), .blob(third)], receivedAtMs: 2) == [.stored, .stored])
        #expect(try await s.blob(second.blobID) == second.bytes)
        #expect(try await s.blob(third.blobID) == third.bytes)
        #expect(FileManager.default.fileExists(atPath: s.blobDirectory + "/00000002.blobs"))
        #expect(try await s.ingest([.blob(second)], receivedAtMs: 3) == [.duplicate])
        await s.close()
    }

    /// `pub_pem` and the CHECK of v3, seen from the sqlite3 CLI: a row needs a path or a PEM.
    @Test func aKEKRowNeedsAPathOrAPEM() async throws {
        let dir = try TempDir("custos-sqlite-check")
        defer { dir.remove() }
        let s = try Self.open(dir)
        let refused = try runCommand(["sqlite3", dir.file("collector.db"),
                                      "insert into encryption_kek (active, priv_encrypted) values (true, true)"])
        #expect(refused.status != 0 && refused.stderrString.contains("CHECK constraint failed"), "\(refused.stderrString)")
        _ = try Self.sqlite3(dir, "insert into encryption_kek (pub_pem) values ('-----BEGIN PUBLIC KEY-----')")
        #expect(try await s.keks().map(\.publicKeyPEM) == ["-----BEGIN PUBLIC KEY-----"])
        await s.close()
    }

    /// A database migrated by a newer build (a migration this one does not know) is refused
    /// with an error naming the file and the migration.
    @Test func aNewerSchemaIsRefused() async throws {
        let dir = try TempDir("custos-sqlite-newer")
        defer { dir.remove() }
        try await Self.open(dir).close()
        _ = try Self.sqlite3(dir, "insert into grdb_migrations values ('v99-future')")
        do {
            _ = try Self.open(dir)
            Issue.record("a database with an unknown migration was opened")
        } catch {
            #expect(error.code == .failed)
            #expect(error.message.contains(dir.file("collector.db")) && error.message.contains("'v99-future'"), "\(error)")
        }
    }

    /// A file that is not a database: `.failed` naming it, no crash.
    @Test func aFileThatIsNotADatabaseIsAClearError() throws {
        let dir = try TempDir("custos-sqlite-notdb")
        defer { dir.remove() }
        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: dir.file("collector.db")))
        do {
            _ = try Self.open(dir)
            Issue.record("a file of 'A's was opened as a database")
        } catch {
            #expect(error.code == .failed && error.message.contains(dir.file("collector.db")), "\(error)")
        }
    }
}
