import Foundation
import GRDB
import Spool
import Testing
import TestSupport

@Suite struct SpoolCapTests {
    static let cap: Int64 = 3 << 20

    /// With a 3 MiB cap: database + WAL never pass the cap; screen frames go first, then
    /// keystrokes, DEK records never; a screen frame never displaces keystrokes; every
    /// eviction is counted, logged once per burst, and the counters survive a restart.
    @Test func capIsEnforcedWithEvictionOrderAndCountersSurviveRestart() throws {
        let tmp = try TempDir("spool-cap")
        defer { tmp.remove() }
        let (logger, logs) = memoryLogger()
        var spool = try Spool(directory: tmp.path, maxBytes: Self.cap, logger: logger)
        try spool.enqueue(entry(0, .dekRecord, bytes: 400, time: 0))
        var n = 1
        var screens: [Data] = [], keys: [Data] = []
        // Fill with keystrokes (about a third) and screen frames.
        for i in 0..<12 {
            let k = entry(n, .keystrokes, bytes: 60_000, time: Int64(n)); n += 1
            try spool.enqueue(k); keys.append(k.id)
            for _ in 0..<2 {
                let s = entry(n, .screen, bytes: 100_000, time: Int64(n)); n += 1
                try spool.enqueue(s); screens.append(s.id)
            }
            #expect(try spool.stats().fileBytes <= Self.cap, "after round \(i)")
        }
        var stats = try spool.stats()
        #expect(stats.evicted[.screen]!.count > 0, "no screen frame was evicted: \(stats)")
        #expect(stats.evicted[.keystrokes]!.count == 0)
        #expect(stats.spooled[.keystrokes]!.count == 12)
        #expect(stats.spooled[.dekRecord]!.count == 1)
        #expect(stats.evicted[.screen]!.bytes == Int64(stats.evicted[.screen]!.count) * 100_000)
        // The oldest screen frames went first.
        let left = try Set(rawQueue(tmp.path).read { db in try Data.fetchAll(db, sql: "SELECT id FROM record") })
        let evictedScreens = screens.filter { !left.contains($0) }
        #expect(evictedScreens == Array(screens.prefix(evictedScreens.count)))

        // Keystrokes keep coming: every screen frame goes, then the oldest keystrokes; never the DEK record.
        for _ in 0..<40 {
            let k = entry(n, .keystrokes, bytes: 60_000, time: Int64(n)); n += 1
            try spool.enqueue(k); keys.append(k.id)
            #expect(try spool.stats().fileBytes <= Self.cap)
        }
        stats = try spool.stats()
        #expect(stats.spooled[.screen]!.count == 0)
        #expect(stats.evicted[.keystrokes]!.count > 0)
        #expect(stats.spooled[.dekRecord]!.count == 1)
        // A screen frame may not displace keystrokes: refused, counted, logged.
        do {
            try spool.enqueue(entry(n, .screen, bytes: 100_000, time: Int64(n)))
            Issue.record("a screen frame displaced keystrokes")
        } catch let error as SpoolError {
            #expect(error.code == .full)
            #expect(error.description.contains("screen"))
        }
        let before = try spool.stats()
        #expect(before.rejected[.screen]!.count == 1)
        #expect(logs.all.filter { $0.contains("evicting oldest records") }.count == 1, "\(logs.text)")
        #expect(logs.all.filter { $0.contains("refusing new records") }.count == 1)

        try spool.close()
        spool = try Spool(directory: tmp.path, maxBytes: Self.cap, logger: logger)
        let after = try spool.stats()
        #expect(after.evicted == before.evicted)
        #expect(after.rejected == before.rejected)
        #expect(after.spooled == before.spooled)

        // Lowering the cap on restart shrinks the spool (database file included).
        try spool.close()
        spool = try Spool(directory: tmp.path, maxBytes: 1 << 20, logger: logger)
        #expect(try spool.stats().fileBytes <= 1 << 20)
        #expect(try spool.stats().spooled[.dekRecord]!.count == 1)
        try spool.close()
        #expect(try cliIntegrityCheck(tmp.path) == "ok")
    }

    /// A reader holding a transaction open pins the WAL: the spool must still stay under
    /// its cap (refusing writes with a clear error rather than growing the WAL), and recover
    /// once the reader lets go.
    @Test func capHoldsWhileAReaderPinsTheWAL() throws {
        let tmp = try TempDir("spool-reader")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: Self.cap, logger: logger)
        var n = 1
        for _ in 0..<10 { try spool.enqueue(entry(n, .screen, bytes: 100_000, time: Int64(n))); n += 1 }
        let reader = try HeldTransaction(db: tmp.file("spool.db"), sql: "BEGIN; SELECT count(*) FROM record;")
        var refused = 0, accepted = 0
        for _ in 0..<60 {
            do {
                try spool.enqueue(entry(n, .screen, bytes: 100_000, time: Int64(n)))
                accepted += 1
            } catch let error as SpoolError {
                #expect(error.code == .full, "\(error)")
                #expect(error.message.contains("reader"))
                refused += 1
            }
            n += 1
            let bytes = try spool.stats().fileBytes
            #expect(bytes <= Self.cap, "database + WAL = \(bytes) bytes with a reader holding a transaction")
        }
        #expect(refused > 0, "the WAL never filled its share while pinned (accepted \(accepted))")
        // Lease, ack and release write too: while the reader pins the full WAL they are
        // refused the same way and change nothing.
        let spooledBefore = try spool.stats().spooled[.screen]?.count ?? 0
        #expect(throws: SpoolError.self) { _ = try spool.lease(maxItems: 8, maxBytes: 1 << 30) }
        do {
            _ = try spool.lease(maxItems: 8, maxBytes: 1 << 30)
        } catch let error as SpoolError {
            #expect(error.code == .full && error.message.contains("lease") && error.message.contains("reader"), "\(error)")
        }
        for _ in 0..<20 {
            #expect(throws: SpoolError.self, "an ack grew a pinned, full WAL") { try spool.ack([entry(1, .screen, bytes: 1).id]) }
            #expect(throws: SpoolError.self, "a release grew a pinned, full WAL") {
                try spool.release([entry(2, .screen, bytes: 1).id])
            }
            let bytes = try spool.stats().fileBytes
            #expect(bytes <= Self.cap, "database + WAL = \(bytes) bytes after acks with a reader holding a transaction")
        }
        #expect(try spool.stats().spooled[.screen]?.count == spooledBefore, "a refused ack deleted records")
        reader.release()
        // Once the reader lets go, lease and ack work again.
        // (A lease holds at most half the WAL share of payload: three 100 KB records here.)
        let leased = try spool.lease(maxItems: 4, maxBytes: 1 << 30)
        #expect(leased.count == 3)
        try spool.ack(leased.map(\.id))
        #expect(try spool.stats().spooled[.screen]?.count == spooledBefore - 3)
        for _ in 0..<20 {
            try spool.enqueue(entry(n, .screen, bytes: 100_000, time: Int64(n))); n += 1
            #expect(try spool.stats().fileBytes <= Self.cap)
        }
        #expect(SpoolFilesSize.of(tmp.file("spool.db-wal")) <= Self.cap / 4)
        try spool.close()
        #expect(try cliIntegrityCheck(tmp.path) == "ok")
    }

    /// A lease or release rewrites each row with its payload (the row changes size), so with
    /// large records it is the lease itself that would push a pinned WAL past its share. The
    /// lease is kept to half the share and refused when even that does not fit.
    @Test func leasesOfLargeRecordsKeepAPinnedWALInItsShare() throws {
        let tmp = try TempDir("spool-lease-wal")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: Self.cap, logger: logger)
        for n in 1...22 { try spool.enqueue(entry(n, .screen, bytes: 100_000, time: Int64(n))) }
        let share = Self.cap / 4  // walShare(of: 3 MiB)
        let reader = try HeldTransaction(db: tmp.file("spool.db"), sql: "BEGIN; SELECT count(*) FROM record;")
        var leased: [SpoolEntry] = [], refused = 0
        for _ in 0..<6 {
            do {
                let batch = try spool.lease(maxItems: 8, maxBytes: 1 << 30)
                #expect(batch.reduce(0) { $0 + $1.payload.count } <= Int(share / 2) || batch.count == 1)
                leased += batch
            } catch let error as SpoolError {
                #expect(error.code == .full && error.message.contains("lease"), "\(error)")
                refused += 1
            }
            let wal = SpoolFilesSize.of(tmp.file("spool.db-wal"))
            #expect(wal <= share, "WAL \(wal) bytes passed its share of \(share) with a reader pinning it")
            #expect(try spool.stats().fileBytes <= Self.cap)
        }
        #expect(refused > 0 && !leased.isEmpty, "leased \(leased.count), refused \(refused)")
        // A release rewrites the same rows: refused rather than grown, or kept within the share.
        do { try spool.release(leased.map(\.id)) } catch let error as SpoolError {
            #expect(error.code == .full && error.message.contains("release"), "\(error)")
        }
        #expect(SpoolFilesSize.of(tmp.file("spool.db-wal")) <= share)
        reader.release()
        try spool.release(leased.map(\.id), retryAfter: .zero)
        #expect(try spool.lease(maxItems: 100, maxBytes: 1 << 30).count > 0)
        try spool.close()
        #expect(try cliIntegrityCheck(tmp.path) == "ok")
    }

    /// Another process holding `BEGIN EXCLUSIVE`: enqueue waits the busy timeout, fails with
    /// `.busy`, and succeeds once the lock is gone; nothing committed before is lost.
    @Test func exclusiveLockFromAnotherProcess() throws {
        let tmp = try TempDir("spool-lock")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger, busyTimeout: .milliseconds(800))
        let first = entry(1, .keystrokes, bytes: 3000)
        try spool.enqueue(first)
        let locker = try HeldTransaction(db: tmp.file("spool.db"), sql: "BEGIN EXCLUSIVE; INSERT INTO state VALUES ('x', 'y');")
        let second = entry(2, .keystrokes, bytes: 3000)
        let start = ContinuousClock.now
        do {
            try spool.enqueue(second)
            Issue.record("enqueue succeeded while another process held an exclusive lock")
        } catch let error as SpoolError {
            #expect(error.code == .busy)
            #expect(error.message.contains(tmp.file("spool.db")))
            #expect(error.message.contains(second.id.map { String(format: "%02x", $0) }.joined()))
        }
        let waited = ContinuousClock.now - start
        #expect(waited >= .milliseconds(700) && waited < .seconds(5), "waited \(waited)")
        #expect(try spool.stats().totalSpooled.count == 1)  // reads still work
        locker.release(commit: "ROLLBACK;")
        try spool.enqueue(second)
        let got = try spool.lease(maxItems: 10, maxBytes: 1 << 20)
        #expect(got == [first, second])
        try spool.close()
    }
}

enum SpoolFilesSize {
    static func of(_ path: String) -> Int64 {
        ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? Int64) ?? 0
    }
}
