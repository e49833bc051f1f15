import Foundation
import GRDB
import Spool
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite struct SpoolDiskTests {
    /// On a 4 MiB tmpfs: the spool stays within the filesystem by evicting before ENOSPC;
    /// when another file eats the rest of the disk, enqueue fails with a clear `.diskFull`
    /// or `.full` (never anything else, never a corrupt database), keystrokes survive, and
    /// writing resumes once space comes back.
    @Test(.enabled(if: canMountTmpfs, "needs root to mount a tmpfs")) func diskFullOnASmallTmpfs() throws {
        try requireTool("sqlite3")
        let fs = try SmallTmpfs("spool-enospc", size: "4m")
        defer { fs.unmount() }
        let mountPoint = fs.path
        let dir = mountPoint + "/spool"
        let (logger, logs) = memoryLogger()
        let spool = try Spool(directory: dir, maxBytes: 64 << 20, logger: logger)
        var n = 1
        var keys: [Data] = []
        // The filesystem (4 MiB) is smaller than the cap (64 MiB): eviction keeps within it.
        for i in 0..<40 {
            if i % 4 == 0 {
                let k = entry(n, .keystrokes, bytes: 2_000, time: Int64(n)); n += 1
                try spool.enqueue(k); keys.append(k.id)
            }
            try spool.enqueue(entry(n, .screen, bytes: 200 * 1024, time: Int64(n))); n += 1
        }
        #expect(try spool.stats().evicted[.screen]!.count > 0)
        #expect(try spool.stats().fileBytes <= 4 << 20)

        // Another process fills the disk.
        let filler = mountPoint + "/filler"
        let fd = open(filler, O_WRONLY | O_CREAT, 0o600)
        #expect(fd >= 0)
        let chunk = [UInt8](repeating: 0x55, count: 16 * 1024)
        while write(fd, chunk, chunk.count) > 0 {}
        #expect(errno == ENOSPC)
        close(fd)

        var ok = 0, diskFull = 0, full = 0
        for _ in 0..<15 {
            do {
                try spool.enqueue(entry(n, .screen, bytes: 200 * 1024, time: Int64(n)))
                ok += 1
            } catch let error as SpoolError {
                switch error.code {
                case .diskFull:
                    diskFull += 1
                    #expect(error.message.contains(dir))
                case .full: full += 1
                default: Issue.record("unexpected error on a full disk: \(error)")
                }
            }
            n += 1
        }
        #expect(try cliIntegrityCheck(dir) == "ok")
        // The agent keeps running: reads work, keystrokes are all there.
        let left = try Set(rawQueue(dir).read { db in try Data.fetchAll(db, sql: "SELECT id FROM record") })
        for k in keys { #expect(left.contains(k)) }
        print("on a full disk: \(ok) enqueued (by eviction), \(diskFull) disk-full, \(full) full")
        #expect(ok + diskFull + full == 15)

        // Space comes back: writing resumes.
        unlink(filler)
        for _ in 0..<5 {
            try spool.enqueue(entry(n, .keystrokes, bytes: 2_000, time: Int64(n))); n += 1
        }
        try spool.close()
        #expect(try cliIntegrityCheck(dir) == "ok")
        try FileManager.default.removeItem(atPath: dir)

        // A full disk and nothing the record may evict: a clear disk-full error, no damage.
        let dir2 = mountPoint + "/spool2"
        let spool2 = try Spool(directory: dir2, maxBytes: 64 << 20, logger: logger)
        let dek = entry(0, .dekRecord, bytes: 500, time: 0)
        try spool2.enqueue(dek)
        for i in 1...5 { try spool2.enqueue(entry(1000 + i, .keystrokes, bytes: 1_000, time: Int64(i))) }
        let fd2 = open(filler, O_WRONLY | O_CREAT, 0o600)
        while write(fd2, chunk, chunk.count) > 0 {}
        close(fd2)
        let frame = entry(2000, .screen, bytes: 200 * 1024, time: 10)
        do {
            try spool2.enqueue(frame)
            Issue.record("a 200 KiB frame was stored on a full disk")
        } catch let error as SpoolError {
            #expect(error.code == .diskFull, "\(error)")
            #expect(error.message.contains(dir2) && error.message.contains("free"), "\(error)")
        }
        #expect(try spool2.stats().spooled[.keystrokes]!.count == 5)
        #expect(try spool2.stats().rejected[.screen]!.count == 1)
        #expect(try cliIntegrityCheck(dir2) == "ok")
        #expect(logs.all.contains { $0.hasPrefix("error") && $0.contains("ENOSPC") }, "\(logs.text)")
        unlink(filler)
        try spool2.enqueue(frame)
        #expect(try spool2.lease(maxItems: 10, maxBytes: 1 << 30).count == 7)
        try spool2.close()
        #expect(try cliIntegrityCheck(dir2) == "ok")
    }

    /// Another process keeps filling and freeing the disk while the spool writes: every
    /// enqueue either succeeds or fails with `.diskFull`/`.full`; afterwards the database is
    /// intact and its counts add up (accepted − evicted = spooled).
    @Test(.enabled(if: canMountTmpfs, "needs root to mount a tmpfs")) func diskFillingUnderTheSpoolNeverCorruptsIt() throws {
        try requireTool("sqlite3")
        let fs = try SmallTmpfs("spool-enospc-race", size: "3m")
        defer { fs.unmount() }
        let mountPoint = fs.path
        let dir = mountPoint + "/spool"
        let (logger, logs) = memoryLogger()
        let spool = try Spool(directory: dir, maxBytes: 64 << 20, logger: logger)
        var accepted = 0, diskFull = 0, full = 0
        // The spool owns some space before the other process starts eating the disk.
        for n in 1...30 {
            try spool.enqueue(entry(n, n % 3 == 0 ? .keystrokes : .screen, bytes: 48_000, time: Int64(n)))
            accepted += 1
        }
        let filler = mountPoint + "/filler"
        let stop = Atomic<Bool>(false)
        let fillerDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            let chunk = [UInt8](repeating: 0x33, count: 8 * 1024)
            while !stop.load(ordering: .relaxed) {
                let fd = open(filler, O_WRONLY | O_CREAT | O_APPEND, 0o600)
                while !stop.load(ordering: .relaxed) && write(fd, chunk, chunk.count) > 0 {}
                var st = stat()
                fstat(fd, &st)
                ftruncate(fd, max(0, st.st_size - off_t(Int.random(in: 16...400) * 1024)))
                close(fd)
                usleep(UInt32.random(in: 1_000...10_000))
            }
            fillerDone.signal()
        }
        for n in 31...180 {
            let kind: SpoolKind = n % 3 == 0 ? .keystrokes : .screen
            do {
                try spool.enqueue(entry(n, kind, bytes: kind == .screen ? 48_000 : 6_000, time: Int64(n)))
                accepted += 1
            } catch let error as SpoolError {
                switch error.code {
                case .diskFull: diskFull += 1
                case .full: full += 1
                default: Issue.record("unexpected error while the disk fills: \(error)")
                }
            }
        }
        stop.store(true, ordering: .relaxed)
        fillerDone.wait()
        unlink(filler)
        let sqliteFull = logs.all.filter { $0.contains("SQLITE_FULL") }.count
        print("disk filling under the spool: \(accepted) accepted, \(diskFull) disk-full, \(full) full, "
              + "\(sqliteFull) SQLITE_FULL from SQLite (rolled back, retried)")
        #expect(accepted > 0)
        #expect(diskFull + sqliteFull > 0, "the disk never filled under the spool")
        #expect(try cliIntegrityCheck(dir) == "ok")
        let stats = try spool.stats()
        #expect(accepted - stats.totalEvicted.count == stats.totalSpooled.count, "\(stats)")
        try spool.enqueue(entry(10_000, .keystrokes, bytes: 6_000, time: 10_000))
        try spool.close()
        #expect(try cliIntegrityCheck(dir) == "ok")
        _ = logs
    }

    /// A file that is not a database, a foreign SQLite database and a corrupt spool are
    /// each moved aside (kept, renamed with a timestamp) and a fresh spool is created.
    @Test(arguments: ["garbage", "foreign", "corrupt"])
    func badDatabaseIsMovedAside(_ kind: String) throws {
        let tmp = try TempDir("spool-aside-\(kind)")
        defer { tmp.remove() }
        let db = tmp.file("spool.db")
        let (logger, logs) = memoryLogger()
        switch kind {
        case "garbage":
            try Data(repeating: 0x42, count: 10_000).write(to: URL(fileURLWithPath: db))
        case "foreign":
            try runChecked(["sqlite3", db, "CREATE TABLE photos(x); INSERT INTO photos VALUES (1);"])
        default:
            let spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
            for n in 1...40 { try spool.enqueue(entry(n, .screen, bytes: 3000)) }
            try spool.close()
            // Overwrite the record table's pages (not the header) with junk.
            let handle = try FileHandle(forUpdating: URL(fileURLWithPath: db))
            let size = try handle.seekToEnd()
            #expect(size > 40_000)
            try handle.seek(toOffset: 4096 * 2)
            handle.write(Data(repeating: 0xFF, count: Int(size) - 4096 * 3))
            try handle.close()
        }
        let original = try Data(contentsOf: URL(fileURLWithPath: db))
        let spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
        try spool.enqueue(entry(1, .keystrokes))
        #expect(try spool.stats().totalSpooled.count == 1)
        try spool.close()
        let aside = try FileManager.default.contentsOfDirectory(atPath: tmp.path)
            .filter { $0.hasPrefix("spool.db.") && !$0.hasSuffix("-wal") }
        #expect(aside.count == 1, "\(aside)")
        if let name = aside.first {
            let reason = kind == "foreign" ? "foreign" : "corrupt"
            #expect(name.hasPrefix("spool.db.\(reason)-"), "\(name)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: tmp.file(name))) == original)
        }
        #expect(logs.all.contains { $0.hasPrefix("error") && $0.contains("moved aside") }, "\(logs.text)")
        #expect(try cliIntegrityCheck(tmp.path) == "ok")
    }

    /// A row that fails to parse is quarantined once (counted, logged), not retried forever,
    /// and the good rows still flow.
    @Test func unparseableRowIsQuarantined() throws {
        try requireTool("sqlite3")
        let tmp = try TempDir("spool-quarantine")
        defer { tmp.remove() }
        let (logger, logs) = memoryLogger()
        var spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
        try spool.enqueue(entry(1, .keystrokes, time: 5))
        try spool.close()
        // Rows another tool (or a bug, or a bit flip) left behind.
        try runChecked(["sqlite3", tmp.file("spool.db"), """
            INSERT INTO record(id, kind, priority, dek_id, capture_ms, size, payload)
                VALUES (randomblob(16), 'hologram', 0, randomblob(16), 1, 3, x'010203');
            INSERT INTO record(id, kind, priority, dek_id, capture_ms, size, payload)
                VALUES (randomblob(16), 'keystrokes', 1, randomblob(16), 2, 99, x'010203');
            INSERT INTO record(id, kind, priority, dek_id, capture_ms, size, payload)
                VALUES ('short', 'screen', 3, randomblob(16), 3, 3, x'010203');
            INSERT INTO record(id, kind, priority, dek_id, capture_ms, size, payload)
                VALUES (randomblob(16), 'generic', 2, randomblob(16), 'yesterday', 3, x'010203');
            """])
        spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
        let got = try spool.lease(maxItems: 10, maxBytes: 1 << 20)
        #expect(got.map(\.id) == [testID(1)])
        var stats = try spool.stats()
        #expect(stats.quarantined == 4)
        #expect(stats.totalSpooled.count == 1)
        #expect(logs.all.filter { $0.contains("quarantined") }.count == 1)
        let later = Date().addingTimeInterval(3600)
        #expect(try spool.lease(maxItems: 10, maxBytes: 1 << 20, now: later).map(\.id) == [testID(1)])
        stats = try spool.stats()
        #expect(stats.quarantined == 4)
        let reasons = try rawQueue(tmp.path).read { db in try String.fetchAll(db, sql: "SELECT reason FROM quarantine") }
        #expect(reasons.count == 4)
        #expect(reasons.contains("unknown kind"))
        try spool.close()
        spool = try Spool(directory: tmp.path, maxBytes: 8 << 20, logger: logger)
        #expect(try spool.stats().quarantined == 4)
        try spool.close()
    }
}
