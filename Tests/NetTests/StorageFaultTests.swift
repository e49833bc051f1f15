import Collector
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Spool
import Testing
import TestSupport
import Transport
import Wire

/// The collector on the storage seam (issue 14): every storage failure during an upload is a
/// 503 with `Retry-After` and nothing acknowledged, and health names the storage.
@Suite struct StorageFaultTests {
    /// The database refuses the batch (a trigger raising an error: SQLite's `.failed`): the
    /// upload is answered 503 with `Retry-After`, the agent's uploader keeps every record
    /// spooled, health says `storage-failing`; once the database takes rows again the same
    /// records are stored, once. Before, the records were refused one by one with a 422 and
    /// `storage-error`.
    @Test func aFailingDatabaseIs503AndTheSpoolKeepsEverything() async throws {
        try requireTool("sqlite3")
        let f = try await NetFixture.start("storage-failed", retryAfterSeconds: 1)
        defer { Task { await f.stop() } }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: f.logs.logger("spool"))
        let (records, _) = try f.records(count: 4, size: 2000)
        _ = try UploaderTests.spool(records, into: spool)
        let db = f.collector.databasePath
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", db, """
            CREATE TRIGGER refuse BEFORE INSERT ON captures BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;
            """])
        let logs = LogCapture()
        let uploader = try UploaderTests.makeUploader(f, spool: spool, logs: logs)
        for _ in 0..<2 {
            do {
                let summary = try await uploader.uploadOnce()
                Issue.record("the upload was answered: \(summary)")
            } catch {
                #expect(error.httpStatus == 503 && error.retryAfter == .seconds(1), "\(error)")
                #expect("\(error)".contains("storage failed"), "\(error)")
            }
            #expect(try spool.stats().totalSpooled.count == 5, "a record was given up")
            try await Task.sleep(for: .milliseconds(1100))  // the Retry-After the spool honours
        }
        #expect(try await f.storedCounts == (0, 0), "a failed batch stores nothing, its DEK record neither")
        #expect(f.logs.count("storing an upload failed") == 1, "\(f.logs.text)")
        let client = try f.client()
        #expect(try await client.health().status == "storage-failing")

        try runChecked(["sqlite3", "-cmd", ".timeout 10000", db, "DROP TRIGGER refuse;"])
        try await UploaderTests.drain(spool, uploader: uploader, within: .seconds(20))
        #expect(try await f.storedCounts == (4, 1))
        #expect(f.logs.count("storing uploads works again") == 1)
        // Once: the same records again are duplicates.
        #expect(try await client.upload(stream(records)).results.allSatisfy { $0.status == .duplicate })
        #expect(try await client.health().status == "ok")
        await client.close()
    }

    /// The database is locked by another process past the busy timeout (SQLite's
    /// `.unavailable`): 503 with `Retry-After`, nothing stored or acknowledged; after the lock
    /// goes, the same upload is stored.
    @Test func aLockedDatabaseIs503() async throws {
        try requireTool("sqlite3")
        let f = try await NetFixture.start("storage-locked", retryAfterSeconds: 2) { path in
            try SQLiteStorage(path: path, busyTimeout: 0.3)
        }
        defer { Task { await f.stop() } }
        let (records, _) = try f.records(count: 2)
        let client = try f.client()
        let held = try HeldTransaction(db: f.collector.databasePath, sql: "BEGIN IMMEDIATE;")
        var released = false
        defer { if !released { held.release() } }
        await #expect {
            _ = try await client.upload(stream(records))
        } throws: { error in
            let e = error as? TransportError
            return e?.httpStatus == 503 && e?.retryAfter == .seconds(2)
        }
        held.release()
        released = true
        #expect(try await f.storedCounts == (0, 0))
        #expect(try await client.upload(stream(records)).results.allSatisfy { $0.status == .stored })
        #expect(try await f.storedCounts == (2, 1))
        await client.close()
    }

    /// `GET /v1/health` names the storage (backend, location) and whether it answers; a storage
    /// that does not answer makes the status `storage-failing` without any upload.
    @Test func healthNamesTheStorageAndItsReachability() async throws {
        try requireTool("sqlite3")
        let f = try await NetFixture.start("health")
        defer { Task { await f.stop() } }
        let client = try f.client()
        let ok = try await client.health()
        #expect(ok.status == "ok" && ok.activeKEKs == 1)
        #expect(ok.storage == HealthResponse.Storage(backend: "sqlite", location: f.collector.databasePath, reachable: true))
        // The check reads blob_store: away, the database answers no more.
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", f.collector.databasePath, "ALTER TABLE blob_store RENAME TO away;"])
        var health = ok
        #expect(try await waitUntil(timeout: 10) {
            health = try await client.health()
            return health.storage?.reachable == false
        }, "\(health)")
        #expect(health.status == "storage-failing")
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", f.collector.databasePath, "ALTER TABLE away RENAME TO blob_store;"])
        #expect(try await waitUntil(timeout: 10) { try await client.health().status == "ok" })
        await client.close()
    }
}

extension UploaderTests {
    /// Runs `uploadOnce` until the spool is empty, sleeping between rounds; fails the test when
    /// `within` passes first.
    static func drain(_ spool: Spool, uploader: Uploader, within: Duration) async throws {
        let deadline = ContinuousClock.now + within
        while try spool.stats().totalSpooled.count > 0 && ContinuousClock.now < deadline {
            _ = try? await uploader.uploadOnce()
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(try spool.stats().totalSpooled.count == 0, "the spool did not drain within \(within)")
    }
}
