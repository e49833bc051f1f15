import Foundation
import GRDB
import Logging
import Spool
import Testing
import TestSupport

@Suite struct SpoolBasicTests {
    @Test func createsPrivateDirectoryAndFiles() throws {
        let tmp = try TempDir("spool-perm")
        defer { tmp.remove() }
        let dir = tmp.file("a/b/spool")
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: dir, maxBytes: 8 << 20, logger: logger)
        try spool.enqueue(entry(1, .keystrokes))
        #expect(fileMode(dir) == 0o700)
        for name in ["spool.db", "spool.db-wal", "spool.db-shm", "spool.lock"] {
            #expect(FileManager.default.fileExists(atPath: dir + "/" + name), "\(name) missing")
            #expect(fileMode(dir + "/" + name) == 0o600, "\(name) mode \(String(fileMode(dir + "/" + name), radix: 8))")
        }
        let pragmas = try rawQueue(dir).read { db in
            (try String.fetchOne(db, sql: "PRAGMA journal_mode"), try Int.fetchOne(db, sql: "PRAGMA auto_vacuum"),
             try Int32.fetchOne(db, sql: "PRAGMA application_id"))
        }
        #expect(pragmas.0 == "wal")
        #expect(pragmas.1 == 2)  // INCREMENTAL
        #expect(pragmas.2 == 0x4353_5350)
        try spool.close()
    }

    @Test func enqueueIsIdempotentAndLeaseOrdersByPriorityThenAge() throws {
        let tmp = try TempDir("spool-order")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
        let screenOld = entry(1, .screen, time: 10)
        let keysNew = entry(2, .keystrokes, time: 50)
        let keysOld = entry(3, .keystrokes, time: 20)
        let generic = entry(4, .generic, time: 5)
        let activity = entry(5, .activity, time: 70)
        let dek = entry(0, .dekRecord, time: 60)
        for e in [screenOld, keysNew, keysOld, generic, activity, dek] { try spool.enqueue(e) }
        // Same id again, other bytes: a no-op.
        var dup = keysNew
        dup.payload = Data("other".utf8)
        try spool.enqueue(dup)
        #expect(try spool.stats().totalSpooled.count == 6)

        let leased = try spool.lease(maxItems: 10, maxBytes: 1 << 20)
        #expect(leased.map(\.id) == [dek.id, keysOld.id, keysNew.id, activity.id, generic.id, screenOld.id])
        #expect(leased[2] == keysNew)  // original payload, attempts 0
        // Leased records are not leased again until the lease expires.
        #expect(try spool.lease(maxItems: 10, maxBytes: 1 << 20).isEmpty)
        let later = Date().addingTimeInterval(61)
        #expect(try spool.lease(maxItems: 10, maxBytes: 1 << 20, now: later).count == 6)
        try spool.ack(leased.map(\.id))
        #expect(try spool.stats().totalSpooled.count == 0)
        try spool.close()
    }

    @Test func blobsWaitForTheirDEKRecordAndBatchesRespectLimits() throws {
        let tmp = try TempDir("spool-dek")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
        let dekA = Data(repeating: 0xA0, count: 16)
        let blobs = (1...5).map { entry($0, .keystrokes, bytes: 1000, dek: dekA) }
        for b in blobs { try spool.enqueue(b) }
        try spool.enqueue(entry(0, .dekRecord, bytes: 300, dek: dekA))
        // The DEK record is in backoff: its blobs must not go before it.
        let first = try spool.lease(maxItems: 1, maxBytes: 1 << 20)
        #expect(first.map(\.kind) == [.dekRecord])
        try spool.release(first.map(\.id), retryAfter: .seconds(30))
        #expect(try spool.lease(maxItems: 10, maxBytes: 1 << 20).isEmpty)
        // When the DEK record is due, it comes first, then blobs up to the byte limit.
        let batch = try spool.lease(maxItems: 10, maxBytes: 2_500, now: Date().addingTimeInterval(31))
        #expect(batch.map(\.kind) == [.dekRecord, .keystrokes, .keystrokes])
        #expect(batch[0].attempts == 1)
        try spool.ack([batch[0].id])
        // With the DEK record acked, the rest flows; a single record larger than maxBytes still goes.
        let rest = try spool.lease(maxItems: 10, maxBytes: 10, now: Date().addingTimeInterval(200))
        #expect(rest.count == 1)
        try spool.close()
    }

    @Test func releaseBacksOffExponentiallyWithJitter() throws {
        let tmp = try TempDir("spool-backoff")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
        let e = entry(1, .screen)
        try spool.enqueue(e)
        var now = Date()
        var delays: [Double] = []
        for attempt in 1...6 {
            let got = try spool.lease(maxItems: 1, maxBytes: 1 << 20, now: now)
            #expect(got.count == 1 && got[0].attempts == attempt - 1)
            try spool.release([e.id], now: now)
            // Find when it becomes leasable again (10 ms resolution).
            var t = 0.0
            while try spool.lease(maxItems: 1, maxBytes: 1 << 20, leaseDuration: .milliseconds(1),
                                  now: now.addingTimeInterval(t)).isEmpty {
                t += 0.01
            }
            delays.append(t)
            now = now.addingTimeInterval(t + 0.01)
        }
        for (i, d) in delays.enumerated() {
            let full = min(300, pow(2, Double(i)))
            #expect(d >= full / 2 - 0.02 && d <= full + 0.02, "attempt \(i + 1): delay \(d) s, expected in [\(full / 2), \(full)]")
        }
        try spool.close()
    }

    @Test func leasesOfADeadProcessAreReclaimedAndStateSurvives() throws {
        let tmp = try TempDir("spool-reclaim")
        defer { tmp.remove() }
        let (logger, logs) = memoryLogger()
        var spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
        for n in 1...3 { try spool.enqueue(entry(n, .keystrokes)) }
        try spool.setState("last-upload-ms", "12345")
        #expect(try spool.lease(maxItems: 10, maxBytes: 1 << 20, leaseDuration: .seconds(3600)).count == 3)
        // A second writer on the same directory is refused while the first holds it.
        #expect(throws: SpoolError.self) { try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger) }
        do {
            _ = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
        } catch let error as SpoolError {
            #expect(error.code == .alreadyOpen)
        }
        try spool.close()
        spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
        #expect(try spool.lease(maxItems: 10, maxBytes: 1 << 20).count == 3)
        #expect(try spool.state("last-upload-ms") == "12345")
        #expect(try spool.state("nothing") == nil)
        #expect(logs.text.contains("reclaimed leases"))
        try spool.close()
        #expect(throws: SpoolError.self) { try spool.enqueue(entry(9, .screen)) }
    }

    @Test func readOnlyOpenSeesStatsButCannotWrite() throws {
        let tmp = try TempDir("spool-ro")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
        try spool.enqueue(entry(1, .screen, bytes: 5000, time: 777))
        try spool.setState("k", "v")
        let ro = try Spool.openReadOnly(directory: tmp.path)
        let stats = try ro.stats()
        #expect(stats.spooled[.screen] == SpoolCount(count: 1, bytes: 5000))
        #expect(stats.oldestCaptureTimeMs == 777)
        #expect(stats.maxBytes == 8 << 20)
        #expect(stats.fileBytes > 0)
        #expect(try ro.state("k") == "v")
        do {
            try ro.enqueue(entry(2, .screen))
            Issue.record("read-only enqueue succeeded")
        } catch let error as SpoolError {
            #expect(error.code == .readOnly)
        }
        try ro.close()
        try spool.close()
        #expect(throws: SpoolError.self) { try Spool.openReadOnly(directory: tmp.file("missing")) }
    }

    @Test func rejectsMalformedEntries() throws {
        let tmp = try TempDir("spool-invalid")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: 1 << 20, logger: logger)
        var bad = entry(1, .screen)
        bad.id = Data([1, 2, 3])
        var bad2 = entry(2, .screen)
        bad2.payload = Data()
        for e in [bad, bad2] {
            do { try spool.enqueue(e); Issue.record("accepted a malformed entry") } catch let error as SpoolError {
                #expect(error.code == .invalidEntry)
            }
        }
        do {
            try spool.enqueue(entry(3, .screen, bytes: 600_000))
            Issue.record("accepted an entry larger than the cap allows")
        } catch let error as SpoolError {
            #expect(error.code == .tooLarge)
        }
        try spool.close()
    }
}
